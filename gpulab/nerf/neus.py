"""NeuS: an SDF rendered as opacity (Wang et al. 2021, arXiv:2106.10689), with the constants
of its reference code, as KiloNeuS (Esposito et al. 2022, arXiv:2206.10885) renders it.

The SDF f becomes an opacity through the logistic CDF Phi_s(x) = sigmoid(s x). A ray's
section i (length delta_i, midpoint SDF f_i, cos_i = d . grad f) has ends

    f- = f_i - cos' delta_i / 2,   f+ = f_i + cos' delta_i / 2
    cos' = -(relu(-cos/2 + 1/2) (1 - r) + relu(-cos) r)      r: cos_anneal_ratio, 0 -> 1 in training

(the annealing starts from a cos that is never positive, so early rays see the surface
from both sides; at r = 1 it is -relu(-cos), the true cos where the ray enters), and

    alpha_i = clip((Phi_s(f-) - Phi_s(f+) + 1e-5) / (Phi_s(f-) + 1e-5), 0, 1)

the paper's discrete opacity (its eq. 13: max((Phi(f_i) - Phi(f_i+1)) / Phi(f_i), 0)) with
the code's 1e-5 (a section deep inside, where Phi_s(f-) underflows to 0, would be 0/0).
s = exp(10 v) with the learned v starting at 0.3 (s = 20.1). Sampling: 64 uniform samples,
then 4 up-sampling rounds at the FIXED s = 64 * 2^i (i = 0..3), each adding 16 samples
by inverse CDF from weights whose alpha uses the SDF at consecutive samples (64 + 64).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .torch_impl import sample_pdf

__all__ = ["inv_s_from_variance", "section_ends", "neus_alpha", "neus_alpha_annealed", "neus_weights",
           "up_sample", "neus_depths", "render_neus", "VARIANCE_INIT", "N_SAMPLES", "N_IMPORTANCE",
           "UP_SAMPLE_STEPS", "EPS"]

VARIANCE_INIT = 0.3
N_SAMPLES, N_IMPORTANCE, UP_SAMPLE_STEPS = 64, 64, 4
EPS = 1e-5


def inv_s_from_variance(variance) -> torch.Tensor:
    """s = exp(10 v): NeuS's SingleVarianceNetwork (v = 0.3 gives s = exp(3) = 20.09)."""
    return torch.exp(torch.as_tensor(variance, dtype=torch.float32) * 10.0)


def section_ends(sdf: torch.Tensor, cos: torch.Tensor, dists: torch.Tensor, cos_anneal_ratio: float = 1.0):
    """``(f-, f+)``: the SDF at the two ends of each section, from its midpoint value and
    the annealed cos (see the module's docstring)."""
    iter_cos = -(F.relu(-cos * 0.5 + 0.5) * (1.0 - cos_anneal_ratio) + F.relu(-cos) * cos_anneal_ratio)
    return sdf - iter_cos * dists * 0.5, sdf + iter_cos * dists * 0.5


def neus_alpha(sdf_prev: torch.Tensor, sdf_next: torch.Tensor, inv_s) -> torch.Tensor:
    """``clip((Phi_s(f-) - Phi_s(f+) + 1e-5) / (Phi_s(f-) + 1e-5), 0, 1)``, Phi_s = sigmoid(s x).

    Example: s = 64, a section from f- = 0.01 to f+ = -0.01 (crossing the surface) has
    Phi = 0.655 and 0.345: alpha = 0.473. Leaving the surface (f- < f+) it is 0.
    """
    prev_cdf = torch.sigmoid(sdf_prev * inv_s)
    next_cdf = torch.sigmoid(sdf_next * inv_s)
    return ((prev_cdf - next_cdf + EPS) / (prev_cdf + EPS)).clip(0.0, 1.0)


def neus_alpha_annealed(sdf, cos, dists, inv_s, cos_anneal_ratio: float = 1.0) -> torch.Tensor:
    """The renderer's alpha: :func:`section_ends` then :func:`neus_alpha`."""
    return neus_alpha(*section_ends(sdf, cos, dists, cos_anneal_ratio), inv_s)


def neus_weights(alpha: torch.Tensor) -> torch.Tensor:
    """``w_i = alpha_i prod_{j<i} (1 - alpha_j + 1e-7)`` on dense ``[n_rays, n]`` rows (NeuS's code)."""
    ones = torch.ones_like(alpha[:, :1])
    return alpha * torch.cumprod(torch.cat([ones, 1.0 - alpha + 1e-7], dim=-1), dim=-1)[:, :-1]


