"""The flash kernel against the float64 reference, by FlashAttention's error rule: N = 1,
ragged N, Nq != Nk, both causal alignments, rows that see nothing, huge logits, block-sparse
tables, d up to 128; the online softmax's edge cases as known answers."""
import math

import pytest
import torch

import gpulab  # noqa: F401  (before numba)
from attn_helpers import assert_fa_rule, heads
from gpulab.attention import kernels as K
from gpulab.attention import torch_impl as T


def _check(q, k, v, **kw):
    ours = K.attention(q, k, v, **kw)
    same = T.attention(q, k, v, **kw)
    upcast = T.attention(q, k, v, fp64=True, **kw)
    assert_fa_rule(ours[0], same[0], upcast[0], what="O")
    assert_fa_rule(ours[1], same[1], upcast[1], what="LSE")
    return ours


# (nq, nk, d, causal): one query, ragged lengths past one tile, Nq != Nk both ways
CASES = [(1, 1, 4, None), (1, 9, 8, "bottom_right"), (11, 13, 8, "top_left"),
         (13, 5, 8, "bottom_right"), (6, 17, 16, "bottom_right"), (9, 9, 4, None)]


@pytest.mark.parametrize("nq,nk,d,causal", CASES)
def test_flash_kernel_meets_flashattention_error_rule(nq, nk, d, causal):
    gen = torch.Generator().manual_seed(nq * 100 + nk)
    _check(*heads(1, 2, nq, nk, d, gen), causal=causal)


def test_rows_that_see_nothing_give_zero_and_minus_infinity():
    # bottom-right with Nq > Nk: the first Nq - Nk queries see no key
    gen = torch.Generator().manual_seed(1)
    q, k, v = heads(1, 1, 10, 3, 4, gen)
    o, lse = _check(q, k, v, causal="bottom_right")
    assert torch.all(o[0, 0, :7] == 0) and torch.all(torch.isneginf(lse[0, 0, :7]))
    assert torch.isfinite(lse[0, 0, 7:]).all()
    # top-left aligned, the same shapes give every query key 0 at least
    assert torch.isfinite(K.attention(q, k, v, causal="top_left")[1]).all()


def test_huge_logits_do_not_overflow():
    # logits of about 1e4: exp would overflow float32 without the running max
    gen = torch.Generator().manual_seed(2)
    q, k, v = heads(1, 1, 7, 11, 4, gen, scale=5e3)
    o, lse = _check(q, k, v)
    assert torch.isfinite(o).all() and lse.abs().max() > 1e3


def test_bottom_right_equals_top_left_when_square_and_differs_otherwise():
    gen = torch.Generator().manual_seed(3)
    q, k, v = heads(1, 1, 9, 9, 4, gen)
    assert torch.equal(K.attention(q, k, v, causal="top_left")[0], K.attention(q, k, v, causal="bottom_right")[0])
    q, k, v = heads(1, 1, 5, 12, 4, gen)
    a, b = K.attention(q, k, v, causal="top_left")[0], K.attention(q, k, v, causal="bottom_right")[0]
    assert (a - b).abs().max() > 1e-3


def test_known_answer_two_keys():
    # one query, two equal scores: O is the mean of the values, LSE = log 2
    q, k = torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 2, 1)
    v = torch.tensor([1.0, 3.0]).reshape(1, 1, 2, 1)
    o, lse = K.attention(q.to(gpulab.device), k.to(gpulab.device), v.to(gpulab.device), scale=1.0)
    assert float(o) == pytest.approx(2.0) and float(lse) == pytest.approx(math.log(2.0))


def test_block_sparse_follows_the_key_block_table():
    gen = torch.Generator().manual_seed(4)
    q, k, v = heads(1, 2, 13, 21, 8, gen)
    table = torch.rand(1, 2, 2, 3, generator=gen) > 0.5
    table[0, 0, 0] = False                    # a query block with no key block: zeros, -inf
    table[0, 1, 1] = True
    o, lse = _check(q, k, v, block_mask=table.to(gpulab.device), blk_q=8, blk_k=8)
    assert torch.all(o[0, 0, :8] == 0) and torch.isneginf(lse[0, 0, :8]).all()
    # causal and sparse together: the table and the diagonal both apply
    _check(q, k, v, block_mask=table.to(gpulab.device), blk_q=8, blk_k=8, causal="bottom_right")


def test_head_dim_128():
    gen = torch.Generator().manual_seed(5)
    _check(*heads(1, 1, 3, 6, 128, gen), causal="top_left")


@pytest.mark.skipif(gpulab.ON_GPU, reason="the tracer records only under the simulator")
def test_tiles_above_the_diagonal_are_skipped():
    # the kernel reads no key tile that lies wholly above the causal diagonal: count tile loads
    gen = torch.Generator().manual_seed(6)
    q, k, v = heads(1, 1, 8, 32, 4, gen)      # one query tile of 8 rows, bottom-right: keys 0..31
    with gpulab.trace() as t:
        K.attention(q, k, v, causal="top_left")   # top-left: rows 0..7 see keys 0..7 only
    keys_read = {a.index[1] for a in t.accesses() if a.array == "k" and a.kind == "read"}
    assert keys_read and max(keys_read) < 8, f"keys read past the diagonal: {sorted(keys_read)[-3:]}"


def test_merge_of_partials_is_exact():
    gen = torch.Generator().manual_seed(7)
    q, k, v = heads(1, 2, 5, 19, 8, gen)
    whole = T.attention(q, k, v, fp64=True)
    parts = [K.attention(q, k[:, :, s], v[:, :, s]) for s in (slice(0, 7), slice(7, 19))]
    o, lse = K.merge_partials([p[0] for p in parts], [p[1] for p in parts])
    assert (o.double() - whole[0]).abs().max() < 1e-5 and (lse.double() - whole[1]).abs().max() < 1e-5
    # an empty part (LSE = -inf everywhere) changes nothing; all parts empty gives 0 and -inf
    empty = (torch.zeros_like(o), torch.full_like(lse, -math.inf))
    o2, lse2 = K.merge_partials([o, empty[0]], [lse, empty[1]])
    assert torch.allclose(o2, o) and torch.allclose(lse2, lse)
    o3, lse3 = K.merge_partials([empty[0]] * 2, [empty[1]] * 2)
    assert torch.all(o3 == 0) and torch.isneginf(lse3).all()
    t_o, t_l = T.merge_partials([p[0] for p in parts], [p[1] for p in parts])
    assert (t_o - o).abs().max() < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("causal", [None, "top_left", "bottom_right"])
def test_gpu_full_size_flash_meets_the_error_rule(d, causal):
    gen = torch.Generator().manual_seed(d)
    q, k, v = heads(2, 4, 1000, 1037, d, gen)
    _check(q, k, v, causal=causal)


@pytest.mark.gpu
def test_gpu_block_sparse_at_sla_blocks():
    gen = torch.Generator().manual_seed(11)
    q, k, v = heads(1, 2, 1000, 1000, 128, gen)
    table = torch.rand(1, 2, 8, 16, generator=gen) < 0.1
    _check(q, k, v, block_mask=table.to(gpulab.device), blk_q=128, blk_k=64)
