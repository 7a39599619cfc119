"""The occupancy calculator on hand-worked cases (H200 limits), its errors, and on a GPU
against the driver's cuOccupancyMaxActiveBlocksPerMultiprocessor."""
import pytest

import gpulab
from gpulab.arch import occupancy as occ


@pytest.mark.parametrize("threads, regs, shared, blocks, limited_by", [
    (256, 32, 0, 8, "warps"),             # 8 warps a block, 64 slots
    (256, 64, 0, 4, "registers"),         # 2048 registers a warp: 8 warps per sub-partition
    (256, 33, 0, 6, "registers"),         # 33*32 = 1056 -> 1280 registers a warp: 12 per sub-partition
    (32, 16, 0, 32, "blocks"),            # one warp a block: the 32-block limit binds
    (96, 40, 20_000, 11, "shared memory"),  # 20000 + 1024 reserve -> 21120 B; 233472 // 21120
    (128, 32, 48 * 1024, 4, "shared memory"),  # 49152 + 1024 = 50176 B a block: 4 in 228 KiB
    (1000, 65, 0, 0, "none fit (registers)"),  # 32 warps x 2304 registers > 64K a block
])
def test_hand_worked_cases(threads, regs, shared, blocks, limited_by):
    result = occ.occupancy(threads, regs, shared)
    assert (result.blocks_per_sm, result.limited_by) == (blocks, limited_by), str(result)
    assert result.warps_per_sm == blocks * -(-threads // 32)
    assert result.fraction == pytest.approx(result.warps_per_sm / 64)


def test_register_granularity_and_reserve_matter():
    assert occ.registers_per_warp(33) == 1280 and occ.registers_per_warp(32) == 1024
    # without the 1 KiB reserve, 57 KiB blocks would fit 4 to 228 KiB; with it, 3
    assert occ.occupancy(64, 16, 57 * 1024).blocks_per_sm == 3


def test_carveout_steps():
    assert occ.carveout_bytes(1) == 228 * 1024                       # no preference: the largest
    assert occ.carveout_bytes(20_000, preference_percent=0) == 32 * 1024   # the smallest step that holds it
    assert occ.carveout_bytes(0, preference_percent=50) == 132 * 1024     # 114 KiB wanted -> 132
    # a carve-out of 32 KiB holds one 21120-byte block
    assert occ.occupancy(96, 40, 20_000, carveout_percent=0).blocks_per_sm == 1


def test_more_than_48k_needs_opt_in():
    assert occ.occupancy(128, 32, 100 * 1024, opted_in=False).blocks_per_sm == 0
    assert occ.occupancy(128, 32, 100 * 1024).blocks_per_sm == 2


@pytest.mark.parametrize("args, error, words", [
    ((0, 32, 0), ValueError, "threads_per_block"),
    ((2048, 32, 0), ValueError, "1..1024"),
    ((128, 256, 0), ValueError, "registers_per_thread"),
    ((128, 32, -1), ValueError, ">= 0"),
    ((128.0, 32, 0), TypeError, "int"),
])
def test_bad_input_is_refused(args, error, words):
    with pytest.raises(error, match=words):
        occ.occupancy(*args)


def test_limits_of_needs_a_gpu():
    if gpulab.ON_GPU:
        pytest.skip("on a GPU limits_of reads the driver (test_gpu_occupancy_matches_the_driver)")
    with pytest.raises(RuntimeError, match="needs a GPU"):
        occ.limits_of()


@pytest.mark.gpu
def test_gpu_occupancy_matches_the_driver():
    """The calculator against cuOccupancyMaxActiveBlocksPerMultiprocessor for kernels of
    different register counts (max_registers), block sizes and dynamic shared memory."""
    from numba import types

    limits = occ.limits_of()
    assert limits.max_warps_per_sm == 64 and limits.shared_reserved_per_block == 1024

    sig = (types.float32[::1], types.float32[::1])
    checked = 0
    for max_regs in (37, 64, 100, 255):   # 37 and 100: not multiples of 8
        k = gpulab.kernel(occ.occupancy_probe, max_registers=max_regs)
        regs, static_shared = occ.kernel_resources(k, sig)
        for threads in (32, 96, 128, 256, 640, 1024):
            for dyn in (0, 4096, 20_000, 40_000):
                ours = occ.occupancy(threads, regs, static_shared + dyn, limits=limits)
                driver = occ.driver_occupancy(k, sig, threads, dyn)
                assert ours.blocks_per_sm == driver, (max_regs, regs, threads, dyn, str(ours), driver)
                checked += 1
    assert checked == 96
