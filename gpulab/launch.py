"""A low-overhead way to launch numba.cuda kernels on torch tensors.

``numba.cuda.jit`` kernels are launched as ``kernel[grid, block](*args)``. Each such call
re-derives the numba type of every argument (for a torch tensor that means building its
``__cuda_array_interface__`` dict and a numba device-array view), looks the signature up,
and then marshals every argument again. On an H200 (benchmarks/results/00_launch_overhead.md,
one run) that cost 32.4 us per launch with pre-wrapped device arrays and 78 us with torch
tensors, against 9.5 us for a torch elementwise op: enough to hide any small kernel behind
Python. In the same run :func:`kernel` took 14.5 us per launch with torch tensors. (Earlier
measurements, made another way, gave about 46 and 160 us for the two numba cases.)

:func:`kernel` wraps ``cuda.jit`` with the same ``kernel[grid, block](*args)`` syntax but a
short path for repeated calls:

1. the first call with a new *kind* of arguments (dtype, rank and contiguity of each
   tensor; Python type of each scalar) compiles through numba as usual and records how
   each argument is laid out in the kernel's parameter buffer;
2. every later call only reads ``data_ptr``, shape and strides from the tensors, writes
   them into a pre-allocated parameter buffer, and calls the driver's ``cuLaunchKernel``
   on torch's current stream.

Under the simulator the same object turns tensors into NumPy views and calls numba's
simulator, so notebooks do not change between modes.

numba lays an array argument out as ``meminfo, parent, nitems, itemsize, data,
shape[0..ndim), strides[0..ndim)`` (strides in bytes); scalars take one parameter each.
"""
from __future__ import annotations

import ctypes
import inspect
import re
import struct
import textwrap

import torch

from . import runtime

__all__ = ["kernel", "Kernel", "LaunchError", "launch_count"]

_launches = 0


def launch_count() -> int:
    """How many gpulab kernel launches this process has made (checks use the difference)."""
    return _launches


class LaunchError(RuntimeError):
    """A kernel launch was refused (bad configuration or arguments)."""


def _as_dim3(dims, what: str) -> tuple[int, int, int]:
    if isinstance(dims, int):
        dims = (dims,)
    try:
        dims = tuple(int(d) for d in dims)
    except TypeError:
        raise LaunchError(f"{what} must be an int or a tuple of up to 3 ints, got {dims!r}") from None
    if not 1 <= len(dims) <= 3:
        raise LaunchError(f"{what} must have 1 to 3 dimensions, got {dims!r}")
    if any(d < 0 for d in dims):
        raise LaunchError(f"{what} has a negative extent: {dims!r}")
    return dims + (1,) * (3 - len(dims))


def _float32_bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def _float64_bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", x))[0]


# ------------------------------------------------------------------ argument packing
# An array argument fills: meminfo, parent, nitems, itemsize, data, shape..., strides
# (in bytes)...; a scalar fills one slot with its bits.

def _device_array_packer(a):
    return (0, 0, a.size, a.dtype.itemsize, a.device_ctypes_pointer.value or 0,
            *a.shape, *a.strides)


def _scalar_converter(numba_type) -> str | None:
    """Name of the function that turns a scalar of this numba type into its slot's bits."""
    name = str(numba_type)
    if name == "float32":
        return "_f32"
    if name == "float64":
        return "_f64"
    if name.startswith(("int", "uint")) or name == "bool":
        return "int"
    return None


def _arg_key(a):
    """What must match for two calls to share a compiled kernel and a packing plan."""
    if isinstance(a, torch.Tensor):
        return (torch.Tensor, a.dtype, a.dim(), a.is_contiguous(), a.is_cuda)
    if hasattr(a, "__cuda_array_interface__"):
        return (type(a), str(a.dtype), a.ndim, a.is_c_contiguous())
    return type(a)


def _simulator_array(t: torch.Tensor):
    """The tensor as the simulator's 'device array', sharing memory with it.

    Given a plain NumPy array, the simulator copies it in and out of a contiguous buffer
    (and refuses strided views); wrapping the view itself avoids both.
    """
    view = runtime.as_kernel_array(t)
    try:
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
    except ImportError:  # another numba-cuda layout: fall back to the copying path
        return view
    return FakeCUDAArray(view)


