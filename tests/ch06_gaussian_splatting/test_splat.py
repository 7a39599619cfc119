"""Chapter 06: the numba splatting stages against the torch specification, known answers,
gradients, bad input. Simulator sizes are tiny (a 16x16 tile is 256 Python threads)."""
import math

import numpy as np
import pytest
import torch
from numba import cuda

import gpulab
from gpulab import splat
from gpulab.splat import kernels as K
from gpulab.splat import torch_impl as T

DEV = gpulab.device


def awkward_scene(n_random: int, seed: int) -> splat.Gaussians:
    """Random Gaussians plus the cases that break rasterizers: behind the camera, at and
    inside the near plane, zero and flat scales, a zero quaternion, far off screen, huge."""
    g = torch.Generator().manual_seed(seed)
    base = splat.random_gaussians(n_random, g, device="cpu", sh_degree=1, depth=(1.0, 4.0),
                                  log_scale=(-2.5, 0.7))
    special_means = torch.tensor([
        [0.0, 0.0, -2.0],    # behind the camera
        [0.01, 0.0, 0.1],    # in front, but closer than the near plane
        [0.0, 0.01, 0.2],    # exactly on the near plane (culled: z <= 0.2)
        [0.1, 0.1, 1.5],     # zero scales: only the 0.3 low-pass is left
        [-0.2, 0.1, 2.0],    # flat: one zero scale
        [0.05, -0.1, 1.0],   # zero quaternion
        [40.0, 0.0, 2.0],    # far to the side: off screen (and x/z clamped)
        [0.0, 0.0, 3.0],     # huge: covers every tile
    ])
    special_scales = torch.tensor([[0.1] * 3, [0.1] * 3, [0.1] * 3, [0.0] * 3, [0.3, 0.0, 0.2],
                                   [0.1] * 3, [0.5] * 3, [3.0] * 3])
    special_quats = torch.randn(8, 4, generator=g)
    special_quats[5] = 0.0
    m = len(special_means)
    return splat.Gaussians(
        torch.cat([base.means, special_means]), torch.cat([base.quats, special_quats]),
        torch.cat([base.scales, special_scales]), torch.cat([base.opacities, torch.full((m,), 0.7)]),
        torch.cat([base.sh, torch.randn(m, 4, 3, generator=g) * 0.5])).to(DEV)


def close(a, b, atol=2e-5, rtol=1e-5):
    torch.testing.assert_close(a.double(), b.double(), atol=atol, rtol=rtol)


# ------------------------------------------------------------------ known answers

def test_covariance_known_answers():
    q = torch.tensor([[1.0, 0, 0, 0], [math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)]])
    s = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    cov = T.covariance_3d(q, s)
    close(cov[0], torch.diag(torch.tensor([1.0, 4.0, 9.0])))
    close(cov[1], torch.diag(torch.tensor([4.0, 1.0, 9.0])))   # 90 degrees about z swaps x and y


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_projection_known_answer(backend):
    # an isotropic Gaussian on the optical axis: cov2d = (fx s / z)^2 I + 0.3 I
    cam = splat.benchmark_camera(64, 48)
    s, z = 0.05, 2.0
    g = splat.Gaussians(torch.tensor([[0.0, 0.0, z]]), torch.tensor([[1.0, 0, 0, 0]]),
                        torch.full((1, 3), s), torch.ones(1), torch.zeros(1, 1, 3)).to(DEV)
    proj = splat.backend_module(backend).project_gaussians(g.means, g.quats, g.scales, cam)
    var = (cam.fx * s / z) ** 2 + 0.3
    close(proj.means2d[0].cpu(), torch.tensor([32.0, 24.0]))
    close(proj.conics[0].cpu(), torch.tensor([1 / var, 0.0, 1 / var]), rtol=1e-5)
    assert int(proj.radii[0]) == math.ceil(3 * math.sqrt(var + math.sqrt(0.1)))
    assert float(proj.depths[0]) == z
    on_near_plane = splat.Gaussians(torch.tensor([[0.0, 0.0, 0.2]]), g.quats.cpu(), g.scales.cpu(),
                                    torch.ones(1), torch.zeros(1, 1, 3)).to(DEV)
    p = on_near_plane
    assert int(splat.backend_module(backend).project_gaussians(p.means, p.quats, p.scales, cam).radii[0]) == 0


