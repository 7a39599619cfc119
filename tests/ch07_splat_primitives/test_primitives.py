"""Chapter 07: each primitive's setup and footprint, numba against the torch specification,
the limits the papers' formulas must reach, and the binning bound. Simulator sizes are tiny
(one 16x16 tile is 256 Python threads)."""
import inspect
import math

import pytest
import torch

import gpulab
from gpulab import splat
from gpulab.splat import primitives as P
from gpulab.splat.constants import ALPHA_MIN, TILE
from gpulab.splat.primitives import kernels as K
from gpulab.splat.primitives import torch_impl as T
from helpers import assert_twins_equal

DEV = gpulab.device


def close(a, b, atol=2e-5, rtol=1e-5):
    torch.testing.assert_close(a.detach().double().cpu(), b.detach().double().cpu(), atol=atol, rtol=rtol)


def random_4d(n, gen, rotate=True):
    means4 = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    if rotate:
        rot = T.rotation_4d(torch.randn(n, 4, generator=gen, dtype=torch.float64),
                            torch.randn(n, 4, generator=gen, dtype=torch.float64))
    else:
        rot = torch.eye(4, dtype=torch.float64).expand(n, 4, 4)
    scales = 0.1 + torch.rand(n, 4, generator=gen, dtype=torch.float64)
    return means4, T.covariance_4d(rot, scales), torch.rand(n, generator=gen, dtype=torch.float64)


# ------------------------------------------------------------------ twins

def test_twins_offer_the_same_signatures():
    one_sided = {"convex_hull": "the numba setup kernel runs the hull inline",
                 "rotation_4d": "scene construction, not a per-frame stage",
                 "covariance_4d": "scene construction, not a per-frame stage",
                 "plane_rotation_4d": "scene construction (the rotor form), not a per-frame stage",
                 "triangle_frames": "a step the numba mesh kernel does inline",
                 "twist": "a procedural deformation of the mesh, applied before the kernels",
                 "fibonacci_hemisphere": "the sample directions the numba relight kernel makes inline",
                 "project_frequencies": "a step the numba Gabor setup kernel does inline"}
    assert "indirect_diffuse" in K.__all__
    for name in K.__all__:
        if name.endswith("_kernel") or name == "BLOCK_1D":
            continue
        assert name in T.__all__, f"kernels.{name} has no torch twin"
        assert inspect.signature(getattr(K, name)).parameters.keys() == \
            inspect.signature(getattr(T, name)).parameters.keys(), name
    assert set(T.__all__) - set(K.__all__) == set(one_sided)


def test_slice_4d_twins_agree():
    def inputs(n, gen):
        m, c, o = random_4d(n, gen)
        return m.float(), c.float(), o.float(), 0.37
    assert assert_twins_equal(T.slice_4d, K.slice_4d, inputs, sizes=(1, 7, 130), atol=1e-5, rtol=1e-4) == 3


def test_triangle_and_convex_setup_twins_agree():
    def triangles(n, gen):
        v = torch.rand(n, 3, 2, generator=gen) * 60 - 10
        v[0] = torch.tensor([[5.0, 5.0], [9.0, 5.0], [13.0, 5.0]])      # collinear: culled
        return v, 0.3 + torch.rand(n, generator=gen), torch.rand(n, generator=gen), 37, 29

    def convexes(n, gen):
        pts = torch.rand(n, 6, 2, generator=gen) * 50 - 5
        pts[0] = torch.tensor([[1.0, 1.0]] * 6)                         # one point: culled
        return (pts, 1 + 3 * torch.rand(n, generator=gen), 0.2 + torch.rand(n, generator=gen),
                0.2 + torch.rand(n, generator=gen), torch.rand(n, generator=gen), 37, 29)
    assert assert_twins_equal(T.triangle_setup, K.triangle_setup, triangles, sizes=(2, 9), atol=1e-4) == 2
    assert assert_twins_equal(T.convex_setup, K.convex_setup, convexes, sizes=(2, 9), atol=1e-3, rtol=1e-4) == 2