def _make_pack_function(kinds: list[str], ndims: list[int]):
    """A function ``pack(*args) -> tuple of parameter slots`` for one argument list.

    Generated once per launch plan, so a launch does no per-argument dispatch: for a
    float32 vector and a float scalar it is, in effect,
    ``lambda a0, a1: (0, 0, a0.numel(), a0.element_size(), a0.data_ptr(), a0.shape[0],
    a0.stride(0) * a0.element_size(), _f32(a1))``.
    """
    parts = []
    for i, (kind, ndim) in enumerate(zip(kinds, ndims)):
        a = f"a{i}"
        if kind == "tensor":
            size = f"{a}.element_size()"
            shape = [f"{a}.shape[{d}]" for d in range(ndim)]
            strides = [f"{a}.stride({d}) * {size}" for d in range(ndim)]
            parts += ["0", "0", f"{a}.numel()", size, f"{a}.data_ptr()", *shape, *strides]
        elif kind == "device_array":
            parts.append(f"*_device_array_packer({a})")
        else:  # a scalar: kind names its converter
            parts.append(f"{kind}({a})")
    names = ", ".join(f"a{i}" for i in range(len(kinds)))
    source = f"def pack({names}):\n    return ({', '.join(parts)},)\n"
    scope = {"_f32": _float32_bits, "_f64": _float64_bits, "int": int,
             "_device_array_packer": _device_array_packer}
    exec(compile(source, "<gpulab launch plan>", "exec"), scope)
    return scope["pack"]


class _Plan:
    """One compiled kernel plus how to fill its parameter buffer."""

    def __init__(self, handle, pack, nslots):
        self.handle = handle
        self.pack = pack
        self.slots = (ctypes.c_int64 * nslots)()
        base = ctypes.addressof(self.slots)
        self.pointers = (ctypes.c_void_p * nslots)(*(base + 8 * i for i in range(nslots)))
        self.params_address = ctypes.addressof(self.pointers)


def _driver():
    try:
        from cuda.bindings import driver
    except ImportError:  # older cuda-python
        from cuda import cuda as driver
    return driver


def _current_stream() -> int:
    """torch's current CUDA stream as a raw handle (what torch.compile's kernels use)."""
    get_raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if get_raw is not None:
        return get_raw(torch._C._cuda_getDevice())
    return torch.cuda.current_stream().cuda_stream


def _function_handle(compiled):
    """The CUfunction of a numba-compiled kernel, across numba-cuda versions."""
    cufunc = compiled._codelibrary.get_cufunc()
    for getter in (lambda f: f.handle, lambda f: f.kernel._handle, lambda f: f.kernel.handle):
        try:
            handle = getter(cufunc)
        except AttributeError:
            continue
        if handle is not None:
            # a CUkernel (library-loaded) may be passed where a CUfunction is expected
            return _driver().CUfunction(int(handle))
    raise LaunchError("could not find the CUDA function handle of a compiled numba kernel")


# What ``gpulab exercises`` writes where it removed a solution: this marker line, then
# ``raise NotImplementedError(hint)`` at the same indentation. The course's generator
# builds its stubs with :func:`exercise_stub` and this module recognises them in a kernel,
# so the writer and the reader share one definition.
STUB_MARKER = "# YOUR CODE HERE"


def exercise_stub(indent: str, hint: str) -> list[str]:
    """The lines of an exercise stub, indented like the solution block they replace."""
    return [f"{indent}{STUB_MARKER}", f"{indent}raise NotImplementedError({hint!r})"]


_STUB = re.compile(re.escape(STUB_MARKER) + r"\s*\n\s*raise NotImplementedError\((.*)\)")


def _exercise_stub_message(py_func) -> str | None:
    """The hint of an exercise stub left in a kernel's body, or None.

    Under the simulator a stub's ``raise NotImplementedError`` raises like Python; a GPU
    kernel cannot raise, it would just write nothing. So a kernel still holding the stub
    that ``gpulab exercises`` writes raises at launch instead, on every platform alike.
    """
    try:
        source = inspect.getsource(py_func)
    except (OSError, TypeError):
        return None
    match = _STUB.search(source)
    if match is None:
        return None
    hint = match.group(1).strip()
    return hint.strip("'\"") or "the kernel is still an exercise stub"


