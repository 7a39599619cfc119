"""Fair torch baselines of the MoE layer: what a careful torch user writes.

:func:`gpulab.moe.torch_impl.moe_ffn`, the readable specification, loops over experts and
asks ``torch.nonzero`` which tokens each one got. ``nonzero`` must tell the host how many
elements it found, so every expert costs a device-to-host synchronisation, and its input
checks read ``topk_idx.min()`` and ``max()`` back too: at 64 experts the GPU idles between
dozens of tiny waits. That is a weak peer to time kernels against. The two layers here
remove those waits and keep cuBLAS for the products:

* :func:`moe_ffn_sorted`: the assignments are sorted by expert once (one stable sort on
  the device), the per-expert offsets come to the host once (one sync per layer, not one
  per expert), and each expert multiplies a contiguous slice of rows;
* :func:`moe_ffn_grouped_mm`: the same sort, then ``torch._grouped_mm`` (private, so
  guarded: ``_grouped_mm(mat_a, mat_b, offs=None, bias=None, out_dtype=None)``, ``offs``
  the int32 *end* row of each group) does each product in one call. Its fast path is bf16
  on Hopper/Blackwell; FP32 inputs take torch's ``_grouped_mm_fallback`` (in
  ``aten/src/ATen/native/GroupedMMUtils.h``), which copies ``offs`` to the host and runs
  one ``mm`` per group. The benchmark counts the syncs of each layer.

Both combine without atomics: each routed row, times its weight, goes back to its
(token, choice) place and the ``k`` choices of a token are summed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["sort_by_expert", "moe_ffn_sorted", "moe_ffn_grouped_mm", "grouped_mm_problem", "HAS_GROUPED_MM"]

#: whether this torch has the private grouped matrix product
HAS_GROUPED_MM = hasattr(torch, "_grouped_mm")


def sort_by_expert(topk_idx: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(order, ends)``, on the device, no host sync.

    ``order[row]`` is the assignment ``a = t * k + j`` at ``row`` once the assignments
    are stably sorted by expert; expert ``e`` owns rows ``ends[e-1]:ends[e]`` (``ends``
    is int32, the inclusive prefix sum of the counts: what ``torch._grouped_mm`` calls
    ``offs``).
    """
    flat = topk_idx.flatten().long()
    experts, order = torch.sort(flat, stable=True)
    # where each expert's rows end: a binary search in the sorted ids. (torch.bincount would
    # read the largest id back to the host to size its output: a sync.)
    ids = torch.arange(num_experts, device=flat.device)
    ends = torch.searchsorted(experts, ids, right=True).to(torch.int32)
    return order, ends


def _combine_sorted(y_sorted, order, topk_weight):
    """out[t] = sum_j w[t, j] * y[row of (t, j)]: rows back to assignment order, then a sum."""
    T, k = topk_weight.shape
    weighted = y_sorted * topk_weight.flatten()[order].unsqueeze(1)
    y = torch.empty_like(weighted)
    y[order] = weighted                       # assignment order: (t, j) at t * k + j
    return y.view(T, k, -1).sum(1)


def moe_ffn_sorted(x, w1, w2, topk_idx, topk_weight):
    """The MoE layer as a torch loop over contiguous expert slices: one host sync per layer.

    Same result as :func:`gpulab.moe.torch_impl.moe_ffn` (no capacity); no input checks
    (the caller's job, so that the timing holds no extra reads to the host).
    """
    T, k = topk_idx.shape
    order, ends = sort_by_expert(topk_idx, w1.shape[0])
    xs = x[order // k]                        # token rows in expert order
    bounds = [0] + ends.tolist()              # the one device-to-host read of the layer
    ys = torch.empty(xs.shape[0], w2.shape[2], dtype=x.dtype, device=x.device)
    for e in range(w1.shape[0]):
        lo, hi = bounds[e], bounds[e + 1]
        if hi > lo:
            ys[lo:hi] = F.silu(xs[lo:hi] @ w1[e]) @ w2[e]
    return _combine_sorted(ys, order, topk_weight)


def moe_ffn_grouped_mm(x, w1, w2, topk_idx, topk_weight):
    """The MoE layer with ``torch._grouped_mm`` for both products (sorted once, as above).

    Raises RuntimeError where this torch has no ``_grouped_mm``, and ValueError for a
    hidden or FFN size whose rows are not a multiple of 16 bytes (the call requires it).
    """
    if not HAS_GROUPED_MM:
        raise RuntimeError(f"torch {torch.__version__} has no torch._grouped_mm")
    H, F_ = w1.shape[1], w1.shape[2]
    per_16_bytes = 16 // x.element_size()
    if H % per_16_bytes or F_ % per_16_bytes:
        raise ValueError(f"torch._grouped_mm needs rows of a multiple of 16 bytes: hidden {H} and FFN {F_} "
                         f"must be multiples of {per_16_bytes} for {x.dtype}")
    T, k = topk_idx.shape
    order, ends = sort_by_expert(topk_idx, w1.shape[0])
    xs = x[order // k]
    h = F.silu(torch._grouped_mm(xs, w1.contiguous(), offs=ends))
    ys = torch._grouped_mm(h, w2.contiguous(), offs=ends)
    return _combine_sorted(ys, order, topk_weight)


def grouped_mm_problem(device) -> str | None:
    """Why :func:`moe_ffn_grouped_mm` cannot run in FP32 on ``device`` (None: it can). It is
    tried once on a tiny problem: a private function may lack a dtype or a device."""
    if not HAS_GROUPED_MM:
        return f"torch {torch.__version__} has no torch._grouped_mm"
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 4, generator=g).to(device)
    b = torch.randn(2, 4, 4, generator=g).to(device)
    try:
        out = torch._grouped_mm(a, b, offs=torch.tensor([2, 6], dtype=torch.int32, device=device))
    except RuntimeError as exc:
        return f"torch._grouped_mm refuses FP32 on {device} in torch {torch.__version__}: {exc}"[:300]
    if not torch.allclose(out[:2], a[:2] @ b[0], atol=1e-4) or not torch.allclose(out[2:], a[2:] @ b[1], atol=1e-4):
        return f"torch._grouped_mm gave wrong FP32 results on {device} in torch {torch.__version__}"
    return None
