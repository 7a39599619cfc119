"""Volume rendering on packed rays, step by step, in torch: the readable specification.

One public function per step, in the style of nerfacc's ``volrend.py`` (Li et al. 2023); :mod:`.kernels` has the same functions as numba.cuda kernels. The
quadrature is the original NeRF's (Mildenhall et al. 2020, arXiv:2003.08934):

    delta_i = (t_end_i - t_start_i) * |d|          (t is measured in units of the ray's d)
    alpha_i = 1 - exp(-sigma_i * delta_i)
    T_i     = prod_{j<i} (1 - alpha_j)             (exclusive: the first sample sees T = 1)
    w_i     = T_i * alpha_i,   colour = sum_i w_i c_i,   opacity = sum_i w_i = 1 - T_final

Samples are packed (see :mod:`.packing`): flat per-sample arrays and ``packed_info[r] =
(start, count)``. Everything is float32 in, float32 out; the scans run row by row.
"""
from __future__ import annotations

import torch

from .packing import check_packed_info, segment_view

__all__ = ["pinhole_rays", "stratified_samples", "render_transmittance_from_alpha",
           "render_transmittance_from_density", "render_weight_from_alpha", "render_weight_from_density",
           "render_visibility_from_alpha", "accumulate_along_rays", "sample_pdf"]

EARLY_STOP_EPS = 1e-4      # nerfacc's default: a ray whose transmittance fell below it is done
PDF_PADDING = 1e-5         # NeRF's sample_pdf: weights + 1e-5, so an empty ray gives a uniform pdf


def _check(t, name: str, dim: int, who: str, dtype=torch.float32) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{who}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise TypeError(f"{who}: {name} must be {dtype}, got {t.dtype} (convert with .to({dtype}))")
    if t.dim() != dim:
        raise ValueError(f"{who}: {name} must be {dim}-D, got shape {list(t.shape)}")


def _check_samples(who: str, packed_info, *named) -> None:
    n = named[0][1].shape[0] if isinstance(named[0][1], torch.Tensor) else 0
    for name, t in named:
        _check(t, name, 1, who)
        if t.shape[0] != n:
            raise ValueError(f"{who}: {name} has {t.shape[0]} samples, {named[0][0]} has {n}")
    check_packed_info(packed_info, n, who)


def _unsegment(dense: torch.Tensor, mask: torch.Tensor, packed_info: torch.Tensor, n: int) -> torch.Tensor:
    """Scatter a dense [n_rays, width] back to packed order (works for any starts)."""
    cols = torch.arange(dense.shape[1], device=dense.device)
    index = packed_info[:, :1] + cols[None, :]
    out = torch.zeros(n, dtype=dense.dtype, device=dense.device)
    out[index[mask]] = dense[mask]
    return out


def _owners_and_positions(packed_info: torch.Tensor):
    """For every (ray, k-th sample) pair in ray order: the ray and the packed position start + k."""
    starts, counts = packed_info[:, 0].to(torch.int64), packed_info[:, 1].to(torch.int64)
    owner = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    first = torch.cumsum(counts, 0) - counts                  # where each ray's run begins in ray order
    k = torch.arange(owner.numel(), device=counts.device) - first[owner]
    return owner, starts[owner] + k


def _deltas(t_starts, t_ends, packed_info, dir_norms):
    """delta_i = (t_end - t_start) |d|: t is in units of d, the density integrates over distance."""
    deltas = t_ends - t_starts
    if dir_norms is not None:
        _check(dir_norms, "dir_norms", 1, "render_*_from_density")
        if dir_norms.shape[0] != packed_info.shape[0]:
            raise ValueError(f"dir_norms must have one entry per ray ({packed_info.shape[0]}), got {dir_norms.shape[0]}")
        deltas = deltas * torch.repeat_interleave(dir_norms, packed_info[:, 1].to(torch.int64))
    return deltas


# ------------------------------------------------------------------ rays and samples

def pinhole_rays(c2w: torch.Tensor, fx: float, fy: float, cx: float, cy: float, width: int, height: int):
    """One ray per pixel of a pinhole camera, through the pixel's CENTRE (u + 0.5, v + 0.5).

    ``c2w`` is ``[3, 4]`` camera-to-world (OpenCV axes: x right, y down, z forward). The
    direction is ``R @ ((u + 0.5 - cx) / fx, (v + 0.5 - cy) / fy, 1)``, NOT normalised (its
    z in camera space is 1, as in NeRF's ``get_rays``), so |d| > 1 off-axis: render with
    ``dir_norms = dirs.norm(dim=-1)``. Returns ``origins, dirs``, each ``[height * width, 3]``
    in row-major pixel order.

    Example: a 2x2 image with fx = fy = 1, cx = cy = 1 and the identity pose gives the
    directions (-0.5, -0.5, 1), (0.5, -0.5, 1), (-0.5, 0.5, 1), (0.5, 0.5, 1).
    """
    _check(c2w, "c2w", 2, "pinhole_rays")
    if tuple(c2w.shape) != (3, 4):
        raise ValueError(f"pinhole_rays: c2w must be [3, 4] camera-to-world, got {list(c2w.shape)}")
    if width < 1 or height < 1:
        raise ValueError(f"pinhole_rays: the image must be at least 1x1, got {width}x{height}")
    v, u = torch.meshgrid(torch.arange(height, device=c2w.device, dtype=torch.float32),
                          torch.arange(width, device=c2w.device, dtype=torch.float32), indexing="ij")
    cam = torch.stack([(u + 0.5 - cx) / fx, (v + 0.5 - cy) / fy, torch.ones_like(u)], dim=-1).reshape(-1, 3)
    dirs = cam @ c2w[:, :3].T
    origins = c2w[:, 3].expand_as(dirs).contiguous()
    return origins, dirs.contiguous()


