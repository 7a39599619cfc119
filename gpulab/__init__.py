"""gpulab: the companion package of the gpulab course.

Import it before numba: it decides whether numba.cuda runs on the GPU or on the CUDA
simulator (see :mod:`gpulab.runtime`).

    import gpulab
    gpulab.MODE            # "gpu" or "sim"
    gpulab.device          # where kernel inputs live
    @gpulab.kernel         # a numba.cuda kernel with a fast launch path for torch tensors
    gpulab.check(...)      # compare a kernel with its reference on fresh random inputs
    gpulab.bench(...)      # median time (CUDA events on a GPU, wall time on a CPU)
    gpulab.roofline(...)   # place a time against the machine's measured ceilings
    gpulab.trace()         # under the simulator: record every thread's reads and writes
"""
from . import runtime  # noqa: F401  (first: it configures numba before anyone imports it)
from .runtime import (MODE, ON_GPU, SIMULATOR, device, pick, preset, register_preset, presets,
                      as_kernel_array, empty, zeros, randn, rand, synchronize, ModeError)
from .launch import kernel, Kernel, LaunchError
from .harness import (check, CheckReport, CheckFailed, tolerance, bench, Timing, reference, forbid_calls,
                      ReferenceCalledError)
from .peaks import machine_peaks, roofline
from .simtrace import trace

__version__ = "0.1.0"


def show_source(obj) -> None:
    """Show the syntax-highlighted source of a function or kernel in a notebook."""
    from .plots import show_source as _show

    _show(obj)
