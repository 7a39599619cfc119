"""The rendering steps on packed rays: numba twin = torch spec, known answers (nerfacc's
worked example, a homogeneous box, a Gaussian blob against erf), empty and zero-length
rays, inverse-CDF sampling against its pdf (KS test), and clear errors."""
import math

import pytest
import scipy.stats
import torch

import gpulab  # noqa: F401  (before numba)
from helpers import assert_twins_equal
from gpulab.nerf import fields, kernels as K, pack_info, ray_indices, torch_impl as T

# ray sample counts with an empty ray, a one-sample ray and rays past one block of threads
COUNTS = {1: [1], 7: [3, 0, 5, 1, 7, 0, 2], 130: None}


def _packed(size, gen):
    counts = torch.tensor(COUNTS[size]) if COUNTS[size] else torch.randint(0, 6, (size,), generator=gen)
    info = pack_info(counts)
    n = int(counts.sum())
    t_starts = torch.rand(n, generator=gen) * 2
    t_ends = t_starts + torch.rand(n, generator=gen) * 0.3
    sigmas = torch.rand(n, generator=gen) * 4
    return info, n, t_starts, t_ends, sigmas


def test_scans_twins_agree():
    def density_inputs(size, gen):
        info, n, ts, te, sig = _packed(size, gen)
        return ts, te, sig, info, 1 + torch.rand(len(info), generator=gen)

    def alpha_inputs(size, gen):
        info, n, *_ = _packed(size, gen)
        return torch.rand(n, generator=gen), info

    assert assert_twins_equal(T.render_weight_from_density, K.render_weight_from_density, density_inputs,
                              sizes=COUNTS) == 3
    assert assert_twins_equal(T.render_weight_from_alpha, K.render_weight_from_alpha, alpha_inputs, sizes=COUNTS) == 3
    assert assert_twins_equal(lambda a, p: T.render_visibility_from_alpha(a, p, 0.05, 0.2),
                              lambda a, p: K.render_visibility_from_alpha(a, p, 0.05, 0.2), alpha_inputs,
                              sizes=COUNTS) == 3

    def accumulate_inputs(size, gen):
        weights, info = alpha_inputs(size, gen)
        return weights, torch.rand(weights.shape[0], 3, generator=gen), info

    assert assert_twins_equal(T.accumulate_along_rays, K.accumulate_along_rays, accumulate_inputs, sizes=[7, 130]) == 2


def test_rays_samples_and_pdf_twins_agree():
    def camera(size, gen):
        c2w = torch.cat([torch.linalg.qr(torch.randn(3, 3, generator=gen))[0], torch.randn(3, 1, generator=gen)], 1)
        return c2w.float(), 9.0, 7.5, 3.2, 2.1, size, 3

    def strata(size, gen):
        near = torch.rand(size, generator=gen)
        return near, near + torch.rand(size, generator=gen), torch.rand(size, 5, generator=gen)

    def pdf(size, gen):
        bins = torch.sort(torch.rand(size, 9, generator=gen) * 4, dim=1).values
        weights = torch.rand(size, 8, generator=gen) * (torch.rand(size, 8, generator=gen) < 0.6)
        weights[0] = 0.0                                          # an empty ray: uniform pdf, no NaN
        return bins, weights, torch.rand(size, 11, generator=gen)

    assert assert_twins_equal(T.pinhole_rays, K.pinhole_rays, camera, sizes=[1, 5]) == 2
    assert assert_twins_equal(T.stratified_samples, K.stratified_samples, strata, sizes=[1, 13]) == 2
    assert assert_twins_equal(T.sample_pdf, K.sample_pdf, pdf, sizes=[1, 13], atol=1e-5, rtol=1e-5) == 2


