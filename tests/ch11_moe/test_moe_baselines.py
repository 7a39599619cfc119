"""The fair torch baselines (gpulab.moe.baselines) equal the specification's layer, and on a
GPU the sorted one waits for the device once per layer while the specification's loop waits
once per expert."""
import warnings

import pytest
import torch

import gpulab
from gpulab.moe import baselines as B
from gpulab.moe import torch_impl as R

DEV = gpulab.device


def _layer(T, E, k, H, F, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, H, generator=g)
    w1 = torch.randn(E, H, F, generator=g) / H**0.5
    w2 = torch.randn(E, F, H, generator=g) / F**0.5
    r = R.route(torch.randn(T, E, generator=g), k)
    return [t.to(DEV) for t in (x, w1, w2, r.topk_idx, r.topk_weight)]


# T not a multiple of anything; an expert left empty at T=1; top-3 of 7
SIZES = [(13, 5, 2, 8, 12), (1, 3, 1, 4, 4), (41, 7, 3, 8, 16)]
GROUPED_MM_PROBLEM = B.grouped_mm_problem(DEV)


@pytest.mark.parametrize("layer", [B.moe_ffn_sorted, B.moe_ffn_grouped_mm], ids=lambda f: f.__name__)
@pytest.mark.parametrize("size", SIZES)
def test_baselines_equal_the_specification(layer, size):
    if layer is B.moe_ffn_grouped_mm and GROUPED_MM_PROBLEM:
        pytest.skip(GROUPED_MM_PROBLEM)
    args = _layer(*size, seed=sum(size))
    want = R.moe_ffn(*args).double()
    torch.testing.assert_close(layer(*args).double(), want, rtol=1e-5, atol=1e-5)


def test_sort_by_expert_gives_grouped_rows_and_end_offsets():
    idx = torch.tensor([[1, 0], [1, 2], [3, 1]])
    order, ends = B.sort_by_expert(idx, 5)
    assert order.tolist() == [1, 0, 2, 5, 3, 4]          # expert 0: a=1; 1: a=0, 2, 5; 2: a=3; 3: a=4
    assert ends.tolist() == [1, 4, 5, 6, 6] and ends.dtype == torch.int32


def test_grouped_mm_baseline_names_the_alignment_it_needs():
    if not B.HAS_GROUPED_MM:
        pytest.skip("this torch has no torch._grouped_mm")
    with pytest.raises(ValueError, match="multiple of 16 bytes"):
        B.moe_ffn_grouped_mm(*_layer(5, 3, 2, 6, 8, seed=1))


def _syncs(fn, *args):
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn(*args)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.gpu
def test_gpu_sorted_baseline_syncs_once_the_loop_once_per_expert():
    args = _layer(4099, 16, 2, 64, 128, seed=7)
    assert _syncs(B.moe_ffn_sorted, *args) == 1
    assert _syncs(R.moe_ffn.__wrapped__, *args) >= 16
