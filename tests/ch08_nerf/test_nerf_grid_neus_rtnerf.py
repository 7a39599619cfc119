"""Occupancy grid (nerfacc's update rules, bitfield), grid marching that never skips an
occupied cell, NeuS's alpha and sampling, RT-NeRF's cube-ordered rendering and storage."""
import math

import pytest
import torch

import gpulab  # noqa: F401  (before numba)
from gpulab.nerf import fields, neus, occgrid as O, rtnerf as R


def test_ema_update_worked_example_and_rules():
    occs = torch.tensor([0.2, 0.0, 0.004, -1.0])
    new, binary = O.ema_update(occs, torch.tensor([0, 1]), torch.tensor([0.1, 0.001]))
    torch.testing.assert_close(new, torch.tensor([0.19, 0.001, 0.004, -1.0]))
    assert binary.tolist() == [True, False, False, False]
    # a low-density scene: the mean (0.002) sets the threshold, not 0.01
    low, bits = O.ema_update(torch.zeros(4), torch.arange(4), torch.tensor([0.005, 0.001, 0.0, 0.002]))
    assert bits.tolist() == [True, False, False, False] and occs[1] == 0.0   # inputs untouched


def test_update_schedule_and_bitfield():
    gen = torch.Generator().manual_seed(0)
    grid = O.OccupancyGrid(resolution=8, levels=2)
    blob = fields.GaussianBlob((0.3, 0.0, 0.0), 0.2, 40.0)
    occ_fn = lambda x: blob.density(x) * 0.01
    assert grid.update_every_n_steps(0, occ_fn, gen) == 2 * 512          # warm-up: every cell of both levels
    assert grid.update_every_n_steps(5, occ_fn, gen) == 0                # only every 16th step
    occupied_before = grid.binaries.sum(1)
    evaluated = grid.update_every_n_steps(512, occ_fn, gen)              # then 1/4 uniform + up to 1/4 occupied
    assert evaluated == sum(128 + min(128, int(k)) for k in occupied_before)
    assert grid.bitfield.dtype == torch.uint8 and grid.bitfield.shape == (2, 64)
    assert torch.equal(O.unpack_bits(O.pack_bits(grid.binaries)), grid.binaries)
    assert O.pack_bits(torch.tensor([True] + [False] * 6 + [True])).tolist() == [129]   # bit i % 8 of byte i // 8
    # an emptied field fades by 5% per update instead of vanishing at once
    before = grid.occs.clone()
    grid.update(600, lambda x: torch.zeros(len(x)), gen, warmup_steps=10_000)
    torch.testing.assert_close(grid.occs, before * 0.95)
    with pytest.raises(ValueError, match="multiple of 8"):
        O.OccupancyGrid(resolution=12)


def _rays(n, gen, radius=2.5):
    o = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=1) * radius
    d = torch.nn.functional.normalize(-o + 0.4 * torch.randn(n, 3, generator=gen), dim=1)
    return o, d


def test_grid_marching_never_skips_an_occupied_cell():
    """The skipping marcher (numba) keeps exactly the dense marcher's samples, with fewer
    lattice points looked at; both levels of a 2-level grid are crossed."""
    gen = torch.Generator().manual_seed(1)
    grid = O.OccupancyGrid(resolution=16, levels=2)
    scene = fields.BlobScene.random(3, gen, extent=0.8)
    step = 0.03
    for s in range(3):
        grid.update(s * 16, lambda x: scene.density(x) * step, gen, warmup_steps=1)
    assert grid.binaries[1].any() and grid.binaries[0].any()
    o, d = _rays(21, gen)
    info, t0, t1, seen = O.march_dense(grid, o, d, step)
    info_k, t0_k, t1_k, seen_k = O.march_skipping(grid, o.to(gpulab.device), d.to(gpulab.device), step)
    assert torch.equal(info_k.cpu(), info) and torch.equal(t0_k.cpu(), t0) and torch.equal(t1_k.cpu(), t1)
    assert len(t0) > 50 and seen_k.sum() < seen.sum() // 2
    every = O.march_skipping(grid, o.to(gpulab.device), d.to(gpulab.device), step, skip=False)
    assert torch.equal(every[1].cpu(), t0) and torch.equal(every[3].cpu(), seen)   # no jumps: every point looked at
    mids = (t0 + t1) / 2
    from gpulab.nerf import ray_indices
    r = ray_indices(info)
    assert grid.occupied(o[r] + mids[:, None] * d[r]).all()
    with pytest.raises(ValueError, match="unit directions"):
        O.march_dense(grid, o, d * 2, step)


def test_cone_angle_marching_agrees():
    gen = torch.Generator().manual_seed(2)
    grid = O.OccupancyGrid(resolution=8, levels=2)
    grid.update(0, lambda x: fields.GaussianBlob((0, 0, 0), 0.5, 5.0).density(x) * 0.05, gen)
    o, d = _rays(5, gen, radius=3.0)
    dense = O.march_dense(grid, o, d, 0.02, cone_angle=0.05)
    skip = O.march_skipping(grid, o, d, 0.02, cone_angle=0.05)
    assert torch.equal(dense[0], skip[0].cpu())
    torch.testing.assert_close(skip[1].cpu(), dense[1])
    widths = dense[2] - dense[1]
    assert widths.max() > 0.1                                          # steps grow with t: 0.05 t > 0.02