def test_fov_clamp_changes_jacobian_only():
    # far outside the view the Jacobian uses x/z clamped to 1.3 tan(fov/2): the splat's shape
    # stops growing, its centre does not move
    cam = splat.benchmark_camera(64, 48).resized(640, 480)
    means = torch.tensor([[1.0, 0.0, 1.0], [3.0, 0.0, 1.0]], dtype=torch.float64)
    cov3d = T.covariance_3d(torch.tensor([[1.0, 0, 0, 0]] * 2, dtype=torch.float64),
                            torch.full((2, 3), 0.1, dtype=torch.float64))
    lim = 1.3 * cam.tan_fovx
    assert 1.0 > lim
    c2 = T.project_covariance(cov3d, means, torch.eye(3, dtype=torch.float64), cam.fx, cam.fy, lim, lim)
    close(c2[0], c2[1])


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_sh_known_answers(backend):
    stages = splat.backend_module(backend)
    sh = torch.zeros(2, 4, 3)
    sh[:, 0] = torch.tensor([1.0, -4.0, 0.0])     # degree 0: 0.2820948 * c + 0.5, clamped at 0
    sh[:, 2] = torch.tensor([1.0, 1.0, 1.0])      # degree 1, coefficient of z
    means = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, -2.0]])
    campos = torch.zeros(3)
    c0 = stages.sh_to_color(sh.to(DEV), means.to(DEV), campos.to(DEV), 0)
    close(c0[0].cpu(), torch.tensor([splat.SH_C0 + 0.5, 0.0, 0.5]))
    c1 = stages.sh_to_color(sh.to(DEV), means.to(DEV), campos.to(DEV), 1)
    close(c1[0].cpu(), torch.tensor([splat.SH_C0 + 0.5 + splat.SH_C1, 0.0, 0.5 + splat.SH_C1]))
    close(c1[1].cpu(), torch.tensor([splat.SH_C0 + 0.5 - splat.SH_C1, 0.0, 0.5 - splat.SH_C1]))


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_tile_borders_known_answer(backend):
    # square [m - r, m + r]; 16-pixel tiles; a square reaching x = 16.0 stays in tile 0, one
    # reaching 16.5 (pixel 16's centre) touches tile 1, one starting at 16.0 starts in tile 1
    stages = splat.backend_module(backend)
    means2d = torch.tensor([[10.0, 8.0], [10.5, 8.0], [22.0, 8.0], [8.0, 8.0]], device=DEV)
    radii = torch.tensor([6, 6, 6, 0], dtype=torch.int32, device=DEV)
    depths = torch.tensor([1.0, 2.0, 3.0, 4.0], device=DEV)
    keys, ids = stages.bin_gaussians(means2d, radii, depths, 40, 16)
    tiles = (keys >> 32).tolist()
    assert list(zip(ids.tolist(), tiles)) == [(0, 0), (1, 0), (1, 1), (2, 1)]
    assert torch.equal(keys & 0xFFFFFFFF, depths[ids.long()].view(torch.int32).long())


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_tile_ranges_known_answer(backend):
    tiles = torch.tensor([0, 0, 2, 2, 2, 5])
    keys = (tiles << 32) | torch.arange(6)
    ranges = splat.backend_module(backend).tile_ranges(keys.to(DEV), 6)
    assert ranges.tolist() == [[0, 2], [0, 0], [2, 5], [0, 0], [0, 0], [5, 6]]
    assert splat.backend_module(backend).tile_ranges(keys[:0].to(DEV), 3).tolist() == [[0, 0]] * 3


