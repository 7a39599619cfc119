"""What every GEMM of the chapter shares: input validation, FLOPs and minimum bytes."""
from __future__ import annotations

import torch

__all__ = ["check_gemm_inputs", "flops", "min_bytes"]


def check_gemm_inputs(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None, beta: float) -> None:
    """Raise TypeError / ValueError, saying what is wrong, for inputs no GEMM accepts."""
    for name, t in (("a", a), ("b", b)) + ((("c", c),) if c is not None else ()):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != torch.float32:
            raise TypeError(f"{name} must be float32, got {t.dtype} (convert with .float())")
        if t.dim() != 2:
            raise ValueError(f"{name} must be a matrix (2-D), got shape {tuple(t.shape)}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"a is {tuple(a.shape)} and b {tuple(b.shape)}: a's columns must equal b's rows")
    if c is None and beta != 0:
        raise ValueError(f"beta is {beta} but c is None: pass c (M x N) or beta=0")
    if c is not None and tuple(c.shape) != (a.shape[0], b.shape[1]):
        raise ValueError(f"c must be {(a.shape[0], b.shape[1])} (M x N), got {tuple(c.shape)}")
    devices = {t.device for t in (a, b, c) if t is not None}
    if len(devices) > 1:
        raise ValueError(f"a, b and c must be on one device, got {sorted(map(str, devices))}")


def flops(m: int, n: int, k: int) -> int:
    """Floating-point operations of an M x N x K GEMM: one multiply and one add per term."""
    return 2 * m * n * k


def min_bytes(m: int, n: int, k: int, beta: float = 0.0, itemsize: int = 4) -> int:
    """Bytes a GEMM must move at least: A and B read once, the output written once (and C
    read once when beta != 0)."""
    return itemsize * (m * k + k * n + m * n * (2 if beta != 0 else 1))
