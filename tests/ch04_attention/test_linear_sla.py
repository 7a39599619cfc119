"""Linear attention (three feature maps, causal by chunked prefix sums), SLA's block map and
fused kernel against the torch specification, the cooperative split past a GPU memory cap,
and the fine-tuning demo."""
import pytest
import torch

import gpulab  # noqa: F401  (before numba)
from attn_helpers import heads, max_err
from gpulab.attention import cooperative, sla
from gpulab.attention import kernels as K
from gpulab.attention import torch_impl as T


@pytest.mark.parametrize("feature", T.FEATURES)
@pytest.mark.parametrize("causal", [False, True])
def test_linear_attention_twins_agree(feature, causal):
    gen = torch.Generator().manual_seed(len(feature) + causal)
    q, k, v = heads(1, 2, 11, 11, 8, gen)
    ref = T.linear_attention(q, k, v, feature, causal, chunk=4, fp64=True)
    assert max_err(K.linear_attention(q, k, v, feature, causal, chunk=4), ref) < 1e-5


def test_causal_linear_attention_is_the_masked_quadratic_form():
    # known answer: O_i = sum_{j<=i} (phi_i . phi_j) v_j / (sum_{j<=i} phi_i . phi_j + 1e-5)
    gen = torch.Generator().manual_seed(3)
    q, k, v = (x.double() for x in heads(1, 1, 9, 9, 4, gen))
    fq, fk = T.feature_map(q), T.feature_map(k)
    w = (fq @ fk.transpose(-1, -2)).tril()
    direct = (w @ v) / (w.sum(-1, keepdim=True) + T.LINEAR_EPS)
    for chunk in (1, 4, 64):   # the chunking must not change the answer
        assert max_err(T.linear_attention(q, k, v, causal=True, chunk=chunk, fp64=True), direct) < 1e-12


def test_sla_block_map_known_answer():
    # one head, d = 1: q blocks mean 1 and -1; k block means (smooth-k subtracts the mean 2)
    q = torch.tensor([1.0, 1.0, -1.0]).reshape(1, 1, 3, 1)
    k = torch.tensor([0.0, 0.0, 2.0, 2.0, 6.0]).reshape(1, 1, 5, 1)   # block means 0, 2, 6
    labels, scores = T.sla_block_map(q, k, topk=1 / 3, negligible=1 / 3, blk_q=2, blk_k=2)
    assert torch.allclose(scores[0, 0], torch.tensor([[-2.0, 0.0, 4.0], [2.0, 0.0, -4.0]]))
    assert labels[0, 0].tolist() == [[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]]


def test_sla_fused_kernel_matches_the_specification():
    gen = torch.Generator().manual_seed(4)
    q, k, v = heads(1, 2, 13, 21, 8, gen)
    labels, _ = T.sla_block_map(q, k, topk=0.34, negligible=0.34, blk_q=8, blk_k=8)
    labels[0, 1, 0] = torch.tensor([2.0, 2.0, 0.0])     # a row with no marginal block: O_l = 0
    ours = K.sla_attention(q, k, v, labels, "softmax", 8, 8)
    ref = T.sla_attention(q, k, v, labels, "softmax", 8, 8, fp64=True)
    for name, a, b in zip(("O_s", "O_l", "LSE"), ours, ref):
        assert max_err(a, b) < 2e-5, name
    assert torch.all(ours[1][0, 1, :8] == 0)


def test_cooperative_split_past_the_gpu_cap_is_exact():
    gen = torch.Generator().manual_seed(5)
    q, k, v = heads(1, 2, 9, 21, 8, gen)
    ref = T.attention(q, k, v, fp64=True)
    cap = 2 * 1 * 2 * 8 * 4 * 6                        # K and V of 6 keys, float32
    o, lse, split = cooperative.cooperative_attention(q, k, v, gpu_cap_bytes=cap)
    assert (split.gpu_keys, split.cpu_keys) == (6, 15)
    assert max_err(o, ref[0]) < 1e-5 and max_err(lse, ref[1]) < 1e-5
    o, _, split = cooperative.cooperative_attention(q, k, v, gpu_cap_bytes=0)   # everything on the host
    assert split.gpu_keys == 0 and max_err(o, ref[0]) < 1e-5


def test_sla_layer_starts_as_sparse_attention_and_finetuning_helps():
    gen = torch.Generator().manual_seed(6)
    q, k, v = heads(1, 1, 16, 16, 8, gen)
    layer = sla.SparseLinearAttention(8, topk=0.5, blk_q=8, blk_k=8)
    labels, _ = T.sla_block_map(q, k, 0.5, 0.0, 8, 8)
    o_s, _, _ = T.sla_attention(q, k, v, labels, "softmax", 8, 8)
    assert torch.equal(layer(q, k, v).detach(), o_s)              # proj is zero-initialised
    losses = sla.finetune_demo(steps=12)
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.gpu
def test_gpu_sla_at_the_papers_blocks():
    gen = torch.Generator().manual_seed(7)
    q, k, v = heads(1, 2, 1100, 1100, 128, gen)
    labels, _ = T.sla_block_map(q, k, topk=0.05, negligible=0.1, blk_q=128, blk_k=64)
    ours = K.sla_attention(q, k, v, labels, "softmax", 128, 64)
    ref = T.sla_attention(q, k, v, labels, "softmax", 128, 64, fp64=True)
    for name, a, b in zip(("O_s", "O_l", "LSE"), ours, ref):
        assert max_err(a, b) < 1e-3, name


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_linear_attention_full_size(causal):
    gen = torch.Generator().manual_seed(8)
    q, k, v = heads(2, 4, 2048, 2048, 64, gen)
    ref = T.linear_attention(q, k, v, "elu", causal, fp64=True)
    assert max_err(K.linear_attention(q, k, v, "elu", causal), ref) < 1e-3


@pytest.mark.gpu
def test_gpu_cooperative_split():
    gen = torch.Generator().manual_seed(9)
    q, k, v = heads(1, 4, 512, 8192, 64, gen)
    cap = 2 * 4 * 3000 * 64 * 4                        # K and V of 3000 keys
    o, lse, split = cooperative.cooperative_attention(q, k.cpu(), v.cpu(), gpu_cap_bytes=cap)
    ref = T.attention(q, k, v, fp64=True)
    assert split.pinned and split.gpu_keys == 3000
    assert max_err(o, ref[0]) < 1e-4 and max_err(lse, ref[1]) < 1e-4