def test_shade_twins_agree_and_f0_is_4_percent_for_dielectrics():
    gen = torch.Generator().manual_seed(3)
    h, w = 5, 19
    gbuf = torch.rand(h, w, 9, generator=gen)
    n = torch.randn(h, w, 3, generator=gen)
    n[..., 2] = -n[..., 2].abs()
    gbuf[..., 1:4] = n / n.norm(dim=-1, keepdim=True)
    alpha = torch.rand(h, w, generator=gen)
    args = (gbuf, alpha, torch.tensor([0.3, -0.4, -1.0]), torch.tensor([1.0, 0.9, 0.8]), 20.0, 22.0, 9.5, 2.5)
    close(K.shade_pbr(*(a.to(DEV) if isinstance(a, torch.Tensor) else a for a in args)),
          T.shade_pbr(*(a.double() if isinstance(a, torch.Tensor) else a for a in args)), atol=1e-5, rtol=1e-4)
    # a dielectric facing the camera and the light: F = F0 = 0.04 at normal incidence
    g = torch.zeros(1, 1, 9, dtype=torch.float64)
    g[..., 3] = -1.0
    g[..., 4:7] = 0.5
    g[..., 7] = 1.0                      # fully rough: D = 1/pi, k = 1/2
    out = T.shade_pbr(g, torch.ones(1, 1, dtype=torch.float64), torch.tensor([0.0, 0.0, -1.0]),
                      torch.ones(3), 1.0, 1.0, 0.5, 0.5)
    d, f, geo = 1 / math.pi, 0.04, (1 / (1 * 0.5 + 0.5)) ** 2
    expected = (1 - f) * 0.5 / math.pi + d * f * geo / 4
    close(out[0, 0], torch.full((3,), expected, dtype=torch.float64), atol=1e-9)


# ------------------------------------------------------------------ 4D Gaussians

def test_slice_without_space_time_rotation_at_mu_t_is_the_3d_gaussian_and_renders_as_3dgs():
    gen = torch.Generator().manual_seed(1)
    scene = splat.random_gaussians(40, gen, device="cpu")
    cov3 = splat.torch_impl.covariance_3d(scene.quats, scene.scales)
    cov4 = torch.zeros(40, 4, 4)
    cov4[:, :3, :3] = cov3
    cov4[:, 3, 3] = 0.2
    t = torch.rand(40, generator=gen)
    means4 = torch.cat([scene.means, t[:, None]], -1)
    m3, c3, o3 = T.slice_4d(means4, cov4, scene.opacities, 0.0)
    close(c3, cov3)
    # at each Gaussian's own time: the 3D Gaussian unchanged, opacity at its peak (x 1)
    for i in (0, 17):
        mi, ci, oi = T.slice_4d(means4[i:i + 1], cov4[i:i + 1], scene.opacities[i:i + 1], float(t[i]))
        close(mi, scene.means[i:i + 1])
        close(oi, scene.opacities[i:i + 1])
    cov4[:, 3, 3] = 1e6                 # a Gaussian that lasts for ever: the whole scene at any t
    camera = splat.benchmark_camera(37, 21)
    colours = splat.torch_impl.sh_to_color(scene.sh, scene.means, camera.position, 0)
    frame = P.render_4d(P.Gaussians4D(means4, cov4, scene.opacities, colours), camera, 0.5, backend="torch")
    reference = splat.render(scene, camera, backend="torch", features=colours)
    assert (reference.transmittance < 0.9).sum() > 20            # the frame is not empty
    close(frame.image, reference.image, atol=1e-5)
    proj = T.project_covariances(scene.means, cov3, camera)
    ref_proj = splat.torch_impl.project_gaussians(scene.means, scene.quats, scene.scales, camera)
    assert torch.equal(proj.radii, ref_proj.radii)
    close(proj.conics, ref_proj.conics, atol=1e-4)


def test_temporal_opacity_peaks_at_1_and_is_culled_at_005():
    means4 = torch.zeros(3, 4, dtype=torch.float64)
    cov4 = torch.eye(4, dtype=torch.float64).expand(3, 4, 4).clone()
    opacity = torch.full((3,), 0.8, dtype=torch.float64)
    edge = math.sqrt(-2 * math.log(0.05))            # exp(-t^2 / 2) = 0.05
    for t, want in ((0.0, 0.8), (1.0, 0.8 * math.exp(-0.5)), (edge - 1e-6, 0.04), (edge + 1e-6, 0.0)):
        close(T.slice_4d(means4, cov4, opacity, t)[2], torch.full((3,), want, dtype=torch.float64), atol=1e-6)


