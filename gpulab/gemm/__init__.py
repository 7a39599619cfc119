"""Chapter 02: GEMM: tiling, occupancy, performance and energy models.

    from gpulab.gemm import torch_impl, kernels    # out = alpha * a @ b + beta * c, torch and numba
    from gpulab.gemm import tiling                 # the course's register-tiling core (chapter 11 uses it)
    from gpulab.gemm import resources              # registers, shared memory, occupancy, waves
    from gpulab.gemm import energy                 # the NVML energy meter
    from gpulab.gemm import models                 # the sweep CSV, random forest, analytic and hybrid models

``torch_impl`` is the specification; ``kernels`` has the ladder of numba kernels (naive,
coalesced, the paper's tiled kernel for any T, 1D and 2D register tiling, double-buffered),
all with one signature ``(a, b, c, alpha, beta, out)``.
"""
from . import tiling, torch_impl

__all__ = ["tiling", "torch_impl"]