def _one_tile_scene(means2d, opacities, conic=(0.5, 0.0, 0.5), colors=None):
    n = len(means2d)
    means2d = torch.tensor(means2d, dtype=torch.float32)
    conics = torch.tensor([conic] * n, dtype=torch.float32)
    params = splat.gaussian_params(means2d, conics, torch.tensor(opacities)).to(DEV)
    colors = torch.eye(3)[torch.arange(n) % 3] if colors is None else colors
    ranges = torch.tensor([[0, n]], dtype=torch.int32, device=DEV)
    ids = torch.arange(n, dtype=torch.int32, device=DEV)   # already front to back
    return params, colors.float().to(DEV), ranges, ids


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_pixel_centre_and_early_stop_known_answer(backend):
    stages = splat.backend_module(backend)
    # three Gaussians stacked on pixel (8, 8), centred at its centre (8.5, 8.5), so alpha =
    # opacity there: 0.98 (T -> 0.02), 0.99 (0.02 * 0.01 = 2e-4 >= 1e-4: used, T -> 2e-4),
    # then 0.99 again: 2e-6 < 1e-4 stops the pixel *before* the third is used
    params, colors, ranges, ids = _one_tile_scene([[8.5, 8.5]] * 3, [0.98, 0.99, 0.99])
    bg = torch.tensor([0.0, 0.0, 1.0], device=DEV)
    image, trans = stages.rasterize_tiles(params, colors, bg, ranges, ids, 16, 16)
    close(image[8, 8].cpu(), torch.tensor([0.98, 0.02 * 0.99, 2e-4]), atol=1e-6)
    close(trans[8, 8].cpu(), torch.tensor(2e-4), atol=1e-8)
    # a neighbour one pixel away sees alpha = 0.99 * exp(-0.5 * 0.5 * 1) for each
    e = math.exp(-0.25)
    a1, a2 = 0.98 * e, 0.99 * e
    close(image[8, 9].cpu(), torch.tensor([a1, (1 - a1) * a2, (1 - a1) * (1 - a2) * a2 + (1 - a1) * (1 - a2) ** 2]),
          atol=1e-6)


# ------------------------------------------------------------------ numba vs torch

def test_projection_and_colour_numba_matches_torch():
    g = awkward_scene(69, seed=11)    # 77 Gaussians: not a multiple of the block
    # a slightly turned camera at the origin, principal point off centre
    cam = splat.Camera(splat.look_at((0.0, 0.0, 0.0), (0.1, -0.05, 1.0), up=(0, -1, 0)),
                       35.0, 33.0, 19.0, 17.5, 40, 36)
    pt = T.project_gaussians(g.means, g.quats, g.scales, cam)
    pn = K.project_gaussians(g.means, g.quats, g.scales, cam)
    assert torch.equal(pt.radii, pn.radii)
    close(pn.means2d, pt.means2d, atol=1e-4)
    close(pn.conics, pt.conics, atol=1e-5, rtol=1e-4)
    close(pn.depths, pt.depths)
    radii = pt.radii[-8:].tolist()
    assert radii[:3] == [0, 0, 0]            # behind, inside and (about) on the near plane
    assert radii[3] > 0 and radii[4] > 0 and radii[5] > 0
    assert radii[6] == 0                     # off screen
    assert radii[7] > 40                     # huge
    for degree in range(4):
        sh = torch.randn(len(g), 16, 3, generator=torch.Generator().manual_seed(degree)).to(DEV)
        close(K.sh_to_color(sh, g.means, cam.position, degree), T.sh_to_color(sh, g.means, cam.position, degree))


def test_binning_and_ranges_numba_match_torch():
    g = awkward_scene(150, seed=5)
    cam = splat.benchmark_camera(70, 37)
    proj = T.project_gaussians(g.means, g.quats, g.scales, cam)
    kt, it = T.bin_gaussians(proj.means2d, proj.radii, proj.depths, 70, 37)
    kn, i_n = K.bin_gaussians(proj.means2d, proj.radii, proj.depths, 70, 37)
    assert len(kt) > 300 and torch.equal(kt, kn) and torch.equal(it, i_n)
    ks, ids = splat.torch_impl.sort_keys(kt, it)
    assert torch.all(ks[1:] >= ks[:-1])
    n_tiles = math.prod(splat.tile_grid(70, 37))
    rt, rn = T.tile_ranges(ks, n_tiles), K.tile_ranges(ks, n_tiles)
    assert torch.equal(rt, rn)
    assert int((rt[:, 1] - rt[:, 0]).sum()) == len(ks)
    # the tile-major sort with 32-bit keys gives the same lists as the 64-bit keys
    tiles_n, ids_n = K.bin_and_sort(proj.means2d, proj.radii, proj.depths, 70, 37)
    tiles_t, ids_t = T.bin_and_sort(proj.means2d, proj.radii, proj.depths, 70, 37)
    assert tiles_n.dtype == torch.int32 and torch.equal(tiles_n, tiles_t) and torch.equal(ids_n, ids_t)
    assert torch.equal(tiles_n.long(), ks >> 32) and torch.equal(ids_n, ids)
    assert torch.equal(K.tile_ranges(tiles_n, n_tiles), rt) and torch.equal(T.tile_ranges(tiles_t, n_tiles), rt)


