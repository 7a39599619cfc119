"""Chapter 04's graded tasks accept right answers and their inputs probe every planted
mistake (a constant the inputs never probe is a planted answer that passes)."""
import math

import torch

import gpulab  # noqa: F401
from gpulab.course.checks import ch04_attention as checks


def _right_merge(o1, lse1, o2, lse2):
    m = torch.maximum(lse1, lse2)
    safe = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    w1, w2 = torch.exp(lse1 - safe), torch.exp(lse2 - safe)
    total = w1 + w2
    o = (w1[:, None] * o1 + w2[:, None] * o2) / torch.where(total > 0, total, 1)[:, None]
    return o, safe + torch.log(total)


def test_right_answers_pass():
    checks.check_task1(checks._make_online(None), hidden=True)
    checks.check_task2(checks._make_mask(None), hidden=True)
    checks.check_task3(_right_merge, hidden=True)
    checks.check_task4(lambda q, k, topk, negl: checks.block_map_variant(q, k, topk, negl), hidden=True)


def test_task1_inputs_have_ragged_tiles_and_growing_huge_logits():
    sizes = checks.ONLINE.sizes.sim
    assert any(s[1] % checks.TILE for s in sizes) and any(s[1] < checks.TILE for s in sizes)
    huge = [s for s in sizes if s[3] > 1][0]
    q, k, _, scale = checks.task1_inputs(huge, torch.Generator().manual_seed(0))
    logits = (q @ k.T) * scale
    first_tile_max, last = logits[:, :checks.TILE].max(), logits[:, -1].min()
    assert last > 5e3 and last - first_tile_max > 1000   # exp of the gap overflows float32


def test_task2_sizes_have_nq_differ_from_nk_both_ways():
    sizes = checks.BOTTOM_RIGHT.sizes.sim
    assert any(a < b for a, b in sizes) and any(a > b for a, b in sizes) and any(a == b for a, b in sizes)


def test_task3_inputs_hold_empty_rows_and_large_lse():
    o1, l1, o2, l2 = checks.task3_inputs(checks.MERGE.sizes.sim[0], torch.Generator().manual_seed(1))
    assert torch.isneginf(l1[0]) and torch.isneginf(l2[0]) and torch.isneginf(l2[-1])
    assert l1[1:].abs().max() > 100       # exp(LSE) overflows float32 without the max


def test_task4_every_mistake_changes_the_answer():
    gen = torch.Generator().manual_seed(2)
    for size in checks.BLOCK_MAP.sizes.sim[1:]:
        q, k, topk, negl = checks.task4_inputs(size, gen)
        right = checks.block_map_variant(q, k, topk, negl)
        ref = checks.task4_reference.__wrapped__(q, k, topk, negl)
        assert torch.equal(right[0], ref[0]) and torch.allclose(right[1], ref[1], 1e-5, 1e-5)
        for mistake in ("smooth", "global_topk", "own_count", "ceil_count", "negligible_top", "swapped"):
            flag = mistake not in ("smooth", "own_count")
            wrong = checks.block_map_variant(q, k, topk, negl, **{mistake: flag})
            assert wrong[1].shape != ref[1].shape or not (torch.equal(wrong[0], ref[0])
                                                          and torch.allclose(wrong[1], ref[1])), mistake
    assert math.isclose(checks.BLKQ / checks.BLKK, 4 / 3)