class Kernel:
    """A numba.cuda kernel with a fast launch path for torch tensors.

    Use it like a numba kernel: ``k[grid, block](*args)`` or
    ``k[grid, block, shared_bytes](*args)``, where ``grid`` and ``block`` are ints or
    tuples. Arguments may be torch tensors (on :data:`gpulab.device`), numba device
    arrays, NumPy arrays (simulator only), ints, floats and bools.
    """

    def __init__(self, py_func, **jit_options):
        from numba import cuda

        self.py_func = py_func
        self.jit_options = jit_options
        self.dispatcher = cuda.jit(**jit_options)(py_func)
        self._plans: dict = {}
        self._configs: dict = {}
        self._stub = _exercise_stub_message(py_func)
        self.__name__ = py_func.__name__
        self.__doc__ = py_func.__doc__

    # numba syntax: kernel[grid, block] or kernel[grid, block, shared_bytes]
    def __getitem__(self, config):
        try:
            return self._configs[config]  # the same launch shape again: no re-validation
        except (KeyError, TypeError):
            pass
        configured = self._configure(config)
        if len(self._configs) > 4096:  # many distinct grids: keep the cache bounded
            self._configs.clear()
        try:
            self._configs[config] = configured
        except TypeError:  # an unhashable config (a list): just don't cache it
            pass
        return configured

    def _configure(self, config):
        if not isinstance(config, tuple) or len(config) not in (2, 3, 4):
            raise LaunchError(
                f"launch {self.__name__} as kernel[grid, block](...) or "
                f"kernel[grid, block, shared_bytes](...), got kernel[{config!r}]"
            )
        grid, block = _as_dim3(config[0], "grid"), _as_dim3(config[1], "block")
        shared = int(config[2]) if len(config) > 2 else 0
        if block[0] * block[1] * block[2] > 1024:
            raise LaunchError(f"a block may hold at most 1024 threads, asked for {block}")
        return _Configured(self, grid, block, shared)

    def __call__(self, *args, **kwargs):
        raise LaunchError(
            f"{self.__name__} is a kernel: launch it as {self.__name__}[grid, block](...)"
        )

    @property
    def source(self) -> str:
        """The kernel's Python source, for showing in a notebook."""
        return textwrap.dedent(inspect.getsource(self.py_func))

    def launch(self, grid, block, shared, args, stream=None):
        global _launches
        _launches += 1
        if grid[0] * grid[1] * grid[2] == 0:
            return  # an empty problem: nothing to launch (CUDA would refuse a 0 grid)
        if self._stub is not None and runtime.ON_GPU:
            raise NotImplementedError(self._stub)
        if runtime.SIMULATOR:
            self._launch_simulated(grid, block, shared, args)
        else:
            self._launch_on_gpu(grid, block, shared, args, stream)

    # -- simulator: numba's own path on NumPy views of the tensors
    def _launch_simulated(self, grid, block, shared, args):
        sim_args = [_simulator_array(a) if isinstance(a, torch.Tensor) else a for a in args]
        self.dispatcher[grid, block, 0, shared](*sim_args)

    # -- GPU: cached plan, parameter buffer, cuLaunchKernel
    def _launch_on_gpu(self, grid, block, shared, args, stream):
        key = tuple(map(_arg_key, args))
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._make_plan(args)
        plan.slots[:] = plan.pack(*args)
        if stream is None:
            stream = _current_stream()
        (err,) = _driver().cuLaunchKernel(plan.handle, grid[0], grid[1], grid[2], block[0], block[1],
                                          block[2], shared, stream, plan.params_address, 0)
        if err != 0:
            raise LaunchError(f"cuLaunchKernel failed for {self.__name__} with CUDA error {err} "
                              f"(grid={grid}, block={block}, shared={shared} bytes)")

    def _make_plan(self, args) -> _Plan:
        from numba import cuda

        numba_types, kinds, ndims = [], [], []
        for i, a in enumerate(args):
            if isinstance(a, torch.Tensor):
                view = runtime.as_kernel_array(a)  # checks the device
                numba_types.append(self.dispatcher.typeof_pyval(view))
                kinds.append("tensor")
                ndims.append(a.dim())
            elif cuda.is_cuda_array(a) and hasattr(a, "device_ctypes_pointer"):
                numba_types.append(self.dispatcher.typeof_pyval(a))
                kinds.append("device_array")
                ndims.append(a.ndim)
            else:
                ty = self.dispatcher.typeof_pyval(a)
                converter = _scalar_converter(ty)
                if converter is None:
                    raise LaunchError(
                        f"argument {i} of {self.__name__} has type {type(a).__name__} "
                        f"(numba type {ty}); the fast launcher takes tensors, device "
                        "arrays, ints, floats and bools"
                    )
                numba_types.append(ty)
                kinds.append(converter)
                ndims.append(0)
        compiled = self.dispatcher.compile(tuple(numba_types))
        pack = _make_pack_function(kinds, ndims)
        return _Plan(_function_handle(compiled), pack, len(pack(*args)))


class _Configured:
    __slots__ = ("kernel", "grid", "block", "shared")

    def __init__(self, kernel, grid, block, shared):
        self.kernel, self.grid, self.block, self.shared = kernel, grid, block, shared

    def __call__(self, *args, stream=None):
        self.kernel.launch(self.grid, self.block, self.shared, args, stream)


def kernel(py_func=None, **jit_options):
    """Decorator: compile ``py_func`` as a numba.cuda kernel with gpulab's fast launch.

    ``@gpulab.kernel`` or ``@gpulab.kernel(fastmath=True)``; options go to ``cuda.jit``.
    """
    if py_func is None:
        return lambda f: Kernel(f, **jit_options)
    return Kernel(py_func, **jit_options)
