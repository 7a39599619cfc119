"""SLA's layer (thu-ml/SLA ``SparseLinearAttention``) and a tiny fine-tuning demo.

``O = O_s + proj(O_l)``: the sparse branch (exact attention over the critical blocks) plus a
learned ``d x d`` projection of the linear branch (linear attention over the marginal
blocks). ``proj`` starts at zero (weight and bias), so before fine-tuning the layer is plain
block-sparse attention; fine-tuning teaches ``proj`` to turn the cheap linear branch into what
the skipped blocks contributed. The paper fine-tunes the whole diffusion model (Wan2.1); the
demo here fine-tunes only ``proj`` on random heads, against full attention as the target.
"""
from __future__ import annotations

import torch
from torch import nn

from . import kernels, torch_impl

__all__ = ["SparseLinearAttention", "finetune_demo"]


class SparseLinearAttention(nn.Module):
    """``forward(q, k, v) -> O`` for ``[B, H, N, d]`` inputs. ``topk``: the critical share of
    each query-block row (SLA's ``topk``, "1 - sparsity"); ``negligible``: the share skipped
    (the paper's kl%, 0 in the released code); ``backend``: ``"torch"`` (differentiable) or
    ``"numba"`` (the fused kernel, forward only)."""

    def __init__(self, head_dim, topk=0.2, negligible=0.0, feature="softmax", blk_q=64, blk_k=64,
                 backend="torch"):
        super().__init__()
        torch_impl._check_feature(feature)
        if backend not in ("torch", "numba"):
            raise ValueError(f"backend must be 'torch' or 'numba', got {backend!r}")
        self.topk, self.negligible, self.feature = topk, negligible, feature
        self.blk_q, self.blk_k, self.backend = blk_q, blk_k, backend
        self.proj = nn.Linear(head_dim, head_dim)
        with torch.no_grad():                     # zero-initialised: starts as sparse attention
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(self, q, k, v):
        labels, _ = torch_impl.sla_block_map(q, k, self.topk, self.negligible, self.blk_q, self.blk_k)
        impl = torch_impl if self.backend == "torch" else kernels
        o_s, o_l, _ = impl.sla_attention(q, k, v, labels, self.feature, self.blk_q, self.blk_k)
        return o_s.to(torch.float32) + self.proj(o_l.to(self.proj.weight.device))


def finetune_demo(steps=30, n=64, d=16, heads=2, topk=0.25, blk=8, lr=0.01, seed=0):
    """Fine-tune only ``proj`` of a SparseLinearAttention to match full attention on one
    fixed set of random heads with a smooth structure (nearby tokens alike, as in video
    latents). Returns the mean squared error to full attention per step (step 0: the
    zero-initialised layer, i.e. block-sparse attention alone)."""
    gen = torch.Generator().manual_seed(seed)

    def batch():
        base = torch.randn(1, heads, n // blk + 1, d, generator=gen).repeat_interleave(blk, dim=2)[:, :, :n]
        x = base + 0.3 * torch.randn(1, heads, n, d, generator=gen)
        return x, x + 0.1 * torch.randn(1, heads, n, d, generator=gen), torch.randn(1, heads, n, d, generator=gen)

    layer = SparseLinearAttention(d, topk=topk, blk_q=blk, blk_k=blk)
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    q, k, v = batch()
    target, _ = torch_impl.attention(q, k, v)
    labels, _ = torch_impl.sla_block_map(q, k, topk, 0.0, blk, blk)
    o_s, o_l, _ = torch_impl.sla_attention(q, k, v, labels, layer.feature, blk, blk)   # proj's inputs: fixed
    losses = []
    for _ in range(steps):
        loss = torch.mean((o_s + layer.proj(o_l) - target) ** 2)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return losses