def test_opacity_aware_box_known_answer_and_twins():
    # isotropic variance v, opacity 1: e = sqrt(2 ln 255) = 3.3290 (under the 3.33 cap), r = ceil(e sqrt(v));
    # opacity 0.1: e = sqrt(2 ln 25.5); below 1/255 or culled: nothing to bin
    v = 4.0
    conics = torch.tensor([[1 / v, 0.0, 1 / v]] * 4, device=DEV)
    opac = torch.tensor([1.0, 0.1, 0.003, 1.0], device=DEV)
    radii = torch.tensor([7, 7, 7, 0], dtype=torch.int32, device=DEV)
    want = [[math.ceil(math.sqrt(2 * math.log(255)) * 2)] * 2, [math.ceil(math.sqrt(2 * math.log(25.5)) * 2)] * 2,
            [0, 0], [0, 0]]
    for stages in (T, K):
        assert stages.tile_extents(conics, opac, radii).tolist() == want
    g = awkward_scene(150, seed=9)
    cam = splat.benchmark_camera(70, 37)
    p = T.project_gaussians(g.means, g.quats, g.scales, cam)
    et, en = T.tile_extents(p.conics, g.opacities, p.radii), K.tile_extents(p.conics, g.opacities, p.radii)
    assert torch.equal(et, en)
    assert torch.equal(*(s.bin_and_sort(p.means2d, et, p.depths, 70, 37)[1] for s in (T, K)))
    pairs_box = len(T.bin_gaussians(p.means2d, et, p.depths, 70, 37)[0])
    pairs_square = len(T.bin_gaussians(p.means2d, p.radii, p.depths, 70, 37)[0])
    assert pairs_box < pairs_square                  # fewer tiles for thin and faint splats


def test_opacity_aware_box_leaves_out_no_pixel_that_counts():
    # the same image as binning every splat into every tile: the box drops only alpha < 1/255
    gen = torch.Generator().manual_seed(6)
    n = 40
    means2d = torch.rand(n, 2, generator=gen) * torch.tensor([40.0, 30.0])
    angle = torch.rand(n, generator=gen) * math.pi
    s1, s2 = 0.5 + 6 * torch.rand(n, generator=gen), 0.3 + 2 * torch.rand(n, generator=gen)
    c, s_ = torch.cos(angle), torch.sin(angle)
    cov = torch.stack([c * c * s1 ** 2 + s_ * s_ * s2 ** 2, c * s_ * (s1 ** 2 - s2 ** 2),
                       s_ * s_ * s1 ** 2 + c * c * s2 ** 2], -1) + torch.tensor([0.3, 0.0, 0.3])
    det = cov[:, 0] * cov[:, 2] - cov[:, 1] ** 2
    conics = torch.stack([cov[:, 2] / det, -cov[:, 1] / det, cov[:, 0] / det], -1)
    opac = torch.rand(n, generator=gen)
    params = splat.gaussian_params(means2d, conics, opac).to(DEV)
    feats = torch.rand(n, 3, generator=gen).to(DEV)
    depths = torch.rand(n, generator=gen).to(DEV) + 1
    everywhere = torch.full((n,), 100, dtype=torch.int32, device=DEV)
    box = T.tile_extents(params[:, 2:5], params[:, 5], everywhere)
    full, full_t, _ = splat.rasterize(params, feats, params[:, :2], everywhere, depths, 40, 30, backend="torch")
    tight, tight_t, (keys, _, _) = splat.rasterize(params, feats, params[:, :2], box, depths, 40, 30, backend="torch")
    assert len(keys) < n * 6
    close(tight, full, atol=1e-6)
    close(tight_t, full_t, atol=1e-6)


