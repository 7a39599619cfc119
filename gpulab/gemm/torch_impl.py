"""The specification of chapter 02: the GEMM of BLAS, ``out = alpha * a @ b + beta * c``.

``a`` is (M, K), ``b`` (K, N), ``c`` (M, N) or None, all float32 on one device. As in BLAS,
``c`` is not read when ``beta == 0`` (so it may hold anything, NaN included).
"""
from __future__ import annotations

import torch

from .problem import check_gemm_inputs

__all__ = ["gemm"]


def gemm(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None, alpha: float = 1.0,
         beta: float = 0.0) -> torch.Tensor:
    """alpha * a @ b + beta * c, in float32 (torch's matmul; cuBLAS on a GPU)."""
    check_gemm_inputs(a, b, c, beta)
    out = alpha * (a @ b)
    if beta != 0:
        out = out + beta * c
    return out
