"""Shared helpers of chapter 04's tests: random heads and FlashAttention's error rule."""
import math

import torch

import gpulab


def heads(b, h, nq, nk, d, gen, scale=1.0):
    """Random q [b, h, nq, d], k and v [b, h, nk, d] on the kernels' device."""
    q = torch.randn(b, h, nq, d, generator=gen) * scale
    k = torch.randn(b, h, nk, d, generator=gen)
    v = torch.randn(b, h, nk, d, generator=gen)
    return q.to(gpulab.device), k.to(gpulab.device), v.to(gpulab.device)


def max_err(x, ref):
    """Largest |x - ref| over the finite entries; infinities must match exactly."""
    x, ref = x.double().cpu(), ref.double().cpu()
    inf = torch.isinf(ref)
    assert torch.equal(torch.isinf(x), inf) and torch.equal(x[inf], ref[inf]), "infinities differ"
    assert not torch.isnan(x).any(), "NaN in the output"
    finite = ~inf
    return float((x[finite] - ref[finite]).abs().max()) if finite.any() else 0.0


def assert_fa_rule(ours, torch_same_dtype, upcast, slack=1e-6, what="O"):
    """FlashAttention's test rule (flash-attn tests/test_flash_attn.py): our error against an
    upcast (float64) reference is at most twice the error of torch's own computation in the
    same dtype (float32 here), plus rounding slack."""
    ours_err, torch_err = max_err(ours, upcast), max_err(torch_same_dtype, upcast)
    assert ours_err <= 2 * torch_err + slack, f"{what}: error {ours_err:.3g} > 2 x torch's {torch_err:.3g} + {slack:g}"
    return ours_err


LN = math.log