def test_tile_major_sort_keeps_depth_order_and_ties():
    # equal depths keep the Gaussians' index order in both sorts; the nearest comes first
    means2d = torch.tensor([[8.0, 8.0], [9.0, 8.0], [7.0, 9.0], [20.0, 8.0]], device=DEV)
    radii = torch.tensor([10, 10, 10, 5], dtype=torch.int32, device=DEV)
    depths = torch.tensor([2.0, 1.0, 2.0, 1.5], device=DEV)
    tiles, ids = K.bin_and_sort(means2d, radii, depths, 32, 16)
    assert tiles.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert ids.tolist() == [1, 3, 0, 2, 1, 3, 0, 2]          # depth 1, 1.5, then the tie 0 before 2


def test_render_numba_matches_torch_on_awkward_scene():
    g = awkward_scene(60, seed=2)
    cam = splat.benchmark_camera(20, 18)         # 2 x 2 tiles, the right and bottom ones partial
    bg = torch.tensor([0.1, 0.2, 0.3], device=DEV)
    a = splat.render(g, cam, bg, backend="torch")
    b = splat.render(g, cam, bg, backend="numba")
    assert torch.equal(a.keys, b.keys) and torch.equal(a.ranges, b.ranges)
    assert (a.ranges[:, 1] - a.ranges[:, 0]).min() > 5      # every tile has work
    close(b.image, a.image, atol=1e-5)
    close(b.transmittance, a.transmittance, atol=1e-6)
    assert float(a.transmittance.min()) < 0.5


def test_empty_and_fully_culled_scenes_give_background():
    cam = splat.benchmark_camera(16, 16)
    bg = torch.tensor([0.25, 0.5, 0.75], device=DEV)
    empty = splat.Gaussians(torch.zeros(0, 3), torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0),
                            torch.zeros(0, 1, 3)).to(DEV)
    behind = splat.Gaussians(torch.tensor([[0.0, 0.0, -1.0]]), torch.tensor([[1.0, 0, 0, 0]]),
                             torch.ones(1, 3), torch.ones(1), torch.zeros(1, 1, 3)).to(DEV)
    for scene in (empty, behind):
        for backend in ("torch", "numba"):
            out = splat.render(scene, cam, bg, backend=backend)
            assert len(out.keys) == 0
            assert torch.equal(out.image, bg.expand(16, 16, 3))
            assert torch.equal(out.transmittance, torch.ones(16, 16, device=DEV))


def test_any_number_of_channels_and_chunking():
    gen = torch.Generator().manual_seed(4)
    n = 30
    means2d = torch.rand(n, 2, generator=gen) * torch.tensor([24.0, 16.0])
    conics = torch.tensor([0.3, 0.05, 0.2]).repeat(n, 1)
    params = splat.gaussian_params(means2d, conics, torch.rand(n, generator=gen)).to(DEV)
    feats = torch.randn(n, 5, generator=gen).to(DEV)
    bg = torch.randn(5, generator=gen).to(DEV)
    radii = torch.full((n,), 8, dtype=torch.int32, device=DEV)
    depths = torch.rand(n, generator=gen).to(DEV) + 1
    ref, ref_t, _ = splat.rasterize(params, feats, params[:, :2], radii, depths, 24, 16, bg, backend="torch")
    # a tiny budget forces one tile per chunk and short slices of each list: same answer
    keys, ids = T.sort_keys(*T.bin_gaussians(params[:, :2], radii, depths, 24, 16))
    small, small_t = T.rasterize_tiles(params, feats, bg, T.tile_ranges(keys, 2), ids, 24, 16, max_elements=256 * 3)
    close(small, ref, atol=1e-6)
    close(small_t, ref_t, atol=1e-6)
    out, out_t, _ = splat.rasterize(params, feats, params[:, :2], radii, depths, 24, 16, bg, backend="numba")
    close(out, ref, atol=2e-5)
    close(out_t, ref_t, atol=1e-6)