def test_the_mean_moves_along_the_space_time_axis_and_rotor_and_quaternions_slice_alike():
    theta = 0.4
    # a rotor turning the x-t plane by theta, and the two quaternions of the same rotation
    rotor = P.plane_rotation_4d(torch.tensor([[0.0, 0.0, theta, 0.0, 0.0, 0.0]], dtype=torch.float64))
    half = theta / 2
    # L(q) turns the x-t and y-z planes by theta/2, R(q) turns x-t by theta/2 and y-z back
    q = torch.tensor([[math.cos(half), 0.0, 0.0, math.sin(half)]], dtype=torch.float64)
    quats = T.rotation_4d(q, q)
    close(quats, rotor, atol=1e-12)
    close(quats @ quats.transpose(1, 2), torch.eye(4, dtype=torch.float64)[None], atol=1e-12)
    scales = torch.tensor([[0.5, 0.3, 0.2, 0.1]], dtype=torch.float64)
    mean = torch.zeros(1, 4, dtype=torch.float64)
    one = torch.ones(1, dtype=torch.float64)
    a = T.slice_4d(mean, T.covariance_4d(rotor, scales), one, 0.05)
    b = T.slice_4d(mean, T.covariance_4d(quats, scales), one, 0.05)
    for x, y in zip(a, b):
        close(x, y, atol=1e-12)
    assert abs(float(a[0][0, 0])) > 1e-3       # the tilted Gaussian's centre moved in x with t


# ------------------------------------------------------------------ triangles

def test_triangle_known_answers_outward_unit_normals_and_incentre():
    v = torch.tensor([[[0.0, 0.0], [4.0, 0.0], [0.0, 3.0]]], dtype=torch.float64)   # 3-4-5: inradius 1
    for verts in (v, v[:, [0, 2, 1]]):                                               # either winding
        params, _, _ = T.triangle_setup(verts, torch.ones(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64),
                                        16, 16)
        normals = params[0, :9].reshape(3, 3)[:, :2]
        close(normals.norm(dim=-1), torch.ones(3, dtype=torch.float64))
        centroid = verts[0].mean(0)
        dist = (normals * centroid).sum(-1) + params[0, :9].reshape(3, 3)[:, 2]
        assert (dist < 0).all(), "normals must point outward: the centroid is on their negative side"
        close(params[0, 9], torch.tensor(-1.0, dtype=torch.float64), atol=1e-12)   # phi(s) = -inradius
        incentre = torch.tensor([1.0, 1.0], dtype=torch.float64)
        close(P.triangle_alpha(params[0], incentre[0], incentre[1]), torch.tensor(0.99, dtype=torch.float64))


def test_sigma_to_zero_gives_a_hard_triangle():
    v = torch.tensor([[[2.3, 1.7], [27.9, 6.1], [9.2, 19.6]]], dtype=torch.float64)
    params, _, _ = T.triangle_setup(v, torch.tensor([1e-4], dtype=torch.float64),
                                    torch.tensor([0.9], dtype=torch.float64), 32, 24)
    ys, xs = torch.meshgrid(torch.arange(24, dtype=torch.float64) + 0.5, torch.arange(32, dtype=torch.float64) + 0.5,
                            indexing="ij")
    alpha = P.triangle_alpha(params[0], xs, ys)
    a, b, c = v[0]

    def side(p, q):
        return (q[0] - p[0]) * (ys - p[1]) - (q[1] - p[1]) * (xs - p[0])
    inside = (side(a, b) > 0) & (side(b, c) > 0) & (side(c, a) > 0)
    assert inside.sum() > 50
    close(alpha[inside], torch.full_like(alpha[inside], 0.9), atol=2e-3)
    assert (alpha[~inside] == 0).all()


# ------------------------------------------------------------------ convexes

def test_convex_hull_drops_interior_and_collinear_points():
    pts = torch.tensor([[[0.0, 0.0], [2.0, 2.0], [1.0, 1.0], [2.0, 0.0], [0.0, 2.0], [1.0, 0.0]]], dtype=torch.float64)
    hull, size = T.convex_hull(pts)
    assert int(size) == 4
    close(hull[0, :4], torch.tensor([[0.0, 0.0], [2.0, 0.0], [2.0, 2.0], [0.0, 2.0]], dtype=torch.float64))


