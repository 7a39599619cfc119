"""FP8 on Hopper's tensor cores, through ``torch._scaled_mm``.

Hopper's tensor cores multiply 8-bit floats (E4M3: 4 exponent bits, 3 mantissa bits,
largest finite 448; E5M2: largest 57344) at twice the rate of BF16. numba converts to and
from FP8 but has no tensor-core instruction; torch reaches them with
``torch._scaled_mm(a8, b8, scale_a, scale_b, out_dtype)``: ``a8`` row-major [M, K], ``b8``
column-major [K, N] (the transpose of a row-major [N, K]), per-tensor float32 scales that
undo the quantization: ``out = (a8 * scale_a) @ (b8 * scale_b)``.

:func:`quantize_e4m3` scales a tensor so its largest magnitude lands on 448 and casts;
:func:`reference_matmul` is what the product of the quantized operands should be, in
float64 on any device (CPU torch has the float8 dtypes), so the GPU's result is checked
against it, and the quantization error is measured against the full-precision product.
"""
from __future__ import annotations

import torch

__all__ = ["E4M3_MAX", "quantize_e4m3", "reference_matmul", "fp8_matmul", "relative_error"]

E4M3_MAX = float(torch.finfo(torch.float8_e4m3fn).max)      # 448.0


def quantize_e4m3(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x8, scale): x8 = x / scale in float8_e4m3fn, scale = amax(|x|) / 448 (float32, shape [])."""
    if not x.is_floating_point():
        raise TypeError(f"quantize a floating tensor, got {x.dtype}")
    amax = x.abs().max().float().clamp(min=1e-12)
    scale = amax / E4M3_MAX
    x8 = (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return x8, scale


def reference_matmul(a8, scale_a, b8_rows, scale_b) -> torch.Tensor:
    """(a8 * scale_a) @ (b8_rows * scale_b).T in float64: b8_rows is [N, K] (row-major)."""
    a = a8.to(torch.float64) * scale_a.double()
    b = b8_rows.to(torch.float64) * scale_b.double()
    return a @ b.T


def fp8_matmul(a: torch.Tensor, b_rows: torch.Tensor, out_dtype=torch.bfloat16) -> torch.Tensor:
    """a [M, K] @ b_rows[N, K].T on FP8 tensor cores (GPU, compute capability >= 8.9): both
    quantized per tensor to E4M3; M, N, K multiples of 16."""
    if a.dim() != 2 or b_rows.dim() != 2 or a.shape[1] != b_rows.shape[1]:
        raise ValueError(f"a is [M, K] and b_rows [N, K], got {tuple(a.shape)} and {tuple(b_rows.shape)}")
    if any(d % 16 for d in (*a.shape, b_rows.shape[0])):
        raise ValueError(f"FP8 tensor-core shapes are multiples of 16, got {tuple(a.shape)} x {tuple(b_rows.shape)}")
    if not a.is_cuda:
        raise RuntimeError("torch._scaled_mm runs FP8 on CUDA tensor cores; on the CPU use reference_matmul")
    a8, sa = quantize_e4m3(a)
    b8, sb = quantize_e4m3(b_rows)
    return torch._scaled_mm(a8, b8.t(), scale_a=sa, scale_b=sb, out_dtype=out_dtype)


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """||approx - exact|| / ||exact|| (Frobenius), in float64."""
    exact = exact.double().cpu()
    return float((approx.double().cpu() - exact).norm() / exact.norm())
