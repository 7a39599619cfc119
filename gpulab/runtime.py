"""Where gpulab's kernels run: on a real CUDA GPU, or on numba's CUDA simulator.

numba decides once, when it is first imported, whether ``numba.cuda`` talks to a GPU or
to its simulator (``NUMBA_ENABLE_CUDASIM=1``). So this module must run before anything
imports numba: ``import gpulab`` does it first thing.

The mode is chosen by the environment variable ``GPULAB_MODE``:

* ``auto`` (the default): the GPU if torch sees a usable CUDA device, else the simulator;
* ``gpu``: the GPU, or a clear error if there is none;
* ``sim``: the simulator, even on a machine with a GPU (handy for debugging: the simulator
  runs each thread as a Python thread, so ``print`` and ``pdb`` work inside kernels).

Everything size-dependent in the course asks :func:`pick` or :func:`preset` for its
problem size, so one notebook runs in seconds under the simulator and at full size on a
GPU.
"""
from __future__ import annotations

import os
import sys

import torch

__all__ = [
    "MODE", "ON_GPU", "SIMULATOR", "device", "pick", "preset", "register_preset",
    "presets", "as_kernel_array", "empty", "zeros", "randn", "rand", "synchronize",
    "describe",
]

_VALID_MODES = ("auto", "gpu", "sim")


class ModeError(RuntimeError):
    """The requested mode cannot be honoured (no GPU, or numba already set otherwise)."""


def _requested_mode() -> str:
    raw = os.environ.get("GPULAB_MODE", "auto").strip().lower() or "auto"
    aliases = {"cuda": "gpu", "simulator": "sim", "cudasim": "sim", "cpu": "sim"}
    mode = aliases.get(raw, raw)
    if mode not in _VALID_MODES:
        raise ModeError(
            f"GPULAB_MODE={raw!r} is not understood: use 'auto', 'gpu' or 'sim'."
        )
    # A user who already asked numba for the simulator gets it.
    if mode == "auto" and os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1":
        return "sim"
    return mode


def _gpu_usable() -> bool:
    try:
        return torch.cuda.is_available() and torch.cuda.device_count() > 0
    except Exception:  # a broken driver install should fall back, not crash the import
        return False


def _decide_mode() -> str:
    mode = _requested_mode()
    if mode == "auto":
        return "gpu" if _gpu_usable() else "sim"
    if mode == "gpu" and not _gpu_usable():
        raise ModeError(
            "GPULAB_MODE=gpu but torch sees no usable CUDA GPU "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}). "
            "Install a CUDA build of torch, or unset GPULAB_MODE to use the simulator."
        )
    return mode


def _configure_numba(mode: str) -> None:
    want_sim = mode == "sim"
    if "numba" in sys.modules:
        # numba has read NUMBA_ENABLE_CUDASIM already; we can only check it agrees.
        from numba import config

        is_sim = bool(getattr(config, "ENABLE_CUDASIM", 0))
        if is_sim != want_sim:
            have = "the CUDA simulator" if is_sim else "the GPU"
            want = "the CUDA simulator" if want_sim else "the GPU"
            raise ModeError(
                f"numba was imported before gpulab and is set up for {have}, but gpulab "
                f"chose {want}. Restart the kernel (or Python) and `import gpulab` before "
                "numba, or set GPULAB_MODE to match "
                f"(GPULAB_MODE={'sim' if is_sim else 'gpu'})."
            )
        return
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1" if want_sim else "0"


MODE: str = _decide_mode()
_configure_numba(MODE)
ON_GPU: bool = MODE == "gpu"
SIMULATOR: bool = not ON_GPU
#: the torch device that kernel inputs live on: CUDA on a GPU, CPU under the simulator
device = torch.device("cuda" if ON_GPU else "cpu")

def _make_simulated_shared_arrays_thread_safe() -> None:
    """numba's simulator gives each block's threads one NumPy array per
    ``cuda.shared.array`` line, made by the first thread that gets there: it looks the line
    up in a dict and, if absent, makes and stores the array. Two threads preempted between
    the look-up and the store each make their own "shared" array, and the block silently
    computes with two (seen as a correct persistent GEMM giving wrong rows on a loaded
    machine). ``dict.setdefault`` makes the look-up and the store one step, so every thread
    of a block gets the same array."""
    import numpy as np
    from numba.cuda.simulator import kernelapi

    numba_types, numpy_support = kernelapi.types, kernelapi.numpy_support   # the ones numba's uses

    def array(shared, shape, dtype, alignment=None):
        if alignment is not None:
            raise RuntimeError("Array alignment is not supported in cudasim")
        if isinstance(dtype, numba_types.Type):
            dtype = numpy_support.as_dtype(dtype)
        if shape == 0:   # dynamic shared memory: one buffer for every such call
            count = shared._dynshared_size // dtype.itemsize
            return np.frombuffer(shared._dynshared.data, dtype=dtype, count=count)
        caller = sys._getframe(1)   # static allocations are keyed by the calling line, as numba's are
        key = (caller.f_code.co_filename, caller.f_lineno)
        found = shared._allocations.get(key)
        return found if found is not None else shared._allocations.setdefault(key, np.empty(shape, dtype))

    array.__doc__ = kernelapi.FakeCUDAShared.array.__doc__
    kernelapi.FakeCUDAShared.array = array


