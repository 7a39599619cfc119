"""The readable specification of chapter 04's attention kernels, in torch.

Every function here is the twin of one in :mod:`gpulab.attention.kernels` (same names,
same parameters) and is what the tests hold the numba kernels to. Shapes follow
FlashAttention and torch's ``scaled_dot_product_attention``: ``q`` is ``[B, H, Nq, d]``,
``k`` and ``v`` are ``[B, H, Nk, d]``. Outputs are the attention output ``O`` (``[B, H, Nq,
d]``) and the log-sum-exp of each query's scaled scores ``LSE`` (``[B, H, Nq]``, natural
log), the number FlashAttention2 keeps for its backward pass and that lets partial results
be merged exactly (:func:`merge_partials`).

Conventions shared by both twins:

* ``causal=None`` (full attention), ``"top_left"`` (torch's ``is_causal``: query ``i``
  sees keys ``j <= i``) or ``"bottom_right"`` (FlashAttention 2.1 and later: the last query
  sees the last key, ``j <= i + Nk - Nq``). They differ only when ``Nq != Nk``.
* a query that sees no key at all gives ``O = 0`` and ``LSE = -inf`` (not NaN);
* ``fp64=True`` computes in float64: the "upcast reference" of FlashAttention's error rule.

Example: one query, two keys, d = 1, scale 1::

    q = [[[[0.]]]], k = [[[[0.], [0.]]]], v = [[[[1.], [3.]]]]
    attention(q, k, v, scale=1.0) -> O = [[[[2.]]]], LSE = [[[log 2]]] = 0.693
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["attention", "merge_partials", "feature_map", "linear_attention", "sla_block_map", "sla_attention",
           "visible_mask", "CAUSAL_MODES", "FEATURES", "CRITICAL", "MARGINAL", "NEGLIGIBLE", "LINEAR_EPS"]

CAUSAL_MODES = (None, "top_left", "bottom_right")
FEATURES = ("elu", "relu", "softmax")
#: labels of an SLA block map (thu-ml/SLA keeps only a 0/1 sparse map: it has no negligible blocks)
NEGLIGIBLE, MARGINAL, CRITICAL = 0, 1, 2
#: the epsilon of linear attention's denominator (thu-ml/SLA core.py's calc_linear: 1e-5)
LINEAR_EPS = 1e-5


# ------------------------------------------------------------------ validation

def _check_qkv(q, k, v, max_d: int | None = None) -> None:
    """Raise a clear error unless q, k, v are [B, H, N, d] float tensors that fit together."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be [B, H, N, d] (4 dimensions), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must share B, H and d")
    if q.device != k.device or k.device != v.device:
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if max_d is not None and q.shape[3] > max_d:
        raise ValueError(f"head dimension d = {q.shape[3]} is larger than the kernels support ({max_d})")


def _check_causal(causal) -> None:
    if causal not in CAUSAL_MODES:
        raise ValueError(f"causal must be one of {CAUSAL_MODES}, got {causal!r}")


def _check_feature(feature) -> None:
    if feature not in FEATURES:
        raise ValueError(f"feature must be one of {FEATURES}, got {feature!r}")


# ------------------------------------------------------------------ softmax attention

def visible_mask(nq: int, nk: int, causal=None, device=None) -> torch.Tensor:
    """``[nq, nk]`` bool: may query ``i`` see key ``j``? Top-left: ``j <= i``; bottom-right:
    ``j <= i + nk - nq`` (so with ``nq > nk`` the first ``nq - nk`` queries see nothing).

    >>> visible_mask(2, 3, "bottom_right").int().tolist()
    [[1, 1, 0], [1, 1, 1]]
    """
    _check_causal(causal)
    i = torch.arange(nq, device=device)[:, None]
    j = torch.arange(nk, device=device)[None, :]
    if causal is None:
        return torch.ones(nq, nk, dtype=torch.bool, device=device)
    offset = 0 if causal == "top_left" else nk - nq
    return j <= i + offset


def _block_mask_to_keys(block_mask, nq, nk, blk_q, blk_k):
    """Expand a [B, H, Mb, Nb] block table to a [B, H, nq, nk] key mask."""
    rows = block_mask.bool().repeat_interleave(blk_q, dim=2)[:, :, :nq]
    return rows.repeat_interleave(blk_k, dim=3)[:, :, :, :nk]


def _check_block_mask(block_mask, q, k, blk_q, blk_k) -> None:
    B, H, nq, _ = q.shape
    want = (B, H, math.ceil(nq / blk_q), math.ceil(k.shape[2] / blk_k))
    if not isinstance(block_mask, torch.Tensor) or tuple(block_mask.shape) != want:
        got = tuple(block_mask.shape) if isinstance(block_mask, torch.Tensor) else type(block_mask).__name__
        raise ValueError(f"block_mask must be a [B, H, ceil(Nq/blk_q), ceil(Nk/blk_k)] = {want} tensor, got {got}")


