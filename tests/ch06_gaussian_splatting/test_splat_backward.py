"""Chapter 06: the numba backward pass against torch autograd of the torch path (float64).

The numba kernels work in float32; the reference differentiates the torch specification in
float64 on the same (float32-representable) inputs, so the comparison measures the kernels'
error, not the reference's. Scenes are tiny under the simulator (a tile is 256 Python threads).
"""
import math

import pytest
import torch

import gpulab
from gpulab import splat
from gpulab.splat import autograd as A
from gpulab.splat import backward as B
from gpulab.splat import kernels as K
from gpulab.splat import torch_impl as T

from test_splat import DISC, awkward_scene

DEV = gpulab.device
FIELDS = ("means", "quats", "scales", "opacities", "sh")


def leaves(scene: splat.Gaussians, dtype):
    return [getattr(scene, f).detach().to(dtype).clone().requires_grad_() for f in FIELDS]


def scene_gradients(scene, camera, background, backend, dtype, seed=0):
    """Gradients of a random linear function of (image, transmittance) w.r.t. the scene and background."""
    params = leaves(scene, dtype)
    bg = background.detach().to(dtype).clone().requires_grad_()
    out = splat.render(splat.Gaussians(*params), camera, bg, backend=backend)
    gen = torch.Generator().manual_seed(seed)
    w_image = torch.randn(out.image.shape, generator=gen).to(DEV, dtype)
    w_trans = torch.randn(out.transmittance.shape, generator=gen).to(DEV, dtype)
    ((out.image * w_image).sum() + (out.transmittance * w_trans).sum()).backward()
    grads = {f: p.grad for f, p in zip(FIELDS, params)}
    grads["background"] = bg.grad
    return out, grads


def assert_gradients_close(ours, ref, rtol=2e-4):
    """Each field's error is small against that field's largest gradient (float32 atomics, exp)."""
    for name, want in ref.items():
        got = ours[name]
        assert got is not None and got.shape == want.shape, name
        scale = max(want.abs().max().item(), 1e-6)
        err = (got.double() - want).abs().max().item()
        assert err <= rtol * scale, f"{name}: max |numba - autograd| = {err:.3g}, largest gradient {scale:.3g}"


def assert_same_structure(a, b):
    """The float32 and float64 passes made the same discrete choices (culling, tiles, order)."""
    assert torch.equal(a.projection.radii, b.projection.radii)
    assert torch.equal(a.keys >> 32, b.keys >> 32) and torch.equal(a.gaussian_ids, b.gaussian_ids)


def test_gradients_match_autograd_on_awkward_scene():
    # random Gaussians plus ones behind the camera, inside the near plane, flat, zero-scaled,
    # with a zero quaternion, off screen (clamped Jacobian) and huge (every tile)
    scene = awkward_scene(20, seed=3)
    scene.means[-6, 2] = 0.19     # "on the near plane" rounds to either side in float32/float64
    cam = splat.benchmark_camera(20, 18)                   # 2 x 2 tiles, two of them partial
    bg = torch.tensor([0.1, 0.2, 0.3], device=DEV)
    ref_out, ref = scene_gradients(scene, cam, bg, "torch", torch.float64)
    out, ours = scene_gradients(scene, cam, bg, "numba", torch.float32)
    assert out.backend == "numba"
    assert_same_structure(out, ref_out)
    assert_gradients_close(ours, ref)
    for f in ("means", "quats", "scales", "opacities"):   # behind the camera and culled: nothing
        assert ours[f][-8].abs().sum() == 0 and ours[f][-7].abs().sum() == 0, f
    assert ours["quats"][-3].abs().sum() == 0             # zero quaternion: R = I, no gradient
    assert ours["means"][-1].abs().sum() > 0 and ours["scales"][-1].abs().sum() > 0   # the huge one


def test_one_gaussian_and_empty_tiles():
    # one Gaussian in the top-left tile of a 3 x 2 tile image: five tiles have empty lists
    scene = splat.Gaussians(torch.tensor([[-0.55, -0.3, 2.0]]), torch.tensor([[0.9, 0.1, -0.2, 0.3]]),
                            torch.tensor([[0.04, 0.03, 0.02]]), torch.tensor([0.8]),
                            torch.tensor([[[0.4, -0.2, 0.9]]])).to(DEV)
    cam = splat.benchmark_camera(40, 30)
    bg = torch.tensor([0.5, 0.0, 1.0], device=DEV)
    ref_out, ref = scene_gradients(scene, cam, bg, "torch", torch.float64, seed=1)
    out, ours = scene_gradients(scene, cam, bg, "numba", torch.float32, seed=1)
    assert_same_structure(out, ref_out)
    counts = (out.ranges[:, 1] - out.ranges[:, 0]).tolist()
    assert counts.count(0) == 5 and max(counts) == 1
    assert_gradients_close(ours, ref)
    assert all(ours[f].abs().sum() > 0 for f in FIELDS)