def test_convex_window_stays_finite_when_sharp_and_tends_to_the_hard_polygon():
    pts = torch.tensor([[[4.0, 4.0], [20.0, 5.0], [22.0, 18.0], [6.0, 15.0], [12.0, 2.0], [3.0, 9.0]]],
                       dtype=torch.float64)
    ys, xs = torch.meshgrid(torch.arange(24, dtype=torch.float64) + 0.5, torch.arange(28, dtype=torch.float64) + 0.5,
                            indexing="ij")
    one = torch.ones(1, dtype=torch.float64)
    params, _, _ = T.convex_setup(pts, one, 200 * one, 50 * one, 0.9 * one, 28, 24)
    for dtype in (torch.float32, torch.float64):
        alpha = P.convex_alpha(params[0].to(dtype), xs.to(dtype), ys.to(dtype))
        assert torch.isfinite(alpha).all()
    d = torch.stack([params[0, 3 * k] * xs + params[0, 3 * k + 1] * ys + params[0, 3 * k + 2]
                     for k in range(8)]).amax(0)
    alpha = P.convex_alpha(params[0], xs, ys)
    close(alpha[d < -0.5], torch.full_like(alpha[d < -0.5], 0.9), atol=1e-6)
    assert (alpha[d > 0.5] < 1e-6).all()


# ------------------------------------------------------------------ whole frames

def _triangle_scene(gen, n=9):
    centre = torch.tensor([0.0, 0.0, 0.0]) + 0.6 * torch.randn(n, 1, 3, generator=gen)
    return centre + 0.5 * torch.randn(n, 3, 3, generator=gen)


def test_numba_and_torch_composite_triangles_and_convexes_alike():
    gen = torch.Generator().manual_seed(5)
    camera = splat.orbit_camera(20, 15, 4.0, 16, 14)          # one tile: 256 simulated threads a frame
    verts = _triangle_scene(gen)
    colours = torch.rand(9, 3, generator=gen)
    sig, op = 0.3 + torch.rand(9, generator=gen), 0.3 + 0.7 * torch.rand(9, generator=gen)
    a = P.render_triangles(verts, colours, sig, op, camera, backend="torch")
    b = P.render_triangles(verts.to(DEV), colours.to(DEV), sig.to(DEV), op.to(DEV), camera.to(DEV), backend="numba")
    assert (a.radii[:, 0] > 0).sum() >= 5
    close(b.image, a.image, atol=1e-4)
    close(b.transmittance, a.transmittance, atol=1e-4)
    pts = torch.randn(6, 1, 3, generator=gen) * 0.6 + 0.35 * torch.randn(6, 6, 3, generator=gen)
    c6, d6 = torch.rand(6, 3, generator=gen), 1 + 2 * torch.rand(6, generator=gen)
    s6, o6 = 0.5 + torch.rand(6, generator=gen), 0.3 + 0.7 * torch.rand(6, generator=gen)
    a = P.render_convexes(pts, c6, d6, s6, o6, camera, backend="torch")
    b = P.render_convexes(*(x.to(DEV) for x in (pts, c6, d6, s6, o6)), camera.to(DEV), backend="numba")
    assert (a.radii[:, 0] > 0).sum() >= 4
    close(b.image, a.image, atol=1e-4)


