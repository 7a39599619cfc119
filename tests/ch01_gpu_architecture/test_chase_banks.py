"""The chase visits every element of one cycle; known bank-conflict patterns counted by hand
and by the tracer; the intrinsics' simulator stand-ins; the sweep kernels' results; and on a
GPU the chase's latency staircase and the kernels at full size."""
import math

import pytest
import torch

import gpulab
from gpulab.arch import banks, chase, intrinsics, sweeps


def test_sattolo_and_random_cycle_are_one_cycle():
    gen = torch.Generator().manual_seed(7)
    for n in (1, 2, 3, 17, 100):
        assert chase.is_one_cycle(chase.sattolo(n, gen)) and chase.is_one_cycle(chase.random_cycle(n, gen))
    # a random permutation of 100 elements has several cycles (about ln 100) for this seed
    several = torch.randperm(100, generator=torch.Generator().manual_seed(0))
    assert len(chase.cycle_lengths(several)) > 1 and not chase.is_one_cycle(several)
    with pytest.raises(ValueError, match="not a permutation"):
        chase.cycle_lengths(torch.tensor([0, 0, 1]))


def test_chase_kernel_visits_every_line_once():
    lines = 13                                        # not a multiple of anything
    array = chase.chase_array(lines * 128, generator=torch.Generator().manual_seed(3))
    stride = 128 // array.element_size()
    path = torch.full((lines,), -1, dtype=torch.int32, device=gpulab.device)
    clocks = torch.zeros(lines, dtype=torch.int64, device=gpulab.device)
    chase.chase_path_kernel[1, 1](array, path, clocks)
    visited = path.cpu().tolist()
    clocks = clocks.cpu()
    assert sorted(visited) == [k * stride for k in range(lines)]     # every line, once, at its start
    assert visited[-1] == 0                                           # and back to the start
    assert chase.follow(array, 0, 5) == visited[4]
    if gpulab.SIMULATOR:
        assert clocks.tolist() == [0] * lines                         # the simulator counts no cycles
    else:
        assert min(clocks.tolist()) > 0


def test_chase_measures_nothing_under_the_simulator_and_says_so():
    gen = torch.Generator().manual_seed(5)
    r = chase.chase(9 * 128, steps=7, warmup=4, generator=gen)       # chase() checks its end on the host
    array = chase.chase_array(9 * 128, generator=torch.Generator().manual_seed(5))
    assert r.last_index == chase.follow(array, 0, 11) and r.steps == 7
    if gpulab.SIMULATOR:
        assert r.cycles_per_load == 0 and not r.counts_cycles and "no cycles" in r.note


def test_chase_array_errors():
    with pytest.raises(ValueError, match="multiple of line_bytes"):
        chase.chase_array(1000)
    with pytest.raises(ValueError, match="line_bytes"):
        chase.chase_array(1024, line_bytes=6)
    with pytest.raises(ValueError, match="'l1'"):
        chase.chase(1024, level="l3")
    with pytest.raises(ValueError, match="n >= 1"):
        chase.sattolo(0)


def test_intrinsic_stand_ins():
    if gpulab.ON_GPU:
        pytest.skip("on a GPU they read the registers (test_gpu_intrinsics_count)")
    assert intrinsics.clock64() == 0 and intrinsics.smid() == 0 and not intrinsics.COUNTS_CYCLES
    assert "no cycles" in intrinsics.cycles_note()


@pytest.mark.parametrize("stride, ways", [(1, 1), (2, 2), (3, 1), (4, 4), (8, 8), (16, 16), (32, 32), (33, 1)])
def test_known_conflict_patterns(stride, ways):
    assert int(banks.conflict_ways(banks.stride_addresses(stride))[0]) == ways == math.gcd(stride, 32)