@pytest.mark.parametrize("impl", [T, K], ids=["torch", "numba"])
def test_nerfacc_worked_example(impl):
    info = pack_info(torch.tensor([1, 0, 4])).to(gpulab.device)
    alphas = torch.tensor([0.4, 0.3, 0.8, 0.8, 0.5], device=gpulab.device)
    torch.testing.assert_close(impl.render_transmittance_from_alpha(alphas, info).cpu(),
                               torch.tensor([1.0, 1.0, 0.7, 0.14, 0.028]))
    weights, _ = impl.render_weight_from_alpha(alphas, info)
    torch.testing.assert_close(weights.cpu(), torch.tensor([0.4, 0.3, 0.56, 0.112, 0.014]))
    assert impl.render_visibility_from_alpha(alphas, info, early_stop_eps=0.03).cpu().tolist() == \
        [True, True, True, True, False]
    assert impl.render_visibility_from_alpha(alphas, info, alpha_thre=0.45).cpu().tolist() == \
        [False, False, True, True, True]
    assert ray_indices(info).tolist() == [0, 2, 2, 2, 2]


@pytest.mark.parametrize("impl", [T, K], ids=["torch", "numba"])
def test_homogeneous_box_gives_exp_minus_sigma_length(impl):
    """Rays with non-unit d through a box of density 2: T_final = exp(-sigma L), L the
    distance inside, whatever the number of samples, because delta is (t1 - t0) |d|."""
    box = fields.BoxField(sigma=2.0)
    gen = torch.Generator().manual_seed(3)
    dirs = torch.nn.functional.normalize(torch.randn(5, 3, generator=gen) * 0.2 + torch.tensor([0, 0, 1.0]), dim=1)
    origins = torch.tensor([0.0, 0.0, -2.0]) + 0.1 * torch.randn(5, 3, generator=gen)
    expected = box.transmittance(origins, dirs, 0.0, 10.0)
    scale = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.7])                # d scaled: t is in units of |d|
    counts = torch.tensor([64, 100, 33, 7, 250])
    info = pack_info(counts)
    ray = ray_indices(info)
    k = torch.cat([torch.arange(c) for c in counts.tolist()]).float()
    # t from 0 to 4 / |d| (distance 0 to 4 covers the box), midpoint density
    length = 4.0 / scale[ray]
    t0, t1 = k / counts[ray] * length, (k + 1) / counts[ray] * length
    mid = origins[ray] + ((t0 + t1) / 2 * scale[ray])[:, None] * dirs[ray]
    sigmas = box.density(mid)
    args = [x.to(gpulab.device) for x in (t0, t1, sigmas, info, scale)]
    weights, trans, _ = impl.render_weight_from_density(*args)
    opacity = impl.accumulate_along_rays(weights, torch.ones(len(weights), 1, device=gpulab.device), args[3])
    # midpoint samples straddling the box faces err by at most one interval's share
    tol = 2.0 * 4.0 / counts.float()
    assert ((1 - opacity[:, 0].cpu()) - expected).abs().le(tol * expected + 1e-6).all()
    # without |d| the answer is wrong for the scaled rays: the test can tell
    unscaled, _, _ = T.render_weight_from_density(t0, t1, sigmas, info)
    wrong = 1 - T.accumulate_along_rays(unscaled, torch.ones(len(weights), 1), info)[:, 0]
    assert (wrong - expected).abs()[scale != 1].min() > 0.02


def test_gaussian_blob_matches_erf():
    blob = fields.GaussianBlob((0.1, -0.05, 0.0), 0.15, 25.0)
    gen = torch.Generator().manual_seed(4)
    n_rays, n = 6, 400
    origins = torch.tensor([0.0, 0.0, -1.5]) + 0.04 * torch.randn(n_rays, 3, generator=gen)
    dirs = torch.nn.functional.normalize(torch.tensor([0, 0, 1.0]) + 0.04 * torch.randn(n_rays, 3, generator=gen), dim=1)
    u = torch.rand(n_rays, n, generator=gen)
    near, far = torch.full((n_rays,), 0.5), torch.full((n_rays,), 2.5)
    z = T.stratified_samples(near, far, u)
    edges = near[:, None] + (far - near)[:, None] * torch.arange(n + 1) / n   # each bin's interval
    pts = origins[:, None] + z[..., None] * dirs[:, None]
    info = pack_info(torch.full((n_rays,), n))
    w, _, _ = T.render_weight_from_density(edges[:, :-1].reshape(-1), edges[:, 1:].reshape(-1),
                                           blob.density(pts.reshape(-1, 3)), info)
    opacity = T.accumulate_along_rays(w, torch.ones(len(w), 1), info)[:, 0]
    expected = 1 - torch.exp(-blob.optical_depth(origins, dirs, near, far))
    assert expected.min() > 0.2                                  # the rays do cross the blob
    torch.testing.assert_close(opacity, expected, atol=3e-3, rtol=0)


