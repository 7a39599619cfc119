"""Graded checks of the chapter 04 assignment (attention kernels), on the checks engine.

Task 1  the online softmax update: one thread per query row streams the keys in tiles of
        TILE, keeping a running max m and sum l and rescaling its accumulator (O and LSE)
Task 2  the bottom-right causal mask (FlashAttention 2.1+), one thread per (query, key)
Task 3  the exact merge of two partial attentions by their log-sum-exp
Task 4  SLA's block map: pooled scores with smooth-k, per-row critical / marginal / negligible

The inputs probe each classic mistake: keys whose count is not a multiple of TILE (a last
tile skipped), logits of about 1e4 that grow from tile to tile (an exp without the running
max, or a max kept from one tile, overflows), Nq != Nk both ways (top-left alignment, an
off-by-one diagonal, rows that see nothing), partials with very different and infinite LSEs
(averaging, an unguarded -inf), keys with a large mean (no smooth-k) and ragged blocks.
"""
from __future__ import annotations

import math

import torch
from numba import cuda, float32

from ... import runtime
from ...attention import kernels as attention_kernels
from ...attention import torch_impl
from ...harness import compare, mark_answers, reference
from ...launch import kernel
from .engine import FUNCTION, KERNEL, Hint, Planted, Sizes, Task

__all__ = ["TILE", "MAX_D", "LOG2E", "BLKQ", "BLKK", "check_task1", "check_task2", "check_task3", "check_task4",
           "ONLINE", "BOTTOM_RIGHT", "MERGE", "BLOCK_MAP", "task1_reference", "task2_reference",
           "task3_reference", "task4_reference"]

#: keys per tile of task 1 (the learner's loop walks the keys TILE at a time)
TILE = runtime.pick(4, 32)
#: the largest head dimension of task 1 (the size of the per-thread accumulator)
MAX_D = runtime.pick(16, 64)
LOG2E = 1.4426950408889634
#: task 4's block sizes: queries pooled BLKQ at a time, keys BLKK at a time (different on purpose)
BLKQ, BLKK = 4, 3

mark_answers(torch_impl.attention, torch_impl.merge_partials, torch_impl.sla_block_map,
             attention_kernels.attention, attention_kernels.merge_partials)


# ------------------------------------------------------------------------ task 1

class _Rows(tuple):
    """Task 1's size: (queries, keys, d, logit scale)."""
    def __str__(self):
        n, m, d, logit = self
        return f"{n} queries x {m} keys, d = {d}" + (f", logits ~{logit:g}" if logit > 1 else "")


def task1_inputs(size, gen):
    """q [n, d], k, v [m, d] and the scale 1/sqrt(d). With a large logit scale the scores
    grow key by key (the largest in the last tile), about ``logit`` at the end."""
    n, m, d, logit = size
    if logit <= 1:
        return (torch.randn(n, d, generator=gen), torch.randn(m, d, generator=gen),
                torch.randn(m, d, generator=gen), 1 / math.sqrt(d))
    u = torch.randn(d, generator=gen)
    u = u / u.norm()
    q = u * logit * (1 + 0.1 * torch.rand(n, 1, generator=gen))
    k = u * math.sqrt(d) * torch.arange(1, m + 1)[:, None] / m + 0.01 * torch.randn(m, d, generator=gen)
    return q, k, torch.randn(m, d, generator=gen), 1 / math.sqrt(d)


@reference
def task1_reference(q, k, v, scale):
    """O = softmax(scale q k^T) v and LSE (natural log) per query, computed in float64."""
    o, lse = torch_impl.attention(q[None, None], k[None, None], v[None, None], scale=scale, fp64=True)
    return o[0, 0].to(torch.float32), lse[0, 0].to(torch.float32)


def _launch_rows(kernel_, inputs, outputs, size):
    block = 4 if size[0] < 8 else 8          # two block sizes: a hard-coded one leaves rows out
    kernel_[math.ceil(size[0] / block), block](*inputs, *outputs)


