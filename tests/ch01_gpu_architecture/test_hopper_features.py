"""Hopper's units, each through what reaches it: DPX (CUDA C++ linked into numba; under the
simulator the same packed kernel with the cell emulated, against numpy), distributed shared
memory (cuda.core clusters) and FP8 (torch._scaled_mm); the GPU tests run the real thing."""
import pytest
import torch

import gpulab
from gpulab.arch import dpx, dsmem, fp8
from gpulab.arch.chase import is_one_cycle


def test_smith_waterman_reference_known_answers():
    # identical sequences of length 5: 5 matches = 10; one mismatch in the middle: 2+2-1+2+2 = 7
    seq = torch.tensor([[0, 1, 2, 3, 0]], dtype=torch.int8)
    assert dpx.smith_waterman_reference(seq, seq).tolist() == [10]
    other = torch.tensor([[0, 1, 3, 3, 0]], dtype=torch.int8)
    assert dpx.smith_waterman_reference(seq, other).tolist() == [7]
    # a gap: ACGT vs AC-GT style (target has an extra symbol): 4 matches - gap 2 = 6 > the best ungapped 4
    assert dpx.smith_waterman_reference(torch.tensor([[0, 1, 2, 3]], dtype=torch.int8),
                                        torch.tensor([[0, 1, 0, 2, 3]], dtype=torch.int8)).tolist() == [6]


@pytest.mark.parametrize("method", ["scalar", "dpx"])
def test_kernels_match_numpy(method):
    gen = torch.Generator().manual_seed(11)
    q, t = dpx.random_pairs(5, 7, 9, gen)                 # 5 pairs: the packed kernel's odd last pair
    scores = dpx.score_pairs(q.to(gpulab.device), t.to(gpulab.device), method)
    assert torch.equal(scores.cpu(), dpx.smith_waterman_reference(q, t))


def test_packing_and_the_emulated_cell():
    assert dpx.unpack2(dpx.pack2(-3, 700)) == (-3, 700)
    # lane 0: max(5 + 2, 4 - 2, 9 - 2, 0) = 7; lane 1: max(0 - 1, 1 - 2, 0 - 2, 0) = 0 (the relu)
    cell = dpx.cell_emulated(dpx.pack2(5, 0), dpx.pack2(4, 1), dpx.pack2(9, 0), dpx.pack2(2, -1), dpx.pack2(2, 2))
    assert dpx.unpack2(cell) == (7, 0)


def test_dpx_errors():
    q = torch.zeros(2, 4, dtype=torch.int8)
    with pytest.raises(ValueError, match="same pairs"):
        dpx.score_pairs(q, torch.zeros(3, 4, dtype=torch.int8))
    with pytest.raises(TypeError, match="int8"):
        dpx.score_pairs(q.int(), q.int())
    with pytest.raises(ValueError, match="MAX_TARGET"):
        dpx.score_pairs(q, torch.zeros(2, dpx.MAX_TARGET + 1, dtype=torch.int8))
    with pytest.raises(ValueError, match="method"):
        dpx.score_pairs(q, q, "avx")


def test_dsmem_chain_and_source():
    chain = dsmem.shared_chain(64, torch.Generator().manual_seed(2))
    assert is_one_cycle(chain) and dsmem.follow(chain, 64) == 0
    for ptx in ("mapa.u64", "ld.u32", "barrier.cluster", "%cluster_ctarank"):
        assert ptx in dsmem.SOURCE
    with pytest.raises(ValueError, match="words"):
        dsmem.shared_chain(1)
    if not gpulab.ON_GPU:
        with pytest.raises(RuntimeError, match="Hopper"):
            dsmem.measure()


def test_fp8_quantization_and_reference():
    gen = torch.Generator().manual_seed(4)
    a, b = torch.randn(32, 64, generator=gen), torch.randn(16, 64, generator=gen)
    a8, sa = fp8.quantize_e4m3(a)
    assert a8.dtype == torch.float8_e4m3fn and a8.float().abs().max() == fp8.E4M3_MAX == 448.0
    b8, sb = fp8.quantize_e4m3(b)
    err = fp8.relative_error(fp8.reference_matmul(a8, sa, b8, sb), a.double() @ b.double().T)
    assert 1e-3 < err < 0.08            # 3 mantissa bits: a few percent, not exact, not garbage
    with pytest.raises(ValueError, match="multiples of 16"):
        fp8.fp8_matmul(torch.randn(30, 64), b)
    with pytest.raises(TypeError, match="floating"):
        fp8.quantize_e4m3(torch.ones(3, dtype=torch.int32))


# ------------------------------------------------------------------ on the H200


@pytest.mark.gpu
def test_gpu_dpx_kernels_match_numpy_at_full_length():
    gen = torch.Generator().manual_seed(0)
    q, t = dpx.random_pairs(1001, 128, 256, gen)
    ref = dpx.smith_waterman_reference(q[:64], t[:64])
    for method in ("scalar", "dpx", "plain"):
        scores = dpx.score_pairs(q.cuda(), t.cuda(), method)
        assert torch.equal(scores[:64].cpu(), ref), method
    assert torch.equal(dpx.score_pairs(q.cuda(), t.cuda(), "dpx"), dpx.score_pairs(q.cuda(), t.cuda(), "scalar"))


@pytest.mark.gpu
def test_gpu_dsmem_remote_is_slower_than_local():
    local, remote = dsmem.measure("local"), dsmem.measure("remote")
    assert 10 < local.cycles_per_load < remote.cycles_per_load < 1000, (local, remote)


@pytest.mark.gpu
def test_gpu_fp8_matches_the_reference():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(256, 512, generator=gen), torch.randn(128, 512, generator=gen)
    out = fp8.fp8_matmul(a.cuda(), b.cuda(), out_dtype=torch.float32)
    a8, sa = fp8.quantize_e4m3(a)
    b8, sb = fp8.quantize_e4m3(b)
    assert fp8.relative_error(out, fp8.reference_matmul(a8, sa, b8, sb)) < 1e-5