def test_neus_alpha_constants():
    a = neus.neus_alpha(torch.tensor([0.01, -0.01, -20.0]), torch.tensor([-0.01, 0.01, -20.1]), 64.0)
    torch.testing.assert_close(a, torch.tensor([0.4727, 0.0, 1.0]), atol=1e-4, rtol=0)   # exit clamps to 0; deep: no NaN
    torch.testing.assert_close(neus.inv_s_from_variance(neus.VARIANCE_INIT), torch.tensor(math.exp(3.0)))
    f_minus, f_plus = neus.section_ends(torch.tensor([0.0]), torch.tensor([0.5]), torch.tensor([0.2]), 0.0)
    # at ratio 0 the cos is -(relu(-cos/2 + 1/2)) = -0.25: ends 0 +- 0.025
    torch.testing.assert_close(torch.cat([f_minus, f_plus]), torch.tensor([0.025, -0.025]))


def test_neus_renders_a_sphere_at_its_surface():
    o = torch.tensor([[0.0, 0.0, -2.0], [0.1, 0.2, -2.0], [0.9, 0.0, -2.0]])
    d = torch.tensor([[0.0, 0.0, 1.0]]).expand(3, 3)
    z = neus.neus_depths(o, d, lambda x: fields.sphere_sdf(x, radius=0.5), torch.full((3,), 0.5), torch.full((3,), 3.5))
    assert z.shape == (3, 128) and (z[:, 1:] >= z[:, :-1]).all()
    w, mid = neus.render_neus(o, d, lambda x: fields.sphere_sdf(x, radius=0.5), torch.full((3,), 0.5),
                              torch.full((3,), 3.5), torch.tensor(512.0))
    opacity = w.sum(1)
    depth = (w * mid).sum(1) / opacity
    hit = 2.0 - torch.sqrt(0.25 - o[:2, 0] ** 2 - o[:2, 1] ** 2)
    torch.testing.assert_close(depth[:2], hit, atol=5e-3, rtol=0)
    assert opacity[:2].min() > 0.99 and opacity[2] < 0.01                # the third ray misses
    # the up-sampling put samples near the surface: many within 0.05 of it
    assert ((z[0] - 1.5).abs() < 0.05).sum() >= 32


def _rt_scene():
    gen = torch.Generator().manual_seed(3)
    scene = fields.BlobScene.random(3, gen)
    grid = O.OccupancyGrid(resolution=16)
    step = 2 * math.sqrt(3) / 128
    grid.update(0, lambda x: scene.density(x) * step, gen)
    c2w = torch.tensor([[1.0, 0, 0, 0.3], [0, 1, 0, -0.2], [0, 0, 1, -3.0]])
    return scene, grid, step, c2w


def test_rtnerf_matches_grid_marching_with_fewer_samples():
    from gpulab.nerf import ray_indices, torch_impl as T
    scene, grid, step, c2w = _rt_scene()
    w = h = 12
    image, opacity, stats = R.render_cube_ordered(scene, grid, c2w, 14.0, 14.0, 6.0, 6.0, w, h, step)
    o, d = R._camera_rays(c2w, 14.0, 14.0, 6.0, 6.0, w, h)
    info, t0, t1, _ = O.march_dense(grid, o, d, step)
    r = ray_indices(info)
    pts = o[r] + ((t0 + t1) / 2)[:, None] * d[r]
    weights, _, _ = T.render_weight_from_density(t0, t1, scene.density(pts), info)
    ref = T.accumulate_along_rays(weights, scene.rgb(pts), info).reshape(h, w, 3)
    torch.testing.assert_close(image, ref, atol=2e-3, rtol=0)
    _, _, uniform = R.render_uniform(scene, grid, c2w, 14.0, 14.0, 6.0, 6.0, w, h, step)
    assert opacity.max() > 0.5 and stats["samples"] < uniform["samples"] / 4


def test_cube_order_is_front_to_back_along_rays():
    cells = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 1, 1], [1, 1, 1]])
    order = R.cube_order(cells, torch.tensor([-3.0, -2.0, -1.0]))
    assert order.tolist() == [0, 1, 2, 3]


def test_bitmap_or_coordinates_crossover():
    assert R.bitmap_bytes(16) == 512 and R.coordinate_bytes(10, 16) == 15
    assert R.crossover_density(16) == pytest.approx(1 / 12) and R.crossover_density(32) == pytest.approx(1 / 15)
    gen = torch.Generator().manual_seed(4)
    for density, kind in ((0.02, "coords"), (0.07, "coords"), (0.1, "bitmap"), (0.5, "bitmap")):
        n = int(density * 4096)
        mask = torch.zeros(4096, dtype=torch.bool)
        mask[torch.randperm(4096, generator=gen)[:n]] = True
        mask = mask.reshape(16, 16, 16)
        got, payload, size = R.encode_block(mask)
        assert got == kind and size == min(R.bitmap_bytes(16), R.coordinate_bytes(n, 16))
        assert torch.equal(R.decode_block(got, payload, 16), mask)