def test_compositing_gradients_through_early_stop():
    # five nearly opaque Gaussians on one pixel: T falls below 1e-4 and the pixel stops after
    # the second; neighbours see weaker alphas and use all five. The backward pass must start
    # each pixel at its own last contributor and divide T back from the stored final value.
    means2d = torch.tensor([[8.5, 8.5], [8.6, 8.4], [8.4, 8.7], [9.5, 8.5], [7.0, 9.0]])
    conics = torch.tensor([[0.5, 0.05, 0.4]]).repeat(5, 1)
    opac = torch.tensor([0.98, 0.985, 0.97, 0.9, 0.95])
    feats = torch.rand(5, 4, generator=torch.Generator().manual_seed(0))
    ranges = torch.tensor([[0, 5]], dtype=torch.int32, device=DEV)
    ids = torch.arange(5, dtype=torch.int32, device=DEV)
    gen = torch.Generator().manual_seed(2)
    w_image, w_trans = torch.randn(16, 16, 4, generator=gen).to(DEV), torch.randn(16, 16, generator=gen).to(DEV)

    def grads(rasterize, dtype):
        params = splat.gaussian_params(means2d, conics, opac).to(DEV, dtype).requires_grad_()
        f = feats.to(DEV, dtype).requires_grad_()
        bg = torch.tensor([0.2, 0.4, 0.6, 0.8], device=DEV, dtype=dtype).requires_grad_()
        image, trans = rasterize(params, f, bg, ranges, ids, 16, 16)
        ((image * w_image.to(dtype)).sum() + (trans * w_trans.to(dtype)).sum()).backward()
        return trans.detach(), {"params": params.grad, "features": f.grad, "background": bg.grad}

    ref_trans, ref = grads(T.rasterize_tiles, torch.float64)
    trans, ours = grads(A.rasterize_tiles, torch.float32)
    assert float(ref_trans[8, 8]) < 1e-2 and float(ref_trans[0, 0]) > 0.5
    _, _, last = K._launch_raster(splat.gaussian_params(means2d, conics, opac).to(DEV), feats.to(DEV),
                                  torch.zeros(4, device=DEV), ranges, ids, 16, 16)
    assert int(last[8, 8]) < 4 and int(last[15, 15]) == -1    # stopped early; reached by none
    assert_gradients_close(ours, ref)


def test_training_step_on_numba_path_matches_torch_path():
    # one Adam step from the same model on each path lands on the same parameters
    cam = splat.orbit_views(1, 16, 16, distance=2.5)[0]
    with torch.no_grad():
        target = splat.render(splat.toy_object(40), cam, backend="torch").image
    after = {}
    for backend in ("torch", "numba"):
        model = splat.TrainableGaussians(12, extent=0.5)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        loss = ((splat.render(model.gaussians(), cam, backend=backend).image - target) ** 2).mean()
        loss.backward()
        opt.step()
        after[backend] = [p.detach().clone() for p in model.parameters()]
        assert all(p.grad is not None for p in model.parameters())
    for a, b in zip(after["torch"], after["numba"]):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-4)


def test_backward_errors_are_clear():
    g = awkward_scene(3, seed=0)
    cam = splat.benchmark_camera(16, 16)
    params = torch.zeros(2, 4, device=DEV, requires_grad=True)
    with pytest.raises(NotImplementedError, match="Gaussian footprint"):
        splat.rasterize(params, torch.zeros(2, 3, device=DEV), torch.zeros(2, 2, device=DEV),
                        torch.ones(2, dtype=torch.int32, device=DEV), torch.ones(2, device=DEV), 16, 16,
                        footprint=DISC, backend="numba")
    proj = K.project_gaussians(g.means, g.quats, g.scales, cam)
    n = len(g)
    with pytest.raises(ValueError, match="v_conics"):
        B.project_gaussians_backward(g.means, g.quats, g.scales, cam, proj.radii, torch.zeros(n, 2, device=DEV),
                                     torch.zeros(n, device=DEV), torch.zeros(n, 2, device=DEV))
    with pytest.raises(ValueError, match="v_image"):
        B.rasterize_tiles_backward(torch.zeros(n, 6, device=DEV), torch.zeros(n, 3, device=DEV),
                                   torch.zeros(3, device=DEV), torch.zeros(1, 2, dtype=torch.int32, device=DEV),
                                   torch.zeros(0, dtype=torch.int32, device=DEV), torch.ones(16, 16, device=DEV),
                                   torch.zeros(16, 16, dtype=torch.int32, device=DEV),
                                   torch.zeros(16, 16, 2, device=DEV), torch.zeros(16, 16, device=DEV))