def up_sample(z_vals: torch.Tensor, sdf: torch.Tensor, n_importance: int, inv_s: float) -> torch.Tensor:
    """One NeuS up-sampling round: ``n_importance`` new depths per ray (deterministic u).

    Sections between consecutive samples: midpoint SDF, cos from the SDF's slope (the
    smaller of this and the previous section's, clipped to [-1e3, 0]), alpha as above at
    the fixed s, weights, then :func:`~gpulab.nerf.torch_impl.sample_pdf`.
    """
    prev_sdf, next_sdf = sdf[:, :-1], sdf[:, 1:]
    prev_z, next_z = z_vals[:, :-1], z_vals[:, 1:]
    mid_sdf = (prev_sdf + next_sdf) * 0.5
    cos_val = (next_sdf - prev_sdf) / (next_z - prev_z + 1e-5)
    prev_cos = torch.cat([torch.zeros_like(cos_val[:, :1]), cos_val[:, :-1]], dim=-1)
    cos_val = torch.minimum(prev_cos, cos_val).clip(-1e3, 0.0)
    dist = next_z - prev_z
    alpha = neus_alpha(mid_sdf - cos_val * dist * 0.5, mid_sdf + cos_val * dist * 0.5, inv_s)
    weights = neus_weights(alpha)
    u = torch.linspace(0.5 / n_importance, 1.0 - 0.5 / n_importance, n_importance, device=z_vals.device)
    return sample_pdf(z_vals.contiguous(), weights.contiguous(), u.expand(z_vals.shape[0], n_importance).contiguous())


def _sdf_along(origins, dirs, z, sdf_fn):
    pts = origins[:, None, :] + dirs[:, None, :] * z[..., None]
    return sdf_fn(pts.reshape(-1, 3))[0].reshape(z.shape)


def neus_depths(origins, dirs, sdf_fn, near: torch.Tensor, far: torch.Tensor, n_samples: int = N_SAMPLES,
                n_importance: int = N_IMPORTANCE, up_sample_steps: int = UP_SAMPLE_STEPS) -> torch.Tensor:
    """NeuS's sample depths: ``n_samples`` uniform, then ``up_sample_steps`` rounds at
    s = 64 * 2^i adding ``n_importance / up_sample_steps`` each. ``[n_rays, n_samples + n_importance]``."""
    steps = torch.linspace(0.0, 1.0, n_samples, device=origins.device)
    z = near[:, None] + (far - near)[:, None] * steps[None, :]
    sdf = _sdf_along(origins, dirs, z, sdf_fn)
    for i in range(up_sample_steps):
        new_z = up_sample(z, sdf, n_importance // up_sample_steps, 64.0 * 2 ** i)
        z, order = torch.sort(torch.cat([z, new_z], dim=-1), dim=-1)
        sdf = torch.cat([sdf, _sdf_along(origins, dirs, new_z, sdf_fn)], dim=-1).gather(1, order)
    return z


def render_neus(origins, dirs, sdf_fn, near, far, inv_s, cos_anneal_ratio: float = 1.0, **sampling):
    """Weights and midpoints along unit-direction rays: returns ``(weights, mid_z)``, each
    ``[n_rays, n]``; ``sdf_fn(x) -> (sdf [N], gradient [N, 3])``. As NeuS's ``render_core``:
    the last section gets the uniform sample spacing; alpha at the sections' midpoints."""
    z = neus_depths(origins, dirs, sdf_fn, near, far, **sampling)
    sample_dist = ((far - near) / sampling.get("n_samples", N_SAMPLES))[:, None]
    dists = torch.cat([z[:, 1:] - z[:, :-1], sample_dist], dim=-1)
    mid_z = z + dists * 0.5
    pts = (origins[:, None, :] + dirs[:, None, :] * mid_z[..., None]).reshape(-1, 3)
    sdf, grad = sdf_fn(pts)
    cos = (dirs[:, None, :].expand(*mid_z.shape, 3).reshape(-1, 3) * grad).sum(-1)
    alpha = neus_alpha_annealed(sdf, cos, dists.reshape(-1), inv_s, cos_anneal_ratio).reshape(mid_z.shape)
    return neus_weights(alpha), mid_z