def _make_online(mistake=None):
    """Task 1's kernel with one classic mistake (None: the right answer, for the tests)."""
    no_rescale, first_max, no_max, log2_lse, no_divide, skip_last = (
        mistake == m for m in ("no_rescale", "first_max", "no_max", "log2_lse", "no_divide", "skip_last"))

    @kernel
    def online_kernel(q, k, v, scale, o, lse):
        i = cuda.grid(1)
        if i >= q.shape[0]:
            return
        n_keys, d = k.shape[0], q.shape[1]
        acc = cuda.local.array(MAX_D, float32)
        for c in range(d):
            acc[c] = 0.0
        m = -math.inf
        l = 0.0
        n_tiles = n_keys // TILE if skip_last else (n_keys + TILE - 1) // TILE
        for tile in range(n_tiles):
            start = tile * TILE
            end = min(start + TILE, n_keys)
            tile_max = -math.inf
            for j in range(start, end):
                s = 0.0
                for c in range(d):
                    s += q[i, c] * k[j, c]
                tile_max = max(tile_max, s * scale * LOG2E)
            m_new = max(m, tile_max)
            if first_max and tile > 0:
                m_new = m
            if no_max:
                m_new = 0.0
            alpha = math.exp2(m - m_new) if m != -math.inf else 0.0
            l = l * alpha
            if not no_rescale:
                for c in range(d):
                    acc[c] *= alpha
            for j in range(start, end):
                s = 0.0
                for c in range(d):
                    s += q[i, c] * k[j, c]
                p = math.exp2(s * scale * LOG2E - m_new)
                l += p
                for c in range(d):
                    acc[c] += p * v[j, c]
            m = m_new
        for c in range(d):
            o[i, c] = acc[c] if no_divide else acc[c] / l
        lse[i] = m + math.log2(l) if log2_lse else (m + math.log2(l)) * math.log(2.0)

    return online_kernel


def _overflowed(case):
    return case.size[3] > 1 and isinstance(case.output, torch.Tensor) and not torch.isfinite(case.output).all()


def _unrescaled(q, k, v, scale):
    """What an accumulator never rescaled gives: each tile's sum of p v at its own max."""
    s = (q.double() @ k.double().T) * scale
    out = torch.zeros(q.shape[0], v.shape[1], dtype=torch.float64)
    m = torch.full((q.shape[0],), -math.inf, dtype=torch.float64)
    l = torch.zeros(q.shape[0], dtype=torch.float64)
    for start in range(0, k.shape[0], TILE):
        st = s[:, start:start + TILE]
        m_new = torch.maximum(m, st.max(dim=1).values)
        l = l * torch.exp(m - m_new) + torch.exp(st - m_new[:, None]).sum(1)
        out = out + torch.exp(st - m_new[:, None]) @ v[start:start + TILE].double()
        m = m_new
    return (out / l[:, None]).to(torch.float32)


