"""Chapter 06's assignment checks (gpulab.course.checks.ch06_gaussian_splatting): the inputs
probe every constant and tell every classic mistake apart, and the checks refuse what is
not the learner's own kernel. The planted wrong answers of the three tasks, and the
solution notebook's kernels, run in tests/course/test_planted.py."""
import pytest
import torch

import gpulab  # noqa: F401,I001  (before numba: it picks GPU or simulator)
from gpulab.course.checks import ch06_gaussian_splatting as C
from gpulab.course.feedback import TaskFailed
from gpulab.splat import torch_impl as T


def _differs(a, b, atol) -> bool:
    a, b = a.double().cpu(), b.double().cpu()
    both_nan = torch.isnan(a) & torch.isnan(b)
    return bool(((a - b).abs() > atol)[~both_nan].any() | (torch.isnan(a) ^ torch.isnan(b)).any())


def test_launch_rules_use_two_block_sizes_at_the_simulator_sizes():
    assert {C.conic_block(n) for n in C.CONICS.sizes.sim} == {32, 64}
    assert {C.ranges_block(n) for n in C.RANGES.sizes.sim} == {32, 64}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_task1_inputs_probe_the_low_pass_floor_and_clamp(seed):
    gen = torch.Generator().manual_seed(seed)
    inputs = C.task1_inputs(45, gen)
    means, cov, _, _, _, lim_x, lim_y = inputs
    assert means.shape == (45, 3) and cov.shape == (45, 3, 3)
    assert torch.count_nonzero(cov[0]) == 0, "the first covariance is flat (det 0 without the low-pass)"
    outside = ((means[:, 0] / means[:, 2]).abs() > lim_x) | ((means[:, 1] / means[:, 2]).abs() > lim_y)
    assert outside.any() and not outside.all(), "some means are outside the clamp, some inside"
    conic, radius = C.reference_conics(*inputs)
    right_conic, right_radius = C.projection_variant(*inputs)
    torch.testing.assert_close(right_conic, conic, rtol=1e-5, atol=1e-6)
    assert torch.equal(right_radius, radius.float())
    mistakes = [dict(low_pass=0.0), dict(clamp=False), dict(use_view_rot=False), dict(use_fy=False),
                dict(off_diagonal_sign=1.0), dict(ceil=False), dict(eigen_floor=0.0)]
    for mistake in mistakes:
        wrong_conic, wrong_radius = C.projection_variant(*inputs, **mistake)
        assert _differs(wrong_conic, conic, 1e-3) or _differs(wrong_radius, radius, 0.5), mistake


def test_task1_size_one_is_the_flat_gaussian():
    inputs = C.task1_inputs(1, torch.Generator().manual_seed(5))
    conic, _ = C.projection_variant(*inputs, low_pass=0.0)
    assert torch.isnan(conic).all(), "without the low-pass the only Gaussian divides 0 by 0"


@pytest.mark.parametrize("n", [1, 2, 65, 300])
def test_ranges_variants(n):
    keys, n_tiles = C.task2_inputs(n, torch.Generator().manual_seed(n))
    expected = C.reference_ranges(keys, n_tiles)
    assert torch.equal(C.ranges_variant(keys, n_tiles).to(expected.dtype), expected.cpu())
    assert not torch.equal(C.ranges_variant(keys, n_tiles, close_last=False), expected.cpu())
    if n >= 2:
        for mistake in (dict(end_shift=-1), dict(end_shift=1), dict(start_shift=1)):
            assert not torch.equal(C.ranges_variant(keys, n_tiles, **mistake), expected.cpu()), mistake


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_task3_scenes_separate_every_mistake(seed):
    gen = torch.Generator().manual_seed(seed)
    for height, width in C.COMPOSITE.sizes.sim:
        inputs = (*C.task3_scene(height, width, gen), height, width)
        ref_img, ref_t = C.reference_composite(*inputs)
        img, t = C.composite_variant(*inputs)
        torch.testing.assert_close(img, ref_img, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(t, ref_t, atol=1e-7, rtol=1e-5)
        for name, flags in C.VARIANTS.items():
            v_img, v_t = C.composite_variant(*inputs, **flags)
            assert (v_img - ref_img).abs().max() > 1e-4 or (v_t - ref_t).abs().max() > 1e-5, \
                f"{height}x{width}: {name}"


def test_task3_scene_has_an_opaque_gaussian_and_keeps_random_ones_below_the_cap():
    _, _, means2d, _, opacities, _, _ = C.task3_scene(16, 24, torch.Generator().manual_seed(0))
    assert opacities[0] == 1.0 and tuple(means2d[0].tolist()) == C._OPAQUE_AT
    assert float(opacities[7:].max()) < 0.99


def test_checks_refuse_non_kernels_and_reference_calls():
    for check in (C.check_task1, C.check_task2, C.check_task3):
        with pytest.raises(TaskFailed, match="@gpulab.kernel"):
            check(lambda *args: None)

    @gpulab.kernel
    def cheating(sorted_keys, ranges):
        ranges[:, :] = C.reference_ranges(sorted_keys, ranges.shape[0])

    if gpulab.ON_GPU:   # a compiled kernel cannot call Python at all
        with pytest.raises(TaskFailed):
            C.check_task2(cheating)
    else:
        with pytest.raises(TaskFailed, match="reference"):
            C.check_task2(cheating)


def test_ranges_variant_with_every_key_is_the_torch_specification():
    keys = torch.tensor([(0 << 32) | 5, (0 << 32) | 6, (3 << 32) | 1, (4 << 32) | 2])
    assert C.ranges_variant(keys, 6).tolist() == T.tile_ranges(keys, 6).tolist() == \
        [[0, 2], [0, 0], [0, 0], [2, 3], [3, 4], [0, 0]]


def test_task4_inputs_hold_the_awkward_cases():
    # culled Gaussians, one whose box touches no tile, boxes clamped at every edge, partial tiles
    gen = torch.Generator().manual_seed(0)
    order, means2d, radii, offsets, tiles_x, tiles_y = C.task4_inputs(101, gen)
    assert sorted(order.tolist()) == list(range(101))
    assert (radii == 0).any() and int(offsets[-1]) > 101
    counts = torch.diff(offsets.long(), prepend=torch.zeros(1, dtype=torch.long))
    assert (counts[(radii[order] > 0)] == 0).any()            # visible by radius, but off the grid
    assert (means2d[:, 0] < 0).any() and (means2d[:, 0] > tiles_x * 16).any()
    tiles, ids = C.reference_tile_ids(order, means2d, radii, offsets, tiles_x, tiles_y)
    assert len(tiles) == int(offsets[-1]) and int(tiles.max()) < tiles_x * tiles_y
    assert torch.equal(C.tile_ids_variant(order, means2d, radii, offsets, tiles_x, tiles_y)[0], tiles.cpu())