def test_broadcast_and_eight_byte_words():
    same_word = torch.zeros(1, 32, dtype=torch.int64)                  # all lanes read word 0
    assert banks.conflict_ways(same_word).tolist() == [1]
    two_words_one_bank = torch.tensor([[0] * 16 + [128] * 16])          # words 0 and 32: bank 0
    assert banks.conflict_ways(two_words_one_bank).tolist() == [2]
    assert banks.conflict_ways(banks.stride_addresses(1, 8), 8).tolist() == [2]   # 64 words, 32 banks
    assert banks.conflict_ways(torch.full((1, 32), -1)).tolist() == [0]             # no lane active
    with pytest.raises(ValueError, match="lanes"):
        banks.conflict_ways(torch.zeros(1, 33, dtype=torch.int64))


def test_tracer_counts_what_the_formula_says():
    if not gpulab.SIMULATOR:
        pytest.skip("the tracer watches simulated kernels")
    strides = [1, 2, 7, 16, 32, 33]
    assert banks.traced_sweep(strides) == {s: math.gcd(s, 32) for s in strides}
    assert banks.traced_sweep([1, 2]) == {1: 1, 2: 2}
    assert banks.traced_sweep([1, 16], itemsize=8) == {s: banks.expected_ways(s, 8) for s in (1, 16)}


def test_sweep_kernels_compute_what_they_say():
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(37, generator=gen) * 0.5).to(gpulab.device)
    out = torch.zeros(37, device=gpulab.device)
    cycles = torch.zeros(1, dtype=torch.int64, device=gpulab.device)
    sweeps.ffma_kernel(3)[1, 37](x, 4, out, cycles)
    torch.testing.assert_close(out.double().cpu(), sweeps.ffma_reference(x, 4, 3), rtol=1e-5, atol=1e-5)
    src = torch.arange(100, dtype=torch.float32, device=gpulab.device)
    dst = torch.zeros(11, device=gpulab.device)
    sweeps.strided_copy_kernel[1, 16](src, dst, 3, 2)
    assert dst.cpu().tolist() == [2.0 + 3 * i for i in range(11)]
    with pytest.raises(ValueError, match="ilp"):
        sweeps.ffma_kernel(9)


# ------------------------------------------------------------------ on the H200


@pytest.mark.gpu
def test_gpu_intrinsics_count():
    from numba import cuda

    @gpulab.kernel
    def read(out):
        c0 = intrinsics.clock64()
        t0 = intrinsics.globaltimer()
        acc = 0
        for k in range(1000):
            acc += k * cuda.threadIdx.x
        out[0] = intrinsics.clock64() - c0
        out[1] = intrinsics.globaltimer() - t0
        out[2] = intrinsics.smid()
        out[3] = acc
    out = torch.zeros(4, dtype=torch.int64, device="cuda")
    read[1, 1](out)
    cyc, ns, sm, _ = out.tolist()
    assert cyc > 0 and ns >= 0 and 0 <= sm < torch.cuda.get_device_properties(0).multi_processor_count


@pytest.mark.gpu
def test_gpu_latency_staircase():
    """L1 hits are faster than L2 hits, which are faster than HBM (the staircase's order)."""
    l1 = chase.chase(16 * 1024, "l1").cycles_per_load
    l2 = chase.chase(4 * 1024 * 1024, "l2").cycles_per_load
    hbm = chase.chase(1 << 30, "l2", steps=2048, warmup=0).cycles_per_load
    assert 10 < l1 < l2 < hbm < 3000, (l1, l2, hbm)


@pytest.mark.gpu
def test_gpu_copy_and_ffma_full_size():
    n = 1 << 26
    src = torch.randn(n, device="cuda")
    dst = torch.empty_like(src)
    sweeps.copy_kernel[132 * 8, 256](src, dst)
    assert torch.equal(src, dst)
    x = torch.rand(1024, device="cuda") * 0.5
    out = torch.zeros(1024, device="cuda")
    cycles = torch.zeros(1, dtype=torch.int64, device="cuda")
    for ilp in range(1, 9):
        sweeps.ffma_kernel(ilp)[1, 1024](x, 64, out, cycles)
        torch.testing.assert_close(out.double().cpu(), sweeps.ffma_reference(x, 64, ilp), rtol=1e-4, atol=1e-4)
        assert cycles.item() > 0