def stratified_samples(near: torch.Tensor, far: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Stratified depths: [near, far] cut into N equal bins, ONE jittered sample per bin.

    ``z[r, i] = near[r] + (i + u[r, i]) * (far[r] - near[r]) / N`` with ``u`` in [0, 1)
    (``u = 0.5`` everywhere gives the bin centres, NeRF's deterministic test-time samples).
    ``near, far``: ``[n_rays]``; ``u``: ``[n_rays, N]``. Returns ``[n_rays, N]``, sorted per ray.
    """
    for name, t, d in (("near", near, 1), ("far", far, 1), ("u", u, 2)):
        _check(t, name, d, "stratified_samples")
    if not (near.shape[0] == far.shape[0] == u.shape[0]):
        raise ValueError("stratified_samples: near, far and u must have one row per ray")
    n = u.shape[1]
    bins = torch.arange(n, device=u.device, dtype=torch.float32)
    return near[:, None] + (bins[None, :] + u) * ((far - near) / n)[:, None]


# ------------------------------------------------------------------ the scans

def render_transmittance_from_alpha(alphas: torch.Tensor, packed_info: torch.Tensor) -> torch.Tensor:
    """Exclusive transmittance ``T_i = prod_{j<i} (1 - alpha_j)`` of every sample.

    Example (nerfacc's test): alphas ``[0.4, 0.3, 0.8, 0.8, 0.5]``, packed_info
    ``[[0, 1], [1, 0], [1, 4]]`` (rays of 1, 0 and 4 samples) give
    ``[1.0, 1.0, 0.7, 0.14, 0.028]``.
    """
    _check_samples("render_transmittance_from_alpha", packed_info, ("alphas", alphas))
    dense, mask = segment_view(alphas, packed_info, fill=0.0)
    # exclusive product: shift by one, the first sample of every ray sees T = 1
    trans = torch.cumprod(torch.cat([torch.ones_like(dense[:, :1]), 1.0 - dense[:, :-1]], dim=1), dim=1)
    return _unsegment(trans, mask, packed_info, alphas.shape[0])


def render_transmittance_from_density(t_starts: torch.Tensor, t_ends: torch.Tensor, sigmas: torch.Tensor,
                                      packed_info: torch.Tensor, dir_norms: torch.Tensor | None = None):
    """``T_i = exp(-sum_{j<i} sigma_j delta_j)`` and ``alpha_i = 1 - exp(-sigma_i delta_i)``.

    ``delta_i = (t_end_i - t_start_i) * |d|`` (``dir_norms``: ``[n_rays]``; None means unit
    directions). Returns ``(trans, alphas)``. Example: one ray, sigmas ``[1, 2]`` over
    intervals of length 0.5 with |d| = 2: alphas ``[1 - e^-1, 1 - e^-2]``, T ``[1, e^-1]``.
    """
    who = "render_transmittance_from_density"
    _check_samples(who, packed_info, ("t_starts", t_starts), ("t_ends", t_ends), ("sigmas", sigmas))
    tau = sigmas * _deltas(t_starts, t_ends, packed_info, dir_norms)        # optical depth per sample
    dense, mask = segment_view(tau, packed_info, fill=0.0)
    exclusive = torch.cumsum(dense, dim=1) - dense
    trans = _unsegment(torch.exp(-exclusive), mask, packed_info, sigmas.shape[0])
    return trans, 1.0 - torch.exp(-tau)


def render_weight_from_alpha(alphas: torch.Tensor, packed_info: torch.Tensor):
    """``w_i = T_i alpha_i``; returns ``(weights, trans)``. Example: the rays of
    :func:`render_transmittance_from_alpha` give weights ``[0.4, 0.3, 0.56, 0.112, 0.014]``."""
    trans = render_transmittance_from_alpha(alphas, packed_info)
    return trans * alphas, trans


def render_weight_from_density(t_starts: torch.Tensor, t_ends: torch.Tensor, sigmas: torch.Tensor,
                               packed_info: torch.Tensor, dir_norms: torch.Tensor | None = None):
    """``w_i = T_i alpha_i`` from densities; returns ``(weights, trans, alphas)``.

    A homogeneous medium of density sigma over a length L gives ``sum w = 1 - exp(-sigma L)``
    whatever the number of samples (the quadrature is exact for piecewise-constant sigma).
    """
    trans, alphas = render_transmittance_from_density(t_starts, t_ends, sigmas, packed_info, dir_norms)
    return trans * alphas, trans, alphas


def render_visibility_from_alpha(alphas: torch.Tensor, packed_info: torch.Tensor,
                                 early_stop_eps: float = EARLY_STOP_EPS, alpha_thre: float = 0.0) -> torch.Tensor:
    """Which samples still matter: ``T_i >= early_stop_eps`` and ``alpha_i >= alpha_thre``.

    Samples behind the point where a ray's transmittance fell under ``early_stop_eps`` (1e-4)
    add less than 1e-4 to its colour: a renderer stops marching there. ``alpha_thre`` drops
    near-transparent samples (nerfacc applies it only when > 0). Example (nerfacc's test):
    the alphas of :func:`render_transmittance_from_alpha` with ``early_stop_eps=0.03`` give
    ``[True, True, True, True, False]`` (T = 0.028 < 0.03 at the last sample).
    """
    trans = render_transmittance_from_alpha(alphas, packed_info)
    visible = trans >= early_stop_eps
    if alpha_thre > 0.0:
        visible = visible & (alphas >= alpha_thre)
    return visible


def accumulate_along_rays(weights: torch.Tensor, values: torch.Tensor, packed_info: torch.Tensor) -> torch.Tensor:
    """``out[r] = sum_{i in ray r} w_i * values_i``: ``values`` ``[n_samples, C]`` gives
    ``[n_rays, C]`` (colour with C = 3; depth with ``values = t_mid[:, None]``; opacity with
    ``values = ones``). An empty ray gives 0: composite a background with ``(1 - opacity)``."""
    who = "accumulate_along_rays"
    _check(weights, "weights", 1, who)
    _check(values, "values", 2, who)
    if values.shape[0] != weights.shape[0]:
        raise ValueError(f"{who}: values has {values.shape[0]} samples, weights has {weights.shape[0]}")
    check_packed_info(packed_info, weights.shape[0], who)
    owner, index = _owners_and_positions(packed_info)
    out = torch.zeros(len(packed_info), values.shape[1], dtype=torch.float32, device=weights.device)
    out.index_add_(0, owner, weights[index, None] * values[index])
    return out


# ------------------------------------------------------------------ hierarchical sampling

def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF samples from the piecewise-constant pdf the coarse weights define (NeRF).

    ``bins``: ``[n_rays, B + 1]`` bin edges (sorted); ``weights``: ``[n_rays, B]``, one per
    bin; ``u``: ``[n_rays, M]`` in [0, 1). Steps, as in NeRF's ``sample_pdf``:

    1. ``pdf = (w + 1e-5) / sum(w + 1e-5)``: the padding keeps an empty ray (all w = 0)
       from dividing 0 by 0; it becomes uniform;
    2. ``cdf = [0, cumsum(pdf)]`` (B + 1 entries, one per edge);
    3. ``k = searchsorted(cdf, u, right=True)``: the first edge whose cdf is > u, so a u equal
       to a cdf value falls in the bin that STARTS there; ``below = max(k - 1, 0)``,
       ``above = min(k, B)``;
    4. ``t = (u - cdf[below]) / (cdf[above] - cdf[below])``, with a denominator under 1e-5
       replaced by 1 (a near-empty bin puts its samples at its start), and
       ``z = bins[below] + t * (bins[above] - bins[below])``.

    Example: bins ``[0, 1, 2]``, weights ``[0, 1]`` (all mass in the second bin) and u = 0.5
    give z = 1.5 (to 1e-4; the padding moves it by ~1e-5).
    """
    who = "sample_pdf"
    for name, t in (("bins", bins), ("weights", weights), ("u", u)):
        _check(t, name, 2, who)
    if bins.shape[0] != weights.shape[0] or u.shape[0] != weights.shape[0]:
        raise ValueError(f"{who}: bins, weights and u must have one row per ray")
    if bins.shape[1] != weights.shape[1] + 1:
        raise ValueError(f"{who}: bins must have one more column (edges) than weights (bins), "
                         f"got {bins.shape[1]} and {weights.shape[1]}")
    padded = weights + PDF_PADDING
    pdf = padded / padded.sum(dim=-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, dim=-1)], dim=-1)
    k = torch.searchsorted(cdf, u.contiguous(), right=True)
    below = (k - 1).clamp(min=0)
    above = k.clamp(max=cdf.shape[1] - 1)
    cdf_lo, cdf_hi = cdf.gather(1, below), cdf.gather(1, above)
    bin_lo, bin_hi = bins.gather(1, below), bins.gather(1, above)
    denom = cdf_hi - cdf_lo
    denom = torch.where(denom < PDF_PADDING, torch.ones_like(denom), denom)
    return bin_lo + (u - cdf_lo) / denom * (bin_hi - bin_lo)