if SIMULATOR:
    _make_simulated_shared_arrays_thread_safe()

if SIMULATOR and os.environ.get("GPULAB_QUIET", "0") != "1":
    print(
        "gpulab: no CUDA GPU in use; numba.cuda kernels run on the CUDA simulator "
        "(each thread is a Python thread, so problem sizes are small). "
        "Set GPULAB_MODE=gpu on a machine with a GPU.",
        file=sys.stderr,
    )


# --------------------------------------------------------------------------- sizes

def pick(sim, gpu):
    """Return ``sim`` under the simulator and ``gpu`` on a GPU.

    >>> n = pick(sim=1_000, gpu=1 << 24)   # a vector length that fits each mode
    """
    return gpu if ON_GPU else sim


# Named problem sizes shared by chapters: (simulator, GPU).
_PRESETS: dict[str, tuple] = {
    "vector": (1_000, 1 << 24),            # elements of a 1-D array
    "big_vector": (4_000, 1 << 26),        # for bandwidth measurements
    "image": ((48, 64), (1080, 1920)),     # (height, width)
    "matrix": ((48, 40), (4096, 4096)),    # (rows, cols)
    "batch": (4, 256),                     # independent small problems
}


def register_preset(name: str, sim, gpu) -> None:
    """Add a named size for a chapter: ``register_preset("tokens", 64, 65_536)``."""
    _PRESETS[name] = (sim, gpu)


def preset(name: str):
    """The size named ``name`` for the current mode (see :func:`presets`)."""
    try:
        sim, gpu = _PRESETS[name]
    except KeyError:
        known = ", ".join(sorted(_PRESETS))
        raise KeyError(f"no size preset named {name!r}; known presets: {known}") from None
    return pick(sim, gpu)


def presets() -> dict[str, tuple]:
    """All presets as ``{name: (simulator size, GPU size)}``."""
    return dict(_PRESETS)


# ------------------------------------------------------------------------- tensors

def as_kernel_array(t: torch.Tensor):
    """A view of tensor ``t`` that numba kernels accept, sharing its memory (no copy).

    On a GPU that is a numba device array over the tensor's CUDA memory; under the
    simulator, a NumPy view of the CPU tensor. Writes through the view change ``t``.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(t).__name__}")
    if ON_GPU:
        if not t.is_cuda:
            raise ValueError(
                f"tensor is on {t.device} but kernels run on the GPU: "
                "create it with device=gpulab.device or move it with .to(gpulab.device)"
            )
        from numba import cuda

        return cuda.as_cuda_array(t.detach())
    if t.is_cuda:
        raise ValueError(
            "tensor is on the GPU but gpulab runs in simulator mode: move it with .cpu()"
        )
    if t.dtype == torch.bfloat16:
        raise TypeError("numba has no bfloat16 type; convert with .float() first")
    return t.detach().numpy()


def _factory(fn):
    def make(*shape, dtype=torch.float32, generator=None, **kw):
        if generator is not None:
            kw["generator"] = generator
        return fn(*shape, dtype=dtype, device=device, **kw)

    make.__name__ = fn.__name__
    make.__doc__ = f"``torch.{fn.__name__}`` on :data:`gpulab.device` (float32 by default)."
    return make


empty = _factory(torch.empty)
zeros = _factory(torch.zeros)
randn = _factory(torch.randn)
rand = _factory(torch.rand)


def synchronize() -> None:
    """Wait for queued GPU work (a no-op under the simulator, where launches are eager)."""
    if ON_GPU:
        torch.cuda.synchronize()


def describe() -> dict:
    """Mode, device and versions, as :command:`gpulab doctor` prints them."""
    import numba
    import numpy

    info = {
        "mode": MODE,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch CUDA": torch.version.cuda,
        "numba": numba.__version__,
        "numpy": numpy.__version__,
    }
    try:
        from importlib.metadata import version

        info["numba-cuda"] = version("numba-cuda")
    except Exception:
        info["numba-cuda"] = "not installed"
    if ON_GPU:
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["compute capability"] = f"{props.major}.{props.minor}"
        info["multiprocessors"] = props.multi_processor_count
        info["memory (GiB)"] = round(props.total_memory / 2**30, 1)
    return info
