"""The readable specification of a mixture-of-experts (MoE) layer, step by step, in torch.

A MoE feed-forward layer sends each token to ``k`` of ``E`` experts (small FFNs) and adds
their outputs, weighted by the router. On a GPU it runs in five steps, each a function
here with a numba.cuda twin of the same signature in :mod:`gpulab.moe.kernels`:

1. :func:`route`: router logits -> softmax probabilities -> top-k experts per token,
   weights renormalised to sum to 1, and the load-balancing auxiliary loss.
2. :func:`permute`: sort the ``T * k`` (token, choice) *assignments* by expert: a
   histogram of assignments per expert, an exclusive prefix sum of it (where each
   expert's rows start), and a stable scatter (assignment ``a = t * k + j`` goes to row
   ``offsets[e] + rank``). An optional capacity drops the assignments past ``capacity``
   rows per expert (counted in ``dropped``).
3. :func:`gather_rows`: copy token rows into expert order, so each expert's tokens are
   one contiguous block of rows.
4. :func:`grouped_gemm`: one matrix product per expert over its block of rows (groups
   of different sizes), here twice: ``H = silu(X W1[e])`` then ``Y = H W2[e]``.
5. :func:`combine`: the inverse permutation with the weighted sum
   ``out[t] = sum_j w[t, j] * Y[slot_of[t, j]]``.

:func:`moe_ffn` is the same layer as a plain torch loop over experts (the baseline the
kernels are timed against).

Shapes: ``T`` tokens, hidden size ``H``, FFN size ``F``, ``E`` experts, top-``k``.
Expert weights are ``w1: (E, H, F)`` and ``w2: (E, F, H)`` so an expert is
``silu(x @ w1[e]) @ w2[e]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..harness import reference

__all__ = [
    "Routing", "Permutation", "route", "load_balancing_loss", "permute", "gather_rows",
    "grouped_gemm", "combine", "moe_ffn", "expert_ffn", "validate_routing_inputs",
    "validate_topk", "validate_experts",
]

# -------------------------------------------------------------------- validation


def _where(t: torch.Tensor, device) -> None:
    if device is not None and t.device.type != torch.device(device).type:
        raise ValueError(f"tensor is on {t.device}, expected {device}")


def validate_routing_inputs(logits, k: int) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"logits must be (tokens, experts), got shape {tuple(logits.shape)}")
    if logits.dtype != torch.float32:
        raise TypeError(f"logits must be float32, got {logits.dtype}")
    if not isinstance(k, int) or not 1 <= k <= logits.shape[1]:
        raise ValueError(f"k must be an int between 1 and the number of experts "
                         f"({logits.shape[1]}), got {k!r}")


def validate_topk(topk_idx, num_experts: int, topk_weight=None) -> None:
    if not isinstance(topk_idx, torch.Tensor) or topk_idx.dim() != 2:
        raise ValueError("topk_idx must be a 2-D tensor (tokens, k) of expert ids")
    if topk_idx.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"topk_idx must be int32 or int64, got {topk_idx.dtype}")
    if num_experts < 1:
        raise ValueError(f"num_experts must be at least 1, got {num_experts}")
    if topk_idx.numel() and (int(topk_idx.min()) < 0 or int(topk_idx.max()) >= num_experts):
        raise ValueError(f"topk_idx holds expert ids outside [0, {num_experts}): "
                         f"min {int(topk_idx.min())}, max {int(topk_idx.max())}")
    if topk_weight is not None:
        if topk_weight.shape != topk_idx.shape:
            raise ValueError(f"topk_weight has shape {tuple(topk_weight.shape)} but topk_idx "
                             f"has {tuple(topk_idx.shape)}")
        if topk_weight.dtype != torch.float32:
            raise TypeError(f"topk_weight must be float32, got {topk_weight.dtype}")


def validate_experts(x, w1, w2) -> None:
    for name, t, dim in (("x", x, 2), ("w1", w1, 3), ("w2", w2, 3)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != dim:
            raise ValueError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")
        if t.dtype != torch.float32:
            raise TypeError(f"{name} must be float32, got {t.dtype}")
    E, H, F_ = w1.shape
    if x.shape[1] != H:
        raise ValueError(f"x has hidden size {x.shape[1]} but w1 expects {H}")
    if w2.shape != (E, F_, H):
        raise ValueError(f"w2 must have shape (E, F, H) = {(E, F_, H)}, got {tuple(w2.shape)}")


# ----------------------------------------------------------------------- routing

@dataclass
class Routing:
    """The router's decision for ``T`` tokens."""
    topk_idx: torch.Tensor      # (T, k) int32: the chosen experts, best first
    topk_weight: torch.Tensor   # (T, k) float32: their weights, renormalised to sum to 1
    probs: torch.Tensor         # (T, E) float32: softmax of the logits
    counts: torch.Tensor        # (E,) int32: assignments per expert (before any capacity)
    aux_loss: torch.Tensor      # scalar: the load-balancing loss (k when perfectly balanced)


