"""Bad input to chapter 04's entry points gets an error that says what is wrong."""
import pytest
import torch

import gpulab  # noqa: F401
from gpulab.attention import cooperative, sla
from gpulab.attention import kernels as K
from gpulab.attention import torch_impl as T

GOOD = torch.zeros(1, 1, 4, 8)


@pytest.mark.parametrize("impl", [T, K])
@pytest.mark.parametrize("args,kwargs,words", [
    ((torch.zeros(4, 8), GOOD, GOOD), {}, "[B, H, N, d]"),
    ((GOOD, torch.zeros(1, 1, 4, 8), torch.zeros(1, 1, 5, 8)), {}, "same shape"),
    ((GOOD, torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8)), {}, "share B, H and d"),
    ((GOOD.int(), GOOD, GOOD), {}, "floating"),
    ((GOOD, GOOD, GOOD), {"causal": "lower"}, "causal must be one of"),
    ((GOOD, GOOD, GOOD), {"block_mask": torch.ones(1, 1, 2, 2), "blk_q": 4, "blk_k": 4}, "block_mask must be"),
])
def test_attention_refuses_bad_input(impl, args, kwargs, words):
    with pytest.raises((TypeError, ValueError), match=None) as info:
        impl.attention(*args, **kwargs)
    assert words in str(info.value)


def test_kernels_refuse_a_head_dim_over_128():
    x = torch.zeros(1, 1, 2, 130)
    with pytest.raises(ValueError, match="larger than the kernels support"):
        K.attention(x, x, x)


@pytest.mark.parametrize("impl", [T, K])
def test_linear_attention_refuses_bad_feature_and_causal_lengths(impl):
    with pytest.raises(ValueError, match="feature must be one of"):
        impl.linear_attention(GOOD, GOOD, GOOD, feature="tanh")
    with pytest.raises(ValueError, match="Nq == Nk"):
        impl.linear_attention(GOOD, torch.zeros(1, 1, 5, 8), torch.zeros(1, 1, 5, 8), causal=True)


def test_block_map_and_layer_refuse_bad_ratios():
    with pytest.raises(ValueError, match="topk"):
        T.sla_block_map(GOOD, GOOD, topk=0.8, negligible=0.5, blk_q=2, blk_k=2)
    with pytest.raises(ValueError, match="backend"):
        sla.SparseLinearAttention(8, backend="triton")
    with pytest.raises(ValueError, match="gpu_cap_bytes"):
        cooperative.cooperative_attention(GOOD, GOOD, GOOD, gpu_cap_bytes=-1)
    with pytest.raises(ValueError, match="one LSE per output"):
        K.merge_partials([GOOD], [])