# ------------------------------------------------------------------ GPU only (warp-summed atomics)

@pytest.mark.gpu
def test_gpu_gradients_match_autograd_at_moderate_size():
    # thousands of Gaussians over 300 tiles: warps share Gaussians, so the shuffle sums and
    # atomics are exercised as they are at full size. float32 sums over many pixels cancel
    # (a scale's gradient gathers signed terms from every pixel it covers), so the bar is the
    # torch path's own float32 error against float64, not a fixed fraction
    scene = splat.random_gaussians(3000, torch.Generator().manual_seed(5), sh_degree=1)
    cam = splat.benchmark_camera(321, 239)
    bg = torch.tensor([0.3, 0.1, 0.2], device=DEV)
    ref_out, ref = scene_gradients(scene, cam, bg, "torch", torch.float64)
    _, ref32 = scene_gradients(scene, cam, bg, "torch", torch.float32)
    out, ours = scene_gradients(scene, cam, bg, "numba", torch.float32)
    # float32 and float64 may round a radius differently for a rare Gaussian (the box is lossless:
    # a tile more or less only holds pixels below alpha 1/255), so no exact structure here
    assert (out.projection.radii != ref_out.projection.radii).float().mean().item() < 1e-3
    assert B.WARP_REDUCE
    for name, want in ref.items():
        scale = want.abs().max().item()
        err = (ours[name].double() - want).abs().max().item() / scale
        err32 = (ref32[name].double() - want).abs().max().item() / scale
        print(f"{name}: numba {err:.1e}, torch float32 {err32:.1e} (relative to the largest gradient)")
        assert err <= max(1e-3, 4 * err32), f"{name}: numba {err:.2e} vs torch float32 {err32:.2e}"


@pytest.mark.gpu
def test_gpu_fitting_on_numba_path_raises_psnr():
    cams = splat.orbit_views(4, 96, 96, distance=2.5)
    truth = splat.toy_object(400)
    with torch.no_grad():
        targets = [splat.render(truth, c).image for c in cams]
    model = splat.TrainableGaussians(300, extent=0.8)
    history = splat.fit(model, cams, targets, steps=250, lr=0.02, progress=False, backend="numba")
    assert sum(history[-10:]) / 10 > sum(history[:10]) / 10 + 3.0
    assert math.isfinite(history[-1])


def test_lecture_backward_trace_recovers_T_and_matches_autograd():
    # the picture's numbers: T divided back from T_final equals the forward T, and dC/dalpha
    # times alpha/o is autograd's gradient of the pixel's grey level w.r.t. each opacity
    from gpulab.splat import figures as F

    means2d = torch.tensor([[8.5, 8.5], [9.0, 8.0], [8.0, 9.5], [7.5, 7.5]], dtype=torch.float64)
    conics = torch.tensor([[0.3, 0.05, 0.2]], dtype=torch.float64).repeat(4, 1)
    opac = torch.tensor([0.6, 0.5, 0.7, 0.4], dtype=torch.float64, requires_grad=True)
    grey = torch.tensor([0.9, 0.2, 0.5, 0.7], dtype=torch.float64)
    params = splat.gaussian_params(means2d, conics, opac)
    ranges, ids = torch.tensor([[0, 4]], dtype=torch.int32), torch.arange(4, dtype=torch.int32)
    trace = T.trace_pixel(params.detach(), ranges, ids, 8, 8, 16)
    back = F.backward_trace(trace, grey)
    assert back["last"] == 3
    for k in range(4):
        assert back["T_recovered"][k] == pytest.approx(trace["T_before"][k], rel=1e-12)
    image, _ = T.rasterize_tiles(params, grey[:, None], torch.zeros(1, dtype=torch.float64), ranges, ids, 16, 16)
    image[8, 8, 0].backward()
    for k in range(4):
        assert back["dC_dalpha"][k] * trace["alpha"][k] / float(opac[k].detach()) == pytest.approx(float(opac.grad[k]), rel=1e-9)
    assert F.backward_trace_figure(trace, grey).data
