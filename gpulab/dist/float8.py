"""Float8 training with tensorwise dynamic scaling (TorchTitan's float8 recipe via torchao).

Each matrix product of a linear layer runs in 8-bit floats. Before the product, each
operand is scaled so that its largest magnitude lands on the format's largest finite
value, then rounded to float8:

* forward operands (activations, weights): e4m3 (4 exponent bits, 3 mantissa bits, max
  448), scale = 448 / amax;
* gradients (backward): e5m2 (more range, less precision, max 57344), scale = 57344 / amax.

"Dynamic": amax is that tensor's own, computed every step; "tensorwise": one scale per
tensor. The product is accumulated in higher precision and multiplied by
``1 / (scale_a * scale_b)``. On an H100/H200 ``torch._scaled_mm`` does it on the float8
tensor cores; elsewhere :func:`scaled_mm_emulated` computes the same numbers from the
rounded operands in float32 (so a CPU shows the rounding error, not the speed).

    layer = Float8Linear.from_linear(nn.Linear(64, 96))   # forward e4m3, backward e5m2
    convert_to_float8(model)                              # every block's linear layers
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["E4M3", "E5M2", "E4M3_MAX", "E5M2_MAX", "AMAX_EPS", "tensorwise_scale", "to_float8",
           "from_float8", "scaled_mm_emulated", "scaled_mm", "Float8Linear", "convert_to_float8",
           "has_float8_matmul"]

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
E4M3_MAX = torch.finfo(E4M3).max      # 448.0
E5M2_MAX = torch.finfo(E5M2).max      # 57344.0
#: floor on amax (torchao's ``EPS`` in torchao/float8/float8_utils.py), so an all-zero
#: tensor gets a finite scale
AMAX_EPS = 1e-12


def tensorwise_scale(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``max(dtype) / amax(x)`` as a float32 scalar tensor (amax floored at 1e-12)."""
    if dtype not in (E4M3, E5M2):
        raise ValueError(f"dtype must be torch.float8_e4m3fn or torch.float8_e5m2, got {dtype}")
    # in float64, then float32, as torchao's amax_to_scale does (eager and compiled agree)
    amax = x.detach().abs().max().to(torch.float64).clamp(min=AMAX_EPS)
    return (torch.finfo(dtype).max / amax).to(torch.float32)


def to_float8(x: torch.Tensor, dtype: torch.dtype, scale: torch.Tensor | None = None):
    """``(x * scale)`` clamped to the format's range and rounded to float8; returns
    ``(x8, scale)``."""
    scale = tensorwise_scale(x, dtype) if scale is None else scale
    limit = torch.finfo(dtype).max
    return (x.float() * scale).clamp(-limit, limit).to(dtype), scale


def from_float8(x8: torch.Tensor, scale: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    return (x8.float() / scale).to(dtype)


def has_float8_matmul() -> bool:
    """True on a CUDA GPU of compute capability 8.9 or more (Ada, Hopper): ``_scaled_mm``."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


def scaled_mm_emulated(a8, sa, b8, sb, out_dtype=torch.float32):
    """``a @ b`` from float8 operands and their scales, in float32 (any device)."""
    return ((a8.float() @ b8.float()) / (sa * sb)).to(out_dtype)


def scaled_mm(a8, sa, b8, sb, out_dtype=torch.bfloat16):
    """``a @ b`` for float8 ``a [M, K]`` and ``b [K, N]``: ``torch._scaled_mm`` where the GPU
    has float8 tensor cores (it wants ``a`` row-major, ``b`` column-major, sizes multiples
    of 16, and the *inverse* scales), else the emulation."""
    if a8.is_cuda and has_float8_matmul():
        a8 = a8.contiguous()
        b8 = b8.t().contiguous().t()                  # column-major
        return torch._scaled_mm(a8, b8, scale_a=(1 / sa).float(), scale_b=(1 / sb).float(), out_dtype=out_dtype)
    return scaled_mm_emulated(a8, sa, b8, sb, out_dtype)


class _Float8Matmul(torch.autograd.Function):
    """y = x w^T with both in e4m3; backward: the incoming gradient in e5m2."""

    @staticmethod
    def forward(ctx, x2d, weight):
        x8, sx = to_float8(x2d, E4M3)
        w8, sw = to_float8(weight, E4M3)
        ctx.save_for_backward(x8, sx, w8, sw)
        ctx.out_dtype = x2d.dtype
        return scaled_mm(x8, sx, w8.t(), sw, out_dtype=x2d.dtype)

    @staticmethod
    def backward(ctx, grad):
        x8, sx, w8, sw = ctx.saved_tensors
        g8, sg = to_float8(grad, E5M2)
        grad_x = scaled_mm(g8, sg, w8, sw, out_dtype=ctx.out_dtype)                 # [M,N] @ [N,K]
        grad_w = scaled_mm(g8.t(), sg, x8, sx, out_dtype=ctx.out_dtype)             # [N,M] @ [M,K]
        return grad_x, grad_w


class Float8Linear(nn.Linear):
    """``nn.Linear`` (no bias) whose products run in float8 with tensorwise scaling."""

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Float8Linear":
        if linear.bias is not None:
            raise ValueError("Float8Linear supports linear layers without bias (as Llama's)")
        out = cls(linear.in_features, linear.out_features, bias=False, device=linear.weight.device,
                  dtype=linear.weight.dtype)
        out.weight = linear.weight
        return out

    def forward(self, x):
        shape = x.shape
        y = _Float8Matmul.apply(x.reshape(-1, shape[-1]), self.weight)
        return y.reshape(*shape[:-1], self.out_features)


def convert_to_float8(model: nn.Module, skip=("output",)) -> int:
    """Swap every ``nn.Linear`` (except those named in ``skip``) for a :class:`Float8Linear`
    sharing its weight; returns how many were swapped. We keep the output projection in
    bf16 by default (a choice of this course; TorchTitan's ``filter_fqns`` option lists the
    modules it leaves in high precision)."""
    swapped = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if type(child) is nn.Linear and full not in skip:
                setattr(module, child_name, Float8Linear.from_linear(child))
                swapped += 1
    return swapped