# a different primitive: a flat disc of radius r (params x, y, r, opacity), to prove the
# pipeline takes a new footprint without copying any of it

def disc_alpha(params, px, py):
    inside = (params[..., 0] - px) ** 2 + (params[..., 1] - py) ** 2 <= params[..., 2] ** 2
    return torch.where(inside, params[..., 3].clamp_max(0.99), torch.zeros_like(params[..., 3]))


_DISC_MAX, _DISC_ZERO = np.float32(0.99), np.float32(0.0)


@cuda.jit(device=True)
def disc_alpha_device(batch, j, px, py):
    dx = batch[j, 0] - px
    dy = batch[j, 1] - py
    if dx * dx + dy * dy <= batch[j, 2] * batch[j, 2]:
        return min(_DISC_MAX, batch[j, 3])
    return _DISC_ZERO


DISC = splat.Footprint("disc", 4, disc_alpha, disc_alpha_device)


def test_custom_footprint_plugs_in():
    gen = torch.Generator().manual_seed(8)
    n = 12
    centres = torch.rand(n, 2, generator=gen) * 16
    r = 2.0 + 4 * torch.rand(n, generator=gen)
    params = torch.cat([centres, r[:, None], 0.5 + 0.5 * torch.rand(n, 1, generator=gen)], 1).to(DEV)
    colors = torch.rand(n, 3, generator=gen).to(DEV)
    radii = torch.ceil(r).to(torch.int32).to(DEV)
    depths = torch.arange(n, 0, -1).float().to(DEV)
    a, at, _ = splat.rasterize(params, colors, params[:, :2], radii, depths, 16, 16, footprint=DISC, backend="torch")
    b, bt, _ = splat.rasterize(params, colors, params[:, :2], radii, depths, 16, 16, footprint=DISC, backend="numba")
    close(b, a, atol=1e-6)
    close(bt, at, atol=1e-6)
    # the last-listed Gaussian is the nearest (smallest depth): where it covers a pixel, it is on top
    last = n - 1
    y, x = int(centres[last, 1]), int(centres[last, 0])
    alpha = float(params[last, 3].clamp_max(0.99))
    assert float(at[y, x]) <= 1 - alpha + 1e-6


# ------------------------------------------------------------------ gradients

def test_gradients_of_projection_and_colour():
    torch.manual_seed(0)
    cam = splat.benchmark_camera(64, 48)
    means = torch.tensor([[0.1, -0.1, 2.0], [-0.3, 0.2, 3.0]], dtype=torch.float64, requires_grad=True)
    quats = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    scales = torch.tensor([[0.05, 0.1, 0.07], [0.2, 0.1, 0.05]], dtype=torch.float64, requires_grad=True)

    def projected(means, quats, scales):
        p = T.project_gaussians(means, quats, scales, cam)
        return p.means2d, p.conics

    assert torch.autograd.gradcheck(projected, (means, quats, scales))
    sh = torch.randn(2, 16, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda sh, m: T.sh_to_color(sh, m, cam.position.double(), 3), (sh, means))