ONLINE = Task(
    chapter="04", number=1, title="the online softmax update (O and LSE)", kind=KERNEL,
    reference=task1_reference, make_inputs=task1_inputs,
    sizes=Sizes(sim=[_Rows((1, 1, 4, 1.0)), _Rows((5, 11, 8, 1.0)), _Rows((9, 14, 4, 1.0)),
                     _Rows((3, 9, 4, 1e4))],
                hidden=[_Rows((2, 7, 16, 1.0)), _Rows((10, 13, 8, 1e4))],
                gpu=[_Rows((1000, 4097, 64, 1.0)), _Rows((333, 1000, 64, 1e4))]),
    launch=_launch_rows, rtol=1e-4, atol=2e-5, own_kernels=(attention_kernels,),
    candidate_name="your online softmax kernel",
    hints=[
        Hint(_overflowed, "exp overflowed at logits of about 1e4: subtract the running max m (the max "
                          "over every tile so far, max(m_old, tile max), not one tile's) before exp2"),
        Hint(lambda case: not _overflowed(case) and case.output_matches(_unrescaled(*case.inputs), 1e-3, 1e-4),
             "Rescale the accumulator too: when the max grows, multiply acc (and l) by alpha = exp2(m_old - m_new)"),
        Hint(lambda case: case.size[1] % TILE != 0 and case.output is not None and
             case.output_matches(task1_reference.__wrapped__(case.inputs[0], case.inputs[1][:case.size[1] // TILE * TILE],
                                                             case.inputs[2][:case.size[1] // TILE * TILE],
                                                             case.inputs[3])[0]),
             "The last, ragged tile was skipped: walk ceil(m / TILE) tiles and stop each at min(start + TILE, m)"),
        Hint(lambda case: isinstance(case.error, ValueError) and "domain" in str(case.error),
             "log2(l) of l = 0: no key was summed. With fewer keys than TILE the last, ragged tile is the "
             "only one: walk ceil(m / TILE) tiles"),
        Hint(lambda case: len(case.outputs) > 1 and isinstance(case.outputs[1], torch.Tensor) and
             torch.allclose(case.outputs[1].cpu().double() * math.log(2.0), case.expected[1].double(), 1e-4, 1e-4),
             "LSE is in log2 units: the natural log is (m + log2(l)) * ln 2"),
        Hint(lambda case: case.output is not None and torch.isfinite(case.output).all()
             and not torch.allclose(case.output.cpu(), case.expected[0], 1e-3, 1e-4)
             and not case.output_matches(_unrescaled(*case.inputs), 1e-3, 1e-4)
             and case.outputs[1] is not None and torch.allclose(case.outputs[1].cpu(), case.expected[1], 1e-4, 1e-4),
             "LSE is right but O is not: divide the accumulator by l at the end, O = acc / l"),
    ],
    solution="online_softmax_kernel",
)
ONLINE.planted = [
    Planted("accumulator never rescaled", _make_online("no_rescale"), "rescale the accumulator"),
    Planted("max of the first tile kept", _make_online("first_max"), "running max"),
    Planted("no max subtracted", _make_online("no_max"), "overflow"),
    Planted("LSE in log2 units", _make_online("log2_lse"), "natural log"),
    Planted("O not divided by l", _make_online("no_divide"), "divide the accumulator by l"),
    Planted("last ragged tile skipped", _make_online("skip_last"), "ragged tile"),
    Planted("the reference itself", task1_reference, "@gpulab.kernel"),
]
check_task1 = ONLINE.checker()


# ------------------------------------------------------------------------ task 2

class _Mask(tuple):
    def __str__(self):
        return f"Nq = {self[0]}, Nk = {self[1]}"


@reference
def task2_reference(nq, nk):
    """[nq, nk] float32: 1 where query i sees key j under the bottom-right alignment, else 0."""
    return torch_impl.visible_mask(nq, nk, "bottom_right").to(torch.float32).to(runtime.device)


def _launch_mask(kernel_, inputs, outputs, size):
    block = (4, 4) if size[1] < 8 else (8, 2)      # x: keys (columns), y: queries (rows)
    kernel_[(math.ceil(size[1] / block[0]), math.ceil(size[0] / block[1])), block](*inputs, *outputs)


def _mask_variant(nq, nk, rule):
    i = torch.arange(nq)[:, None]
    j = torch.arange(nk)[None, :]
    rules = {"top_left": j <= i, "strict": j < i + nk - nq, "flipped": j <= i + nq - nk,
             "transposed": i <= j + nk - nq, "loose": j <= i + nk - nq + 1}
    return rules[rule].to(torch.float32).to(runtime.device)


def _make_mask(rule=None):
    top_left, strict, flipped, transposed, loose, row_only = (
        rule == r for r in ("top_left", "strict", "flipped", "transposed", "loose", "row_only"))

    @kernel
    def mask_kernel(nq, nk, visible):
        j, i = cuda.grid(2)
        if row_only:
            j = cuda.threadIdx.x              # forgets the block offset: columns past one block never written
        if i >= nq or j >= nk:
            return
        offset = nk - nq
        if top_left:
            offset = 0
        if flipped:
            offset = nq - nk
        if transposed:
            see = i <= j + offset
        elif strict:
            see = j < i + offset
        elif loose:
            see = j <= i + offset + 1
        else:
            see = j <= i + offset
        visible[i, j] = 1.0 if see else 0.0

    return mask_kernel


BOTTOM_RIGHT = Task(
    chapter="04", number=2, title="the bottom-right causal mask", kind=KERNEL,
    reference=task2_reference, make_inputs=lambda size, gen: (size[0], size[1]),
    sizes=Sizes(sim=[_Mask((4, 4)), _Mask((3, 9)), _Mask((7, 3)), _Mask((1, 5))],
                hidden=[_Mask((6, 13)), _Mask((9, 2))], gpu=[_Mask((1000, 4097)), _Mask((4097, 1000))]),
    launch=_launch_mask, rtol=0, atol=0, own_kernels=(attention_kernels,), candidate_name="your mask kernel",
    hints=[
        Hint.matches(lambda nq, nk: _mask_variant(nq, nk, "top_left"),
                     "That is the top-left alignment (torch's is_causal, j <= i): with Nq != Nk the bottom-right "
                     "one lets the last query see the last key, j <= i + Nk - Nq"),
        Hint.matches(lambda nq, nk: _mask_variant(nq, nk, "strict"),
                     "The diagonal is off by one: key j = i + Nk - Nq is visible (<=, not <)"),
        Hint.matches(lambda nq, nk: _mask_variant(nq, nk, "loose"),
                     "The diagonal is off by one: key j = i + Nk - Nq + 1 is not visible"),
        Hint.matches(lambda nq, nk: _mask_variant(nq, nk, "flipped"),
                     "The offset's sign: the shift is Nk - Nq (more keys than queries: each query sees more)"),
        Hint.matches(lambda nq, nk: _mask_variant(nq, nk, "transposed"),
                     "Rows are queries and columns keys: visible[i, j] with j (keys) from cuda.grid(2)'s x"),
        Hint(lambda case: case.unwritten.any(), "Some elements were never written: j, i = cuda.grid(2) "
                                                "(block offset included) and one write per element"),
    ],
    solution="mask_kernel",
)
BOTTOM_RIGHT.planted = [
    Planted("top-left alignment", _make_mask("top_left"), "top-left alignment"),
    Planted("strict diagonal", _make_mask("strict"), "off by one"),
    Planted("diagonal one too far", _make_mask("loose"), "off by one"),
    Planted("offset of the wrong sign", _make_mask("flipped"), "offset's sign"),
    Planted("queries and keys swapped", _make_mask("transposed"), "rows are queries"),
    Planted("column from threadIdx alone", _make_mask("row_only"), "never written"),
]
check_task2 = BOTTOM_RIGHT.checker()


# ------------------------------------------------------------------------ task 3

class _Parts(tuple):
    def __str__(self):
        return f"{self[0]} rows, keys split {self[1]} + {self[2]}" + (" (large logits)" if self[3] > 1 else "")


def task3_inputs(size, gen):
    """Two partial attentions of the same queries over disjoint key sets, as (O1, LSE1, O2,
    LSE2): the last row's second part is empty (O 0, LSE -inf); with 3+ rows the first row
    is empty in both."""
    n, m1, m2, logit = size
    q = torch.randn(1, 1, n, 8, generator=gen) * logit
    k = torch.randn(1, 1, m1 + m2, 8, generator=gen)
    v = torch.randn(1, 1, m1 + m2, 8, generator=gen)
    o1, l1 = torch_impl.attention(q, k[:, :, :m1], v[:, :, :m1])
    o2, l2 = torch_impl.attention(q, k[:, :, m1:], v[:, :, m1:])
    o1, l1, o2, l2 = o1[0, 0], l1[0, 0], o2[0, 0], l2[0, 0]
    o2[-1], l2[-1] = 0.0, -math.inf
    if n >= 3:
        o1[0], l1[0], o2[0], l2[0] = 0.0, -math.inf, 0.0, -math.inf
    return o1, l1, o2, l2


@reference
def task3_reference(o1, lse1, o2, lse2):
    """The merge, in float64: LSE = logaddexp(LSE1, LSE2), O = sum_p exp(LSE_p - LSE) O_p."""
    o, lse = torch_impl.merge_partials([o1.double(), o2.double()], [lse1.double(), lse2.double()])
    return o.to(torch.float32), lse.to(torch.float32)


def _merge_variant(o1, l1, o2, l2, rule):
    if rule == "average":
        return (o1 + o2) / 2
    if rule == "linear":
        return (l1[:, None] * o1 + l2[:, None] * o2) / (l1 + l2)[:, None]
    raise ValueError(rule)


def _planted_merge(rule):
    def merge(o1, lse1, o2, lse2):
        if rule == "average":
            return (o1 + o2) / 2, torch.logaddexp(lse1, lse2)
        if rule == "max_lse":
            m = torch.maximum(lse1, lse2)
            w1, w2 = torch.exp(lse1 - m), torch.exp(lse2 - m)
            w1, w2 = torch.nan_to_num(w1), torch.nan_to_num(w2)
            s = w1 + w2
            return (w1[:, None] * o1 + w2[:, None] * o2) / torch.where(s > 0, s, 1)[:, None], m
        m = torch.maximum(lse1, lse2)
        if rule == "no_max":
            w1, w2 = torch.exp(lse1), torch.exp(lse2)
            return (w1[:, None] * o1 + w2[:, None] * o2) / (w1 + w2)[:, None], torch.log(w1 + w2)
        if rule == "unguarded":
            w1, w2 = torch.exp(lse1 - m), torch.exp(lse2 - m)
            return (w1[:, None] * o1 + w2[:, None] * o2) / (w1 + w2)[:, None], m + torch.log(w1 + w2)
        if rule == "linear":
            return _merge_variant(o1, lse1, o2, lse2, "linear"), torch.logaddexp(lse1, lse2)
        if rule == "reference":
            return torch_impl.merge_partials([o1, o2], [lse1, lse2])
        raise ValueError(rule)

    merge.__name__ = f"merge_{rule}"
    return merge


def _nan_where_empty(case):
    out = case.output
    return isinstance(out, torch.Tensor) and torch.isnan(out).any() and torch.isneginf(case.inputs[1]).any()


MERGE = Task(
    chapter="04", number=3, title="merge two partial attentions by their LSE", kind=FUNCTION,
    reference=task3_reference, make_inputs=task3_inputs,
    sizes=Sizes(sim=[_Parts((4, 5, 5, 400.0)), _Parts((2, 3, 4, 1.0)), _Parts((5, 7, 2, 1.0))],
                hidden=[_Parts((7, 1, 9, 1.0))], gpu=[_Parts((4096, 3000, 5000, 1.0))]),
    rtol=1e-4, atol=1e-5, no_races=False, candidate_name="your merge",
    hints=[
        Hint.matches(lambda o1, l1, o2, l2: _merge_variant(o1, l1, o2, l2, "average"),
                     "Averaging the outputs is wrong: weigh each part by its share of the softmax "
                     "denominator, exp(LSE_p - LSE)"),
        Hint.matches(lambda o1, l1, o2, l2: _merge_variant(o1, l1, o2, l2, "linear"),
                     "The weights are exp(LSE_p - LSE), not LSE_p itself"),
        Hint(lambda case: len(case.outputs) > 1 and isinstance(case.outputs[1], torch.Tensor) and
             torch.equal(case.outputs[1].cpu(), torch.maximum(case.inputs[1], case.inputs[3]).cpu()),
             "The merged LSE is the log-sum-exp of the parts, logaddexp(LSE1, LSE2), not their max"),
        Hint(lambda case: case.size[3] > 1 and isinstance(case.output, torch.Tensor) and
             torch.isnan(case.output[1:-1]).any(),
             "exp(LSE) overflows at large logits: subtract the larger LSE first (m = max(LSE1, LSE2))"),
        Hint(_nan_where_empty, "A row empty in both parts (LSE -inf in each) must give O = 0 and LSE = -inf: "
                               "guard exp(LSE - m) when m = -inf"),
    ],
    solution="merge",
)
MERGE.planted = [
    Planted("outputs averaged", _planted_merge("average"), "averaging the outputs"),
    Planted("weights LSE, not exp", _planted_merge("linear"), "not LSE_p itself"),
    Planted("LSE taken as the max", _planted_merge("max_lse"), "log-sum-exp"),
    Planted("exp without the max", _planted_merge("no_max"), "overflow"),
    Planted("-inf rows unguarded", _planted_merge("unguarded"), "empty in both parts"),
    Planted("the package's merge", _planted_merge("reference"), "reference"),
]
check_task3 = MERGE.checker()


# ------------------------------------------------------------------------ task 4

class _Map(tuple):
    def __str__(self):
        nq, nk, d, topk, negl = self
        return f"Nq = {nq}, Nk = {nk}, d = {d}, topk = {topk:g}, negligible = {negl:g}"


def task4_inputs(size, gen):
    """q [nq, d], k [nk, d] (keys with a large common mean, as real keys have), topk, negligible."""
    nq, nk, d, topk, negl = size
    k = torch.randn(nk, d, generator=gen) + 4.0 * torch.randn(d, generator=gen)
    return torch.randn(nq, d, generator=gen), k, topk, negl


@reference
def task4_reference(q, k, topk, negligible):
    """(labels, scores) of SLA's block map for one head, BLKQ = 4 queries and BLKK = 3 keys per block."""
    labels, scores = torch_impl.sla_block_map(q[None, None], k[None, None], topk, negligible, BLKQ, BLKK)
    return labels[0, 0], scores[0, 0]


def block_map_variant(q, k, topk, negligible, smooth=True, global_topk=False, own_count=True, ceil_count=False,
                      negligible_top=False, swapped=False):
    """Task 4's block map with switchable mistakes (the defaults give the right answer)."""
    bq, bk = (BLKK, BLKQ) if swapped else (BLKQ, BLKK)

    def pool(x, blk):
        nb = math.ceil(x.shape[0] / blk)
        out = torch.stack([x[b * blk:(b + 1) * blk].sum(0) for b in range(nb)])
        counts = torch.tensor([min(blk, x.shape[0] - b * blk) for b in range(nb)], dtype=x.dtype)
        return out / (counts if own_count else torch.full_like(counts, blk))[:, None]

    kk = k - k.mean(0, keepdim=True) if smooth else k
    scores = pool(q.float(), bq) @ pool(kk.float(), bk).T
    nb = scores.shape[1]
    n_crit = min(nb, math.ceil(topk * nb) if ceil_count else int(topk * nb))
    n_negl = int(negligible * nb)
    labels = torch.ones_like(scores)
    if global_topk:
        flat = scores.flatten().argsort(descending=True)
        total = scores.numel()
        labels.view(-1)[flat[:n_crit * scores.shape[0]]] = 2.0
        if n_negl:
            labels.view(-1)[flat[total - n_negl * scores.shape[0]:]] = 0.0
        return labels, scores
    order = scores.argsort(dim=1, descending=True)
    for r in range(scores.shape[0]):
        labels[r, order[r, :n_crit]] = 2.0
        if n_negl:
            labels[r, order[r, :n_negl] if negligible_top else order[r, nb - n_negl:]] = 0.0
    return labels, scores


def _planted_map(**mistake):
    def block_map(q, k, topk, negligible):
        return block_map_variant(q, k, topk, negligible, **mistake)

    block_map.__name__ = "block_map_" + "_".join(mistake)
    return block_map


def _map_hint(say, **mistake):
    def when(case):
        labels, scores = block_map_variant(*case.inputs, **mistake)
        outs = case.outputs
        if len(outs) != 2 or not all(isinstance(o, torch.Tensor) for o in outs) or outs[1].shape != scores.shape:
            return False
        same_scores = torch.allclose(outs[1].cpu(), scores, 1e-4, 1e-4)
        same_labels = torch.equal(outs[0].cpu(), labels)
        right = torch.equal(labels, case.expected[0].cpu()) and torch.allclose(scores, case.expected[1].cpu(), 1e-4, 1e-4)
        return same_scores and same_labels and not right

    return Hint(when, say)


def _verify_map(case):
    """Scores within tolerance; labels equal, except a swap between blocks whose scores tie
    within that tolerance (a different summation order may rank near-equal blocks either way)."""
    (labels, scores), (ref_labels, ref_scores) = case.outputs, case.expected
    for k, (out, ref) in enumerate(((labels, ref_labels), (scores, ref_scores))):
        if not isinstance(out, torch.Tensor):
            return f"output {k} is a {type(out).__name__}, expected a tensor"
        if out.shape != ref.shape:
            return f"output {k}: shape {tuple(out.shape)} but the reference has {tuple(ref.shape)}"
    problem = compare(scores, ref_scores, 1e-4, 1e-4)[0]
    if problem:
        return f"output 1 (scores): {problem}"
    got, want, ref_s = labels.cpu(), ref_labels.cpu(), ref_scores.cpu().double()
    for r, j in (got != want).nonzero().tolist():
        tie = (ref_s[r] - ref_s[r, j]).abs() <= 1e-4 * (1 + ref_s[r, j].abs())
        if not (tie & (want[r] == got[r, j])).any():
            n_wrong = int((got != want).sum())
            return (f"output 0 (labels): {n_wrong} of {got.numel()} labels wrong; first at index ({r}, {j}): "
                    f"got {float(got[r, j]):g}, expected {float(want[r, j]):g}")
    return None


BLOCK_MAP = Task(
    chapter="04", number=4, title="SLA's block map", kind=FUNCTION,
    reference=task4_reference, make_inputs=task4_inputs,
    sizes=Sizes(sim=[_Map((8, 12, 4, 0.25, 0.0)), _Map((10, 17, 8, 0.34, 0.34)), _Map((13, 20, 4, 0.3, 0.15))],
                hidden=[_Map((5, 7, 4, 0.5, 0.0)), _Map((16, 31, 8, 0.2, 0.3))],
                gpu=[_Map((1024, 2048, 64, 0.05, 0.1))]),
    rtol=1e-4, atol=1e-4, no_races=False, candidate_name="your block map", verify=_verify_map,
    hints=[
        _map_hint("No smooth-k: subtract K's mean over the whole sequence before pooling (SLA's "
                  "get_block_map, after SageAttention)", smooth=False),
        _map_hint("That is a global top-k over the whole map: SLA picks the top blocks of each query-block "
                  "row (torch.topk along the key-block axis)", global_topk=True),
        _map_hint("The last, ragged block's mean divides by its own count (n - (nb - 1) * BLK), not BLK",
                  own_count=False),
        _map_hint("The number of critical blocks is min(Nb, int(topk * Nb)), rounded down", ceil_count=True),
        _map_hint("Negligible blocks are the lowest-scoring ones of each row, not the highest", negligible_top=True),
        _map_hint("BLKQ = 4 pools the queries and BLKK = 3 the keys: the two are swapped", swapped=True),
    ],
    solution="block_map",
)
BLOCK_MAP.planted = [
    Planted("no smooth-k", _planted_map(smooth=False), "smooth-k"),
    Planted("global top-k", _planted_map(global_topk=True), "global top-k"),
    Planted("ragged block divided by BLK", _planted_map(own_count=False), "own count"),
    Planted("critical count rounded up", _planted_map(ceil_count=True), "rounded down"),
    Planted("negligible from the top", _planted_map(negligible_top=True), "lowest-scoring"),
    Planted("block sizes swapped", _planted_map(swapped=True), "swapped"),
]
check_task4 = BLOCK_MAP.checker()