def attention(q, k, v, causal=None, scale=None, block_mask=None, blk_q=64, blk_k=64, fp64=False):
    """Softmax attention with its log-sum-exp: ``(O, LSE)``.

    ``O = softmax(scale * q k^T + mask) v`` and ``LSE = logsumexp(scale * q k^T + mask)``
    per query (natural log), ``scale = 1/sqrt(d)`` by default. ``block_mask`` (``[B, H,
    ceil(Nq/blk_q), ceil(Nk/blk_k)]``, bool or 0/1): block-sparse attention, query block
    ``I`` attends only to the key blocks ``J`` with ``block_mask[..., I, J]`` set (and, with
    ``causal``, only to the visible keys among them). Rows that see nothing: ``O = 0``,
    ``LSE = -inf``. Computed in float32 (``fp64=True``: float64); returned in q's dtype
    (``fp64=True``: float64).
    """
    _check_qkv(q, k, v)
    _check_causal(causal)
    nq, nk, d = q.shape[2], k.shape[2], q.shape[3]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    work = torch.float64 if fp64 else torch.float32
    s = torch.einsum("bhid,bhjd->bhij", q.to(work), k.to(work)) * scale
    visible = visible_mask(nq, nk, causal, device=q.device)[None, None]
    if block_mask is not None:
        _check_block_mask(block_mask, q, k, blk_q, blk_k)
        visible = visible & _block_mask_to_keys(block_mask.to(q.device), nq, nk, blk_q, blk_k)
    s = s.masked_fill(~visible, -math.inf)
    lse = torch.logsumexp(s, dim=-1)                      # -inf where a row sees nothing
    finite = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    p = torch.exp(s - finite[..., None])                  # exp(-inf) = 0: empty rows stay 0
    o = torch.einsum("bhij,bhjd->bhid", p, v.to(work))
    out_dtype = torch.float64 if fp64 else q.dtype
    return o.to(out_dtype), lse.to(torch.float64 if fp64 else torch.float32)


def merge_partials(outs, lses):
    """Merge attention computed over disjoint key sets, exactly: ``(O, LSE)``.

    Each part ``p`` is softmax attention over its own keys, ``(O_p, LSE_p)``. The whole is
    ``LSE = log sum_p exp(LSE_p)`` and ``O = sum_p exp(LSE_p - LSE) O_p``: each part is
    weighted by its share of the softmax denominator (not averaged). Parts with
    ``LSE_p = -inf`` (no key visible) weigh 0; a row empty in every part gives O = 0, LSE = -inf.

    Example: parts with LSE log 1 and log 3 weigh 1/4 and 3/4.
    """
    if len(outs) != len(lses) or not outs:
        raise ValueError(f"give one LSE per output (got {len(outs)} outputs and {len(lses)} LSEs)")
    lse_all = torch.stack([l.to(torch.float64) for l in lses])
    lse = torch.logsumexp(lse_all, dim=0)
    finite = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    o = sum(torch.exp(l - finite)[..., None] * o_p.to(torch.float64) for l, o_p in zip(lse_all, outs))
    return o.to(outs[0].dtype), lse.to(lses[0].dtype)


# ------------------------------------------------------------------ linear attention

def feature_map(x, feature="elu"):
    """The kernel feature map phi of linear attention (thu-ml/SLA's three): ``elu(x) + 1``,
    ``relu(x)``, or ``softmax(x)`` over the head dimension."""
    _check_feature(feature)
    if feature == "elu":
        return F.elu(x) + 1
    if feature == "relu":
        return torch.relu(x)
    return torch.softmax(x, dim=-1)


def linear_attention(q, k, v, feature="elu", causal=False, chunk=64, fp64=False):
    """Linear attention ``O = phi(Q) H / (phi(Q) z + 1e-5)`` with ``H = phi(K)^T V`` and
    ``z = sum_j phi(K_j)``: O(N d^2) work instead of O(N^2 d), no softmax.

    ``causal=True`` (``Nq == Nk``): query ``i`` uses only keys ``j <= i``, so ``H`` and ``z``
    become prefix sums. Computed in chunks of ``chunk`` keys the way a kernel does: the
    state of all earlier chunks (an exclusive prefix sum over chunks) plus the masked
    quadratic form inside the query's own chunk. Returns O (float32, or float64 with fp64).
    """
    _check_qkv(q, k, v)
    _check_feature(feature)
    work = torch.float64 if fp64 else torch.float32
    fq, fk, v = feature_map(q.to(work), feature), feature_map(k.to(work), feature), v.to(work)
    if not causal:
        h = torch.einsum("bhjc,bhje->bhce", fk, v)
        z = fk.sum(dim=2)
        num = torch.einsum("bhic,bhce->bhie", fq, h)
        den = torch.einsum("bhic,bhc->bhi", fq, z)
        return num / (den[..., None] + LINEAR_EPS)
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"causal linear attention needs Nq == Nk, got {q.shape[2]} and {k.shape[2]}")
    n = q.shape[2]
    num = torch.zeros_like(fq[..., :1].expand(*fq.shape[:3], v.shape[3])).clone()
    den = torch.zeros(fq.shape[:3], dtype=work, device=q.device)
    h = torch.zeros(*fq.shape[:2], fq.shape[3], v.shape[3], dtype=work, device=q.device)
    z = torch.zeros(*fq.shape[:2], fq.shape[3], dtype=work, device=q.device)
    for start in range(0, n, chunk):
        sl = slice(start, min(start + chunk, n))
        qc, kc, vc = fq[:, :, sl], fk[:, :, sl], v[:, :, sl]
        w = torch.einsum("bhic,bhjc->bhij", qc, kc).tril()          # within the chunk: j <= i
        num[:, :, sl] = torch.einsum("bhic,bhce->bhie", qc, h) + w @ vc
        den[:, :, sl] = torch.einsum("bhic,bhc->bhi", qc, z) + w.sum(-1)
        h = h + torch.einsum("bhjc,bhje->bhce", kc, vc)             # the state after this chunk
        z = z + kc.sum(dim=2)
    return num / (den[..., None] + LINEAR_EPS)