@pytest.mark.parametrize("impl", [T, K], ids=["torch", "numba"])
def test_empty_and_zero_length_rays(impl):
    dev = gpulab.device
    info = pack_info(torch.tensor([0, 3, 0])).to(dev)
    t = torch.full((3,), 0.7, device=dev)                        # ray 1: zero length (t0 = t1)
    weights, trans, alphas = impl.render_weight_from_density(t, t.clone(), torch.full((3,), 5.0, device=dev), info)
    assert weights.abs().max() == 0 and (trans == 1).all() and not torch.isnan(weights).any()
    out = impl.accumulate_along_rays(weights, torch.ones(3, 3, device=dev), info)
    assert out.shape == (3, 3) and (out == 0).all()               # empty rays give 0, not garbage
    bins = torch.full((2, 5), 0.7, device=dev)                   # a zero-length ray's bins
    z = impl.sample_pdf(bins, torch.zeros(2, 4, device=dev), torch.rand(2, 6, device=dev))
    assert torch.isfinite(z).all() and (z == 0.7).all()
    nothing = torch.zeros(0, device=dev)
    w0, _, _ = impl.render_weight_from_density(nothing, nothing, nothing, pack_info(torch.zeros(2, dtype=torch.long)).to(dev))
    assert w0.shape == (0,)


def test_inverse_cdf_samples_pass_a_ks_test():
    """Samples from a piecewise-constant pdf: the KS test against its CDF accepts them, and
    rejects samples drawn with the bins shifted by one (what a wrong below/above gives)."""
    gen = torch.Generator().manual_seed(11)
    bins = torch.tensor([[0.0, 0.5, 1.0, 2.0, 2.5, 4.0]])
    weights = torch.tensor([[0.1, 0.0, 2.0, 0.5, 1.0]])
    z = T.sample_pdf(bins, weights, torch.rand(1, 4000, generator=gen))[0].double().numpy()
    pdf = (weights[0] + 1e-5) / (weights[0] + 1e-5).sum()
    cdf_at_edges = torch.cat([torch.zeros(1), torch.cumsum(pdf, 0)]).double().numpy()
    edges = bins[0].double().numpy()
    import numpy as np
    cdf = lambda x: np.interp(x, edges, cdf_at_edges)
    assert scipy.stats.kstest(z, cdf).pvalue > 0.01
    assert scipy.stats.kstest(z + 0.5, cdf).pvalue < 1e-6


def test_clear_errors():
    info = pack_info(torch.tensor([2]))
    with pytest.raises(TypeError, match="float32"):
        T.render_transmittance_from_alpha(torch.rand(2, dtype=torch.float64), info)
    with pytest.raises(ValueError, match=r"\[n_rays, 2\]"):
        T.render_weight_from_alpha(torch.rand(2), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="past the 2 samples"):
        K.render_weight_from_alpha(torch.rand(2, device=gpulab.device), pack_info(torch.tensor([3])).to(gpulab.device))
    with pytest.raises(ValueError, match="one more column"):
        T.sample_pdf(torch.rand(1, 4), torch.rand(1, 4), torch.rand(1, 2))
    with pytest.raises(ValueError, match=r"\[3, 4\]"):
        K.pinhole_rays(torch.eye(4, device=gpulab.device), 1.0, 1.0, 0.5, 0.5, 2, 2)
    with pytest.raises(ValueError, match="one entry per ray"):
        T.render_weight_from_density(torch.rand(2), torch.rand(2), torch.rand(2), info, torch.ones(3))