@pytest.mark.parametrize("kind", ["triangle", "convex"])
def test_no_weight_outside_a_primitives_tiles(kind):
    gen = torch.Generator().manual_seed(11)
    width, height, n = 70, 53, 12
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64) + 0.5,
                            torch.arange(width, dtype=torch.float64) + 0.5, indexing="ij")
    op = 0.05 + torch.rand(n, generator=gen, dtype=torch.float64)
    if kind == "triangle":
        v = torch.rand(n, 3, 2, generator=gen, dtype=torch.float64) * torch.tensor([width, height]) * 1.2 - 5
        params, means2d, radii = T.triangle_setup(v, 0.2 + torch.rand(n, generator=gen, dtype=torch.float64),
                                                  op, width, height)
        fp = P.TRIANGLE
    else:
        c = torch.rand(n, 1, 2, generator=gen, dtype=torch.float64) * torch.tensor([width, height])
        pts = c + 8 * torch.randn(n, 6, 2, generator=gen, dtype=torch.float64)
        rnd = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)  # noqa: E731
        params, means2d, radii = T.convex_setup(pts, rnd(0.5, 3), rnd(0.05, 2), rnd(0.05, 2), op, width, height)
        fp = P.CONVEX
    x0, y0, x1, y1 = splat.torch_impl.tile_rects(means2d, radii, width, height)
    tile_x, tile_y = (xs // TILE).long(), (ys // TILE).long()
    checked = 0
    for i in range(n):
        alpha = fp.torch_fn(params[i], xs, ys)
        inside = (tile_x >= x0[i]) & (tile_x < x1[i]) & (tile_y >= y0[i]) & (tile_y < y1[i])
        if (radii[i] == 0).any():
            inside = torch.zeros_like(inside)
        assert not ((alpha >= ALPHA_MIN) & ~inside).any(), f"{kind} {i} has weight outside its tiles"
        checked += int((alpha >= ALPHA_MIN).any())
    assert checked >= n // 2


def test_gbuffer_composites_channels_and_shades():
    gen = torch.Generator().manual_seed(2)
    scene = splat.toy_object(60, gen, device="cpu")
    camera = splat.orbit_camera(0, 10, 3.0, 24, 20)
    n = len(scene)
    albedo, rough, metal = torch.rand(n, 3, generator=gen), torch.rand(n, generator=gen), torch.rand(n, generator=gen)
    channels, trans = P.render_gbuffer(scene, camera, albedo, rough, metal, backend="torch")
    gbuf, alpha = P.resolve_gbuffer(channels, trans)
    covered = alpha > 0.05
    assert covered.sum() > 20
    close(gbuf[covered][:, 1:4].norm(dim=-1), torch.ones(int(covered.sum())), atol=1e-5)
    assert (gbuf[covered][:, 0] > 0).all()                       # view depth in front of the camera
    assert (gbuf[covered][:, 4:] >= 0).all() and (gbuf[covered][:, 4:] <= 1 + 1e-5).all()
    rgb = T.shade_pbr(gbuf, alpha, torch.tensor([0.2, -0.5, -1.0]), torch.ones(3), camera.fx, camera.fy,
                      camera.cx, camera.cy)
    assert torch.isfinite(rgb).all() and (rgb >= 0).all() and (rgb[~covered.logical_not()] >= 0).all()
    assert (rgb[alpha == 0] == 0).all()


# ------------------------------------------------------------------ bad input

def test_bad_input_gets_clear_errors():
    with pytest.raises(ValueError, match="at most 8 points"):
        T.convex_setup(torch.zeros(1, 9, 2), *(torch.ones(1),) * 4, 16, 16)
    with pytest.raises(ValueError, match=r"verts2d must have shape \[\*, 3, 2\]"):
        K.triangle_setup(torch.zeros(2, 4, 2, device=DEV), torch.ones(2, device=DEV), torch.ones(2, device=DEV), 8, 8)
    with pytest.raises(TypeError, match="float32"):
        K.slice_4d(torch.zeros(2, 4, dtype=torch.float64, device=DEV), torch.zeros(2, 4, 4, device=DEV),
                   torch.zeros(2, device=DEV), 0.0)
    with pytest.raises(ValueError, match="Gaussians4D.cov4 must have shape"):
        P.Gaussians4D(torch.zeros(3, 4), torch.zeros(3, 3, 3), torch.zeros(3), torch.zeros(3, 3))
    verts = (torch.randn(3, 3, 3) * 0.3).to(DEV).requires_grad_()
    with pytest.raises(RuntimeError, match="render_triangles: the numba setup kernels have no backward pass"):
        P.render_triangles(verts, torch.ones(3, 3, device=DEV), torch.ones(3, device=DEV), torch.ones(3, device=DEV),
                           splat.orbit_camera(0, 0, 3.0, 8, 8).to(DEV), backend="numba")
    with pytest.raises(ValueError, match=r"render_triangles: verts must have shape \[N, 3, 3\]"):
        P.render_triangles(torch.zeros(3, 3, 2), torch.zeros(3, 3), torch.ones(3), torch.ones(3),
                           splat.orbit_camera(0, 0, 3.0, 8, 8))


# ------------------------------------------------------------------ GPU: full sizes

@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["4d", "triangle", "convex", "mesh", "gabor"])
def test_gpu_full_hd_numba_matches_torch(kind):
    gen = torch.Generator().manual_seed(7)
    camera = splat.benchmark_camera(1920, 1080, device=DEV)
    n = 20_000
    if kind == "4d":
        m, c, o = random_4d(n, gen)
        m[:, 2] += 5.0
        scene = P.Gaussians4D(m.float(), (c * 0.05).float(), o.float(), torch.rand(n, 3, generator=gen))
        scene = P.Gaussians4D(*(x.to(DEV) for x in (scene.means4, scene.cov4, scene.opacities, scene.colors)))
        a, b = (P.render_4d(scene, camera, 0.1, backend=k) for k in ("torch", "numba"))
    elif kind == "triangle":
        verts = (_triangle_scene(gen, n) * 0.6 + torch.tensor([0.0, 0.0, 5.0])).to(DEV)
        args = (torch.rand(n, 3, generator=gen).to(DEV), (0.3 + torch.rand(n, generator=gen)).to(DEV),
                torch.rand(n, generator=gen).to(DEV))
        a, b = (P.render_triangles(verts, *args, camera, backend=k) for k in ("torch", "numba"))
    elif kind == "gabor":
        g = splat.random_gaussians(n, gen, device=DEV)
        cov = splat.torch_impl.covariance_3d(g.quats, g.scales)
        freqs = (torch.randn(n, 2, 3, generator=gen).to(DEV) / g.scales.amax(-1)[:, None, None]).contiguous()
        args = (g.means, cov, freqs, torch.full((n, 2), 0.3, device=DEV), g.opacities, torch.rand(n, 3, device=DEV))
        a, b = (P.render_gabors(*args, camera, backend=k) for k in ("torch", "numba"))
    elif kind == "mesh":
        verts, faces = P.toy_cylinder(40, 64)
        verts = T.twist(verts, 1.0) + torch.tensor([0.0, 0.0, 3.0])
        att = P.attach_random(faces, n, gen).to(DEV)
        a, b = (P.render_mesh_gaussians(verts.to(DEV), faces.to(DEV), att, camera, backend=k)
                for k in ("torch", "numba"))
    else:
        pts = (torch.randn(n, 1, 3, generator=gen) + 0.1 * torch.randn(n, 6, 3, generator=gen)
               + torch.tensor([0.0, 0.0, 5.0])).to(DEV)
        args = [x.to(DEV) for x in (torch.rand(n, 3, generator=gen), 1 + torch.rand(n, generator=gen),
                                    0.5 + torch.rand(n, generator=gen), torch.rand(n, generator=gen))]
        a, b = (P.render_convexes(pts, *args, camera, backend=k) for k in ("torch", "numba"))
    assert (a.radii > 0).any()
    close(b.image, a.image, atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("kind", P.fitting.KINDS)
def test_fitting_a_hard_edged_target_lowers_the_error(kind):
    target = P.fitting.hard_edged_target(16, 16)
    fit = P.fitting.fit_2d(kind, target, n=6, steps=6)
    assert fit.history[-1] < fit.history[0]
    assert fit.image.shape == target.shape and math.isfinite(fit.psnr)


# ------------------------------------------------------------------ mesh-attached Gaussians

def test_mesh_gaussians_twins_agree_and_an_undeformed_mesh_renders_as_the_static_scene():
    gen = torch.Generator().manual_seed(4)
    verts, faces = P.toy_cylinder(4, 6)
    att = P.attach_random(faces, 37, gen)
    att.offsets = 0.02 * torch.randn(37, generator=gen)
    bent = T.twist(verts, 0.8)
    args = (bent, faces, att.tri_ids, att.barys, att.offsets, att.local_rot, att.scales)
    mt, ct = T.mesh_gaussians(*(a.double() if a.is_floating_point() else a for a in args))
    mk, ck = K.mesh_gaussians(*(a.to(DEV) for a in args))
    close(mk, mt, atol=1e-5)
    close(ck, ct, atol=1e-6)
    # the rest pose rebuilt every frame = the static Gaussians it defines (means, R, S)
    means, cov = T.mesh_gaussians(verts, faces, att.tri_ids, att.barys, att.offsets, att.local_rot, att.scales)
    rot = T.triangle_frames(verts, faces)[att.tri_ids.long()] @ att.local_rot
    close(cov, (rot * att.scales[:, None, :]) @ (rot * att.scales[:, None, :]).transpose(1, 2))
    camera = splat.orbit_camera(30, 10, 2.5, 24, 20)
    frame = P.render_mesh_gaussians(verts, faces, att, camera, backend="torch")
    proj = T.project_covariances(means, cov, camera)
    assert (frame.transmittance < 0.9).sum() > 10
    # a rigid motion of the mesh moves every Gaussian rigidly
    q = splat.torch_impl.quat_to_rotmat(torch.tensor([[0.9, 0.1, -0.3, 0.2]]))[0]
    m2, c2 = T.mesh_gaussians(verts @ q.T, faces, att.tri_ids, att.barys, att.offsets, att.local_rot, att.scales)
    close(m2, means @ q.T, atol=1e-5)
    close(c2, q @ cov @ q.T, atol=1e-6)
    assert (proj.radii > 0).sum() > 10


# ------------------------------------------------------------------ relightable Gaussians

def _relight_inputs(n, gen, samples=64):
    return (torch.randn(n, 3, generator=gen), torch.rand(n, 3, generator=gen), 0.1 + 0.9 * torch.rand(n, generator=gen),
            torch.randn(n, 3, generator=gen), torch.rand(n, samples, generator=gen),
            0.5 * torch.randn(9, 3, generator=gen), 0.3 * torch.randn(n, 9, 3, generator=gen))


def test_relight_twins_agree_and_the_diffuse_part_integrates_the_hemisphere():
    gen = torch.Generator().manual_seed(8)
    args = _relight_inputs(5, gen)
    args[0][0] = torch.tensor([0.0, 0.0, -1.0])                  # the normal the rotation flips
    close(K.relight(*(a.to(DEV) for a in args)), T.relight(*(a.double() for a in args)), atol=2e-5, rtol=1e-4)
    dirs = T.fibonacci_hemisphere(args[0].double(), 64)
    unit = args[0].double() / args[0].double().norm(dim=-1, keepdim=True)
    close(dirs.norm(dim=-1), torch.ones(5, 64, dtype=torch.float64))
    assert ((dirs * unit[:, None]).sum(-1) >= math.sin(math.radians(10)) - 1e-9).all()   # all on the hemisphere
    # a white environment (L = 1), no local light, visibility 1: the diffuse part is
    # albedo / pi * 2 pi * mean(n.w) = 2 albedo mean(z_k), close to the albedo
    n = 4
    env = torch.zeros(9, 3, dtype=torch.float64)
    env[0] = 1 / splat.SH_C0
    normals, views = torch.randn(n, 3, generator=gen, dtype=torch.float64), torch.randn(n, 3, generator=gen,
                                                                                          dtype=torch.float64)
    rough, albedo = torch.rand(n, generator=gen, dtype=torch.float64), torch.rand(n, 3, generator=gen,
                                                                                 dtype=torch.float64)
    rest = (torch.ones(n, 64, dtype=torch.float64), env, torch.zeros(n, 9, 3, dtype=torch.float64))
    diffuse = T.relight(normals, albedo, rough, views, *rest) - T.relight(normals, 0 * albedo, rough, views, *rest)
    k = torch.arange(64, dtype=torch.float64)
    mean_z = (1 - 2 * k / 127).clamp_min(math.sin(math.radians(10))).mean()
    close(diffuse, 2 * albedo * mean_z, atol=1e-9)
    assert abs(float(mean_z) - 0.5) < 0.03
    # visibility 0 and no local light: dark
    dark = T.relight(normals, albedo, rough, views, torch.zeros(n, 64, dtype=torch.float64), env, rest[2])
    assert (dark == 0).all()


# ------------------------------------------------------------------ GI-GS indirect diffuse

def test_indirect_diffuse_twins_agree_bounce_in_a_corner_and_not_off_a_lone_wall():
    pos, normal, albedo, metal = P.corner_gbuffer(6, 7, 5.0, torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)
    normal = normal + 1e-3 * torch.randn(6, 7, 3, generator=gen)
    rgb = torch.rand(6, 7, 3, generator=gen)
    f0 = 0.04 + (albedo - 0.04) * metal[..., None]
    args = (pos, normal, rgb, albedo, metal, f0, 5.0, 5.0)
    spec = T.indirect_diffuse(*(a.double() if isinstance(a, torch.Tensor) else a for a in args), delta=0.25)
    mine = K.indirect_diffuse(*(a.to(DEV) if isinstance(a, torch.Tensor) else a for a in args), delta=0.25)
    close(mine, spec, atol=1e-5, rtol=1e-4)
    full = T.indirect_diffuse(*(a.double() if isinstance(a, torch.Tensor) else a for a in args))
    lit = full.amax(-1) > 1e-5
    assert lit.sum() >= 8 and lit[-1].sum() >= 4                   # the floor sees the wall and back
    assert full[-1].mean() > 100 * full[0].mean()                  # the wall's top row, far from the floor, not
    wall = pos.clone().double()
    wall[..., 2] = 2.0                                             # one plane facing the camera
    flat = torch.zeros_like(normal).double()
    flat[..., 2] = -1.0
    lone = T.indirect_diffuse(wall, flat, rgb.double(), albedo.double(), metal.double(), f0.double(), 5.0, 5.0)
    assert lone.abs().max() < 1e-9                                 # nothing to bounce off


# ------------------------------------------------------------------ Gabor primitives

def test_projected_gabor_frequency_matches_the_integral_along_the_ray():
    gen = torch.Generator().manual_seed(12)
    for _ in range(3):
        m = torch.randn(3, 3, generator=gen, dtype=torch.float64)
        cov = m @ m.T + 0.1 * torch.eye(3, dtype=torch.float64)
        affine = torch.randn(2, 3, generator=gen, dtype=torch.float64)
        f = 0.3 * torch.randn(1, 3, generator=gen, dtype=torch.float64)
        f2, atten = T.project_frequencies(cov[None], affine[None], f[None])
        ray = torch.linalg.svd(affine).Vh[-1]                       # the direction T maps to 0
        u = torch.randn(2, generator=gen, dtype=torch.float64)
        ts = torch.linspace(-60, 60, 120_001, dtype=torch.float64)
        xs = torch.linalg.pinv(affine) @ u + ts[:, None] * ray
        gauss = torch.exp(-0.5 * ((xs @ torch.linalg.inv(cov)) * xs).sum(-1))
        along = (gauss * torch.cos(2 * math.pi * (xs @ f[0]))).sum() / gauss.sum()
        close(along, atten[0, 0] * torch.cos(2 * math.pi * (f2[0, 0] @ u)), atol=1e-7)


def test_gabor_twins_agree_and_zero_frequencies_give_the_gaussian():
    gen = torch.Generator().manual_seed(13)
    scene = splat.random_gaussians(11, gen, device="cpu")
    camera = splat.benchmark_camera(16, 15)
    cov = splat.torch_impl.covariance_3d(scene.quats, scene.scales)
    freqs = 2.0 * torch.randn(11, 2, 3, generator=gen)
    weights = 0.5 * torch.rand(11, 2, generator=gen)
    spec, proj = T.gabor_setup(scene.means.double(), cov.double(), freqs.double(), weights.double(),
                               scene.opacities.double(), camera)
    mine, _ = K.gabor_setup(*(a.to(DEV) for a in (scene.means, cov, freqs, weights, scene.opacities)), camera.to(DEV))
    close(mine, spec, atol=1e-4, rtol=1e-3)
    assert (spec[:, 8:12:3] < weights.double() - 1e-6).any()       # some frequencies attenuated by the ray
    colours = torch.rand(11, 3, generator=gen)
    frame0 = P.render_gabors(scene.means, cov, torch.zeros_like(freqs), weights, scene.opacities, colours, camera,
                             backend="torch")
    ref = splat.render(scene, camera, backend="torch", features=colours)
    close(frame0.image, ref.image, atol=1e-5)
    assert (ref.transmittance < 0.95).any()
    # whole frames, numba against torch, with the modulation on
    a = P.render_gabors(scene.means, cov, freqs, weights, scene.opacities, colours, camera, backend="torch")
    b = P.render_gabors(*(t.to(DEV) for t in (scene.means, cov, freqs, weights, scene.opacities, colours)),
                        camera.to(DEV), backend="numba")
    close(b.image, a.image, atol=1e-4)
