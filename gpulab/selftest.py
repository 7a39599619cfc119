"""The smallest proof that kernels run here: one vector add through ``@gpulab.kernel``,
compared with torch. ``gpulab doctor`` runs it; it depends on no chapter's code."""
from __future__ import annotations

import torch
from numba import cuda

from . import runtime
from .launch import kernel


@kernel
def add_kernel(a, b, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a[i] + b[i]


def vector_add_matches_torch(n: int = 1000) -> bool:
    """Launch the kernel on ``n`` elements; True when it equals torch's ``a + b``.
    Raises what the launch raises (most often: numba-cuda finds no CUDA compiler)."""
    a = torch.arange(n, dtype=torch.float32, device=runtime.device)
    b = 2 * a
    out = torch.empty_like(a)
    add_kernel[(n + 127) // 128, 128](a, b, out)
    runtime.synchronize()
    return torch.equal(out, a + b)