def load_balancing_loss(probs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Switch-Transformer load-balancing loss ``E * sum_i f_i * P_i``.

    ``f_i = counts[i] / T`` is the fraction of tokens routed to expert ``i`` (with top-k a
    token counts once for each of its k experts, so the ``f_i`` sum to ``k``, as in
    Mixtral and MixLoRA), and ``P_i`` is the mean router probability of expert ``i``.
    Only ``P`` carries a gradient. A perfectly balanced router gives ``k``; a router that
    sends every token to the same experts, with probability 1 on one of them, gives ``E``.

    >>> probs = torch.tensor([[0.5, 0.5], [0.5, 0.5]]); counts = torch.tensor([1, 1])
    >>> float(load_balancing_loss(probs, counts))   # 2 * (0.5*0.5 + 0.5*0.5)
    1.0
    """
    T, E = probs.shape
    f = counts.to(probs.dtype) / max(T, 1)
    P = probs.mean(0) if T else torch.zeros(E, dtype=probs.dtype, device=probs.device)
    return E * (f * P).sum()


@reference
def route(logits: torch.Tensor, k: int) -> Routing:
    """Softmax gate, top-k, renormalised weights and the auxiliary loss.

    ``logits``: (T, E) float32 router logits (``x @ w_gate``). Differentiable in
    ``logits`` through ``topk_weight`` and ``aux_loss``.
    """
    validate_routing_inputs(logits, k)
    probs = torch.softmax(logits, dim=-1)
    top_p, top_i = torch.topk(probs, k, dim=-1)
    weights = top_p / top_p.sum(-1, keepdim=True)
    counts = torch.bincount(top_i.flatten(), minlength=logits.shape[1]).to(torch.int32)
    return Routing(top_i.to(torch.int32), weights, probs, counts, load_balancing_loss(probs, counts))


# -------------------------------------------------------------------- permutation

@dataclass
class Permutation:
    """Where every (token, choice) assignment goes in expert order.

    ``sorted_assignment[row]`` is the assignment ``a = t * k + j`` stored at ``row``;
    expert ``e`` owns rows ``offsets[e]:offsets[e + 1]``; ``slot_of[t, j]`` is the row of
    assignment ``(t, j)``, or -1 if the capacity dropped it.
    """
    counts: torch.Tensor             # (E,) int32: assignments routed to each expert
    offsets: torch.Tensor            # (E + 1,) int32: exclusive prefix sum of kept counts
    sorted_assignment: torch.Tensor  # (T * k,) int32: rows past offsets[E] are unused
    slot_of: torch.Tensor            # (T, k) int32: row of each assignment, -1 if dropped
    dropped: int                     # assignments the capacity dropped
    k: int
    # the tile table of the grouped GEMM (filled by the kernels, None in the reference)
    tile_offsets: torch.Tensor | None = None
    tile_group: torch.Tensor | None = None
    tile_row_start: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        """Rows that hold a kept assignment (= offsets[E])."""
        return int(self.offsets[-1])


@reference
def permute(topk_idx: torch.Tensor, num_experts: int, capacity: int | None = None) -> Permutation:
    """Sort assignments by expert, stably (token order within an expert).

    With ``capacity``, expert ``e`` keeps its first ``capacity`` assignments in token
    order and drops the rest (as in Switch Transformer / GShard, "first come first
    served"); dropped assignments get ``slot_of = -1`` and contribute nothing.

    >>> p = permute(torch.tensor([[1, 0], [1, 2]]), 3)
    >>> p.counts.tolist(), p.offsets.tolist(), p.sorted_assignment.tolist()
    ([1, 2, 1], [0, 1, 3, 4], [1, 0, 2, 3])
    >>> p.slot_of.tolist()
    [[1, 0], [2, 3]]
    """
    validate_topk(topk_idx, num_experts)
    if capacity is not None and capacity < 0:
        raise ValueError(f"capacity must be >= 0 or None, got {capacity}")
    T, k = topk_idx.shape
    flat = topk_idx.flatten().long()
    counts = torch.bincount(flat, minlength=num_experts)
    kept = counts if capacity is None else counts.clamp(max=capacity)
    offsets = torch.zeros(num_experts + 1, dtype=torch.long, device=flat.device)
    offsets[1:] = torch.cumsum(kept, 0)
    order = torch.argsort(flat, stable=True)                  # assignments grouped by expert
    starts = torch.zeros_like(counts)
    starts[1:] = torch.cumsum(counts, 0)[:-1]
    rank = torch.empty_like(flat)
    rank[order] = torch.arange(flat.numel(), device=flat.device) - starts[flat[order]]
    keep = rank < (kept[flat])
    slot = torch.where(keep, offsets[flat] + rank, torch.full_like(rank, -1))
    sorted_assignment = torch.full((T * k,), -1, dtype=torch.int32, device=flat.device)
    sorted_assignment[slot[keep]] = torch.nonzero(keep).flatten().to(torch.int32)
    return Permutation(counts.to(torch.int32), offsets.to(torch.int32), sorted_assignment,
                       slot.view(T, k).to(torch.int32), int((~keep).sum()), k)


@reference
def gather_rows(x: torch.Tensor, perm: Permutation) -> torch.Tensor:
    """Token rows in expert order: ``out[row] = x[sorted_assignment[row] // k]``.

    Rows past ``offsets[E]`` (left free by dropped assignments) are zero.
    """
    out = torch.zeros(perm.sorted_assignment.numel(), x.shape[1], dtype=x.dtype, device=x.device)
    n = perm.rows
    out[:n] = x[perm.sorted_assignment[:n].long() // perm.k]
    return out


@reference
def grouped_gemm(a: torch.Tensor, w: torch.Tensor, perm: Permutation, activation: str = "none") -> torch.Tensor:
    """``out[rows of e] = act(a[rows of e] @ w[e])`` for every expert ``e``.

    ``a``: (R, K) rows in expert order; ``w``: (E, K, N). ``activation``: "none" or "silu".
    Rows past ``offsets[E]`` are zero.
    """
    _check_activation(activation)
    out = torch.zeros(a.shape[0], w.shape[2], dtype=a.dtype, device=a.device)
    offs = perm.offsets.tolist()
    for e in range(w.shape[0]):
        lo, hi = offs[e], offs[e + 1]
        if hi > lo:
            out[lo:hi] = a[lo:hi] @ w[e]
    return F.silu(out) if activation == "silu" else out


def _check_activation(activation: str) -> None:
    if activation not in ("none", "silu"):
        raise ValueError(f"activation must be 'none' or 'silu', got {activation!r}")


@reference
def combine(y_sorted: torch.Tensor, slot_of: torch.Tensor, topk_weight: torch.Tensor) -> torch.Tensor:
    """``out[t] = sum_j topk_weight[t, j] * y_sorted[slot_of[t, j]]``, skipping dropped (-1)."""
    kept = slot_of >= 0
    rows = y_sorted[slot_of.clamp(min=0).long()]                  # (T, k, H)
    w = torch.where(kept, topk_weight, torch.zeros_like(topk_weight))
    return (rows * w.unsqueeze(-1)).sum(1)


# -------------------------------------------------------------- the whole layer

def expert_ffn(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """One expert: ``silu(x @ w1) @ w2``."""
    return F.silu(x @ w1) @ w2


@reference
def moe_ffn(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, topk_idx: torch.Tensor,
            topk_weight: torch.Tensor, capacity: int | None = None) -> torch.Tensor:
    """The MoE layer as a torch loop over experts (gather, two matmuls, weighted add).

    With ``capacity``, the assignments that :func:`permute` drops are skipped.
    """
    validate_experts(x, w1, w2)
    validate_topk(topk_idx, w1.shape[0], topk_weight)
    out = torch.zeros_like(x)
    keep = None
    if capacity is not None:
        keep = permute.__wrapped__(topk_idx, w1.shape[0], capacity).slot_of >= 0
    for e in range(w1.shape[0]):
        hit = topk_idx == e
        if keep is not None:
            hit &= keep
        tok, j = torch.nonzero(hit, as_tuple=True)
        if tok.numel() == 0:
            continue
        y = expert_ffn(x[tok], w1[e], w2[e])
        out.index_add_(0, tok, y * topk_weight[tok, j].unsqueeze(1))
    return out