def test_gradients_of_compositing():
    gen = torch.Generator().manual_seed(1)
    n = 5
    means2d = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 16
    conics = torch.tensor([0.05, 0.01, 0.08], dtype=torch.float64).repeat(n, 1)
    opac = 0.3 + 0.5 * torch.rand(n, generator=gen, dtype=torch.float64)
    params = splat.gaussian_params(means2d, conics, opac).requires_grad_()
    feats = torch.rand(n, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    bg = torch.rand(2, generator=gen, dtype=torch.float64, requires_grad=True)
    ranges = torch.tensor([[0, n]], dtype=torch.int32)
    ids = torch.arange(n, dtype=torch.int32)

    def composite(params, feats, bg):
        img, trans = T.rasterize_tiles(params, feats, bg, ranges, ids, 16, 16)
        return img[::3, ::3], trans[::3, ::3]

    assert torch.autograd.gradcheck(composite, (params, feats, bg), fast_mode=True)


def test_fitting_raises_psnr():
    cams = splat.orbit_views(2, 16, 16, distance=2.5)
    truth = splat.toy_object(60)
    with torch.no_grad():
        targets = [splat.render(truth, c, backend="torch").image for c in cams]
    model = splat.TrainableGaussians(40, extent=0.7)
    history = splat.fit(model, cams, targets, steps=40, lr=0.02, progress=False)
    assert np.mean(history[-5:]) > np.mean(history[:5]) + 2.0


# ------------------------------------------------------------------ bad input

def test_bad_inputs_get_clear_errors():
    g = awkward_scene(3, seed=0)
    cam = splat.benchmark_camera(16, 16)
    with pytest.raises(TypeError, match="float32"):
        K.project_gaussians(g.means.double(), g.quats, g.scales, cam)
    with pytest.raises(ValueError, match="quats"):
        K.project_gaussians(g.means, g.quats[:, :3], g.scales, cam)
    with pytest.raises(ValueError, match="degree"):
        K.sh_to_color(g.sh, g.means, cam.position, 3)
    with pytest.raises(ValueError, match="degree"):
        K.sh_to_color(g.sh, g.means, cam.position, 4)
    with pytest.raises(TypeError, match="int64"):
        K.tile_ranges(torch.zeros(3, dtype=torch.float32, device=DEV), 4)
    with pytest.raises(ValueError, match="ranges"):
        K.rasterize_tiles(torch.zeros(2, 6, device=DEV), torch.zeros(2, 3, device=DEV), torch.zeros(3, device=DEV),
                          torch.zeros(3, 2, dtype=torch.int32, device=DEV), torch.zeros(0, dtype=torch.int32, device=DEV),
                          16, 16)
    with pytest.raises(ValueError, match="backend"):
        splat.render(g, cam, backend="cuda")
    with pytest.raises(TypeError, match="Gaussians"):
        splat.render(g.means, cam)
    with pytest.raises(ValueError, match="scales"):
        splat.Gaussians(g.means, g.quats, g.scales[:2], g.opacities, g.sh)
    with pytest.raises(ValueError, match="size"):
        splat.Camera(cam.viewmat, 10.0, 10.0, 0.0, 0.0, 0, 16)
    with pytest.raises(ValueError, match="device function"):
        K.raster_kernel_for(splat.Footprint("torch only", 4, disc_alpha), 3)


# ------------------------------------------------------------------ GPU only

@pytest.mark.gpu
def test_gpu_full_hd_numba_matches_torch():
    g = splat.random_gaussians(20_000, torch.Generator().manual_seed(0), sh_degree=3)
    cam = splat.benchmark_camera(1920, 1080)
    a = splat.render(g, cam, backend="torch")
    b = splat.render(g, cam, backend="numba")
    mismatch = (a.projection.radii != b.projection.radii).float().mean().item()
    assert mismatch < 1e-3
    close(b.colors, a.colors, atol=1e-5)
    diff = (a.image - b.image).abs()
    assert diff.mean().item() < 1e-5
    assert torch.quantile(diff.flatten()[::97], 0.999).item() < 1e-3
    # the same projection through both binning paths gives identical keys and ranges
    p = b.projection
    kt, it = T.bin_gaussians(p.means2d, p.radii, p.depths, 1920, 1080)
    kn, i_n = K.bin_gaussians(p.means2d, p.radii, p.depths, 1920, 1080)
    assert torch.equal(kt, kn) and torch.equal(it, i_n)
    ks, ids = T.sort_keys(kt, it)
    n_tiles = math.prod(splat.tile_grid(1920, 1080))
    assert torch.equal(T.tile_ranges(ks, n_tiles), K.tile_ranges(ks, n_tiles))
    tiles, ids_n = K.bin_and_sort(p.means2d, p.radii, p.depths, 1920, 1080)
    assert torch.equal(tiles.long(), ks >> 32) and torch.equal(ids_n, ids)


@pytest.mark.gpu
def test_gpu_channels_footprint_and_repeatability():
    gen = torch.Generator().manual_seed(3)
    n = 4000
    means2d = torch.rand(n, 2, generator=gen) * torch.tensor([333.0, 250.0])
    conics = torch.tensor([0.02, 0.004, 0.03]).repeat(n, 1)
    params = splat.gaussian_params(means2d, conics, torch.rand(n, generator=gen)).to(DEV)
    feats = torch.randn(n, 7, generator=gen).to(DEV)
    radii = torch.full((n,), 30, dtype=torch.int32, device=DEV)
    depths = torch.rand(n, generator=gen).to(DEV) + 1
    ref, ref_t, _ = splat.rasterize(params, feats, params[:, :2], radii, depths, 333, 250, backend="torch")
    out, out_t, _ = splat.rasterize(params, feats, params[:, :2], radii, depths, 333, 250, backend="numba")
    assert (out - ref).abs().mean().item() < 1e-4
    again, _, _ = splat.rasterize(params, feats, params[:, :2], radii, depths, 333, 250, backend="numba")
    assert torch.equal(out, again)
    disc = torch.cat([means2d, torch.full((n, 1), 6.0), torch.rand(n, 1, generator=gen)], 1).to(DEV)
    a, _, _ = splat.rasterize(disc, feats, disc[:, :2], radii, depths, 333, 250, footprint=DISC, backend="torch")
    b, _, _ = splat.rasterize(disc, feats, disc[:, :2], radii, depths, 333, 250, footprint=DISC, backend="numba")
    assert (a - b).abs().mean().item() < 1e-4


@pytest.mark.parametrize("n", [1, 255, 700])
def test_counting_sort_is_a_stable_sort_by_tile(n):
    # chunks of 256 pairs (rounds=1), so 700 pairs cover three blocks; few tiles, many repeats
    from gpulab.splat import tilesort

    gen = torch.Generator().manual_seed(n)
    n_tiles = 13
    tiles = torch.randint(0, n_tiles, (n,), generator=gen, dtype=torch.int32)
    tiles[tiles == 5] = 6                                   # an empty tile in the middle
    ids = torch.randperm(n, generator=gen).to(torch.int32)
    got_tiles, got_ids, ranges = tilesort.counting_sort_by_tile(tiles.to(DEV), ids.to(DEV), n_tiles, rounds=1)
    want_tiles, perm = torch.sort(tiles, stable=True)
    assert torch.equal(got_tiles.cpu(), want_tiles) and torch.equal(got_ids.cpu(), ids[perm])
    assert torch.equal(ranges.cpu(), T.tile_ranges(want_tiles, n_tiles))
    empty = tilesort.counting_sort_by_tile(tiles[:0].to(DEV), ids[:0].to(DEV), n_tiles)
    assert len(empty[0]) == 0 and int(empty[2].abs().sum()) == 0
    with pytest.raises(ValueError, match="tile counters"):
        tilesort.counting_sort_by_tile(tiles.to(DEV), ids.to(DEV), tilesort.MAX_TILES + 1)


@pytest.mark.gpu
def test_gpu_counting_sort_matches_torch_sort_at_full_size():
    # 5M pairs over the 8160 tiles of 1080p, skewed like a real frame (a few hot tiles)
    from gpulab.splat import tilesort

    gen = torch.Generator().manual_seed(2)
    n_tiles = 120 * 68
    hot = torch.randint(0, n_tiles, (64,), generator=gen)
    tiles = torch.where(torch.rand(5_000_000, generator=gen) < 0.3, hot[torch.randint(0, 64, (5_000_000,), generator=gen)],
                        torch.randint(0, n_tiles, (5_000_000,), generator=gen)).to(torch.int32).to(DEV)
    ids = torch.randint(0, 1 << 30, (5_000_000,), generator=gen, dtype=torch.int32).to(DEV)
    got_tiles, got_ids, ranges = tilesort.counting_sort_by_tile(tiles, ids, n_tiles)
    want_tiles, perm = torch.sort(tiles, stable=True)
    assert torch.equal(got_tiles, want_tiles) and torch.equal(got_ids, ids[perm])
    assert torch.equal(ranges, T.tile_ranges(want_tiles, n_tiles))