# ------------------------------------------------------------------ SLA

def _mean_pool(x, blk):
    """Block means over the sequence (dim 2); the last, ragged block divides by its own count."""
    n = x.shape[2]
    nb = math.ceil(n / blk)
    pad = nb * blk - n
    sums = F.pad(x, (0, 0, 0, pad)).reshape(*x.shape[:2], nb, blk, x.shape[3]).sum(dim=3)
    counts = torch.full((nb,), blk, dtype=x.dtype, device=x.device)
    counts[-1] = n - (nb - 1) * blk
    return sums / counts[:, None]


def sla_block_map(q, k, topk=0.2, negligible=0.0, blk_q=64, blk_k=64):
    """SLA's block map: ``(labels, scores)``, both ``[B, H, ceil(Nq/blk_q), ceil(Nk/blk_k)]``.

    As thu-ml/SLA's ``get_block_map``: ``scores = mean_pool(Q) @ mean_pool(K - mean(K))^T``
    (smooth-k: K minus its mean over the sequence, the SageAttention trick), per query-block
    row the ``min(Nb, int(topk * Nb))`` highest blocks are CRITICAL (2), the
    ``int(negligible * Nb)`` lowest NEGLIGIBLE (0, the paper's kl%; the released code has
    none), the rest MARGINAL (1). Labels as float32 (2., 1., 0.); scores float32.
    """
    _check_qkv(q, k, k)
    if not 0 <= negligible <= 1 or not 0 <= topk <= 1 or topk + negligible > 1:
        raise ValueError(f"need 0 <= topk, negligible and topk + negligible <= 1, got {topk}, {negligible}")
    q32, k32 = q.to(torch.float32), k.to(torch.float32)
    smooth_k = k32 - k32.mean(dim=2, keepdim=True)
    scores = _mean_pool(q32, blk_q) @ _mean_pool(smooth_k, blk_k).transpose(-1, -2)
    nb = scores.shape[-1]
    n_critical, n_negligible = min(nb, int(topk * nb)), int(negligible * nb)
    labels = torch.full_like(scores, float(MARGINAL))
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(nb, device=q.device).expand_as(order).contiguous())
    labels[rank < n_critical] = float(CRITICAL)
    labels[rank >= nb - n_negligible] = float(NEGLIGIBLE)
    return labels, scores


def sla_attention(q, k, v, labels, feature="softmax", blk_q=64, blk_k=64, scale=None, fp64=False):
    """SLA's two branches for a given block map: ``(O_s, O_l, LSE)``.

    ``O_s``: exact softmax attention over the CRITICAL blocks only (block-sparse) and its
    LSE. ``O_l``: linear attention over the MARGINAL blocks, ``phi(q) H_m / (phi(q) z_m +
    1e-5)`` where ``H_m = sum_{j marginal} h_j``, ``h_j = phi(K_j)^T V_j`` (z likewise). The
    kernel gets ``H_m`` as the total over every block minus the critical and negligible
    ones (thu-ml/SLA's kernel subtracts the critical ones from the totals). The layer's
    output is ``O_s + proj(O_l)`` (:class:`gpulab.attention.sla.SparseLinearAttention`).
    """
    _check_qkv(q, k, v)
    _check_feature(feature)
    _check_block_mask(labels, q, k, blk_q, blk_k)
    o_s, lse = attention(q, k, v, scale=scale, block_mask=labels == CRITICAL, blk_q=blk_q, blk_k=blk_k, fp64=fp64)
    work = torch.float64 if fp64 else torch.float32
    fq, fk = feature_map(q.to(work), feature), feature_map(k.to(work), feature)
    marginal = _block_mask_to_keys(labels == MARGINAL, q.shape[2], k.shape[2], blk_q, blk_k).to(work)
    # per query: sum over its marginal keys of phi(q).phi(k_j) v_j, and of phi(q).phi(k_j)
    w = torch.einsum("bhic,bhjc->bhij", fq, fk) * marginal
    o_l = (w @ v.to(work)) / (w.sum(-1, keepdim=True) + LINEAR_EPS)
    return o_s, o_l.to(work if fp64 else torch.float32), lse
