"""The volume-rendering steps of :mod:`.torch_impl` as numba.cuda kernels.

Same public functions and signatures; tests hold them equal. Each scan is one thread per
ray walking its samples front to back (nerfacc's "naive" kernels do the same; its CUB path
scans samples in parallel): a ray's samples are contiguous, so the walk is a running
product or sum in a register and one pass over memory. ``sample_pdf`` is one thread per
ray to build the CDF, then one thread per fine sample for the binary search.

Everything is float32 (constants are ``np.float32`` globals so numba does not promote).
The scans walk a ray's samples with an unsigned ``while`` index (:func:`_samples_of`): a
signed index makes numba add a negative-index fix-up to every load and store, and its
``range`` over int64 bounds keeps a second counter; in the sm_90 SASS that took the
transmittance scan from 28 instructions a sample to under 5.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from numba import cuda

from .. import runtime
from ..launch import kernel
from . import torch_impl as _spec
from .packing import check_packed_info

__all__ = ["pinhole_rays", "stratified_samples", "render_transmittance_from_alpha",
           "render_transmittance_from_density", "render_weight_from_alpha", "render_weight_from_density",
           "render_visibility_from_alpha", "accumulate_along_rays", "sample_pdf", "BLOCK"]

BLOCK = 128                               # threads per block of every kernel here
_ONE, _ZERO, _HALF = np.float32(1.0), np.float32(0.0), np.float32(0.5)
_PAD = np.float32(_spec.PDF_PADDING)


_STEP = np.uint64(1)                      # uint64 + an int literal would be float64 in numba


def _blocks(n: int) -> int:
    return max(1, math.ceil(n / BLOCK))


def _on_device(who: str, *tensors) -> None:
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != runtime.device.type:
            raise ValueError(f"{who}: inputs are on {t.device}; the kernels need tensors on {runtime.device}")


def _packed(packed_info: torch.Tensor) -> torch.Tensor:
    return packed_info.to(torch.int64).contiguous()


def _norms_or_ones(dir_norms, packed_info):
    if dir_norms is None:
        return torch.ones(packed_info.shape[0], dtype=torch.float32, device=packed_info.device)
    _spec._check(dir_norms, "dir_norms", 1, "render_*_from_density")
    if dir_norms.shape[0] != packed_info.shape[0]:
        raise ValueError(f"dir_norms must have one entry per ray ({packed_info.shape[0]}), got {dir_norms.shape[0]}")
    return dir_norms.contiguous()


# ------------------------------------------------------------------ rays and samples

@kernel
def pinhole_rays_kernel(c2w, fx, fy, cx, cy, width, height, origins, dirs):
    i = cuda.grid(1)
    if i >= width * height:
        return
    u = np.float32(i % width) + _HALF                 # the pixel's centre, not its corner
    v = np.float32(i // width) + _HALF
    x, y = (u - cx) / fx, (v - cy) / fy
    for a in range(3):
        dirs[i, a] = c2w[a, 0] * x + c2w[a, 1] * y + c2w[a, 2]
        origins[i, a] = c2w[a, 3]


def pinhole_rays(c2w: torch.Tensor, fx: float, fy: float, cx: float, cy: float, width: int, height: int):
    _spec._check(c2w, "c2w", 2, "pinhole_rays")
    if tuple(c2w.shape) != (3, 4):
        raise ValueError(f"pinhole_rays: c2w must be [3, 4] camera-to-world, got {list(c2w.shape)}")
    if width < 1 or height < 1:
        raise ValueError(f"pinhole_rays: the image must be at least 1x1, got {width}x{height}")
    _on_device("pinhole_rays", c2w)
    n = width * height
    origins = torch.empty(n, 3, dtype=torch.float32, device=c2w.device)
    dirs = torch.empty_like(origins)
    f = np.float32
    pinhole_rays_kernel[_blocks(n), BLOCK](c2w.contiguous(), f(fx), f(fy), f(cx), f(cy), width, height, origins, dirs)
    return origins, dirs


@kernel
def stratified_kernel(near, far, u, z):
    r = cuda.grid(1)
    if r >= z.shape[0]:
        return
    n = z.shape[1]
    width = (far[r] - near[r]) / np.float32(n)
    for i in range(n):
        z[r, i] = near[r] + (np.float32(i) + u[r, i]) * width


def stratified_samples(near: torch.Tensor, far: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    for name, t, d in (("near", near, 1), ("far", far, 1), ("u", u, 2)):
        _spec._check(t, name, d, "stratified_samples")
    if not (near.shape[0] == far.shape[0] == u.shape[0]):
        raise ValueError("stratified_samples: near, far and u must have one row per ray")
    _on_device("stratified_samples", near, far, u)
    z = torch.empty_like(u)
    stratified_kernel[_blocks(u.shape[0]), BLOCK](near.contiguous(), far.contiguous(), u.contiguous(), z)
    return z


# ------------------------------------------------------------------ the scans

@cuda.jit(device=True)
def _samples_of(packed_info, r):
    """Ray r's samples as unsigned ``[first, stop)``: no negative-index fix-up on each access."""
    first = np.uint64(packed_info[r, 0])
    return first, first + np.uint64(packed_info[r, 1])


@kernel
def transmittance_from_alpha_kernel(alphas, packed_info, trans):
    r = cuda.grid(1)
    if r >= packed_info.shape[0]:
        return
    i, stop = _samples_of(packed_info, r)
    t = _ONE
    while i < stop:
        trans[i] = t                       # exclusive: written before this sample's alpha
        t *= _ONE - alphas[i]
        i += _STEP


@kernel
def weight_from_density_kernel(t_starts, t_ends, sigmas, packed_info, dir_norms, weights, trans, alphas):
    r = cuda.grid(1)
    if r >= packed_info.shape[0]:
        return
    i, stop = _samples_of(packed_info, r)
    norm = dir_norms[r]
    optical_depth = _ZERO                  # sum of sigma * delta before sample i
    while i < stop:
        tau = sigmas[i] * (t_ends[i] - t_starts[i]) * norm
        t = math.exp(-optical_depth)
        a = _ONE - math.exp(-tau)
        trans[i] = t
        alphas[i] = a
        weights[i] = t * a
        optical_depth += tau
        i += _STEP


@kernel
def visibility_kernel(alphas, packed_info, early_stop_eps, alpha_thre, visible):
    r = cuda.grid(1)
    if r >= packed_info.shape[0]:
        return
    i, stop = _samples_of(packed_info, r)
    t = _ONE
    while i < stop:
        keep = t >= early_stop_eps
        if alpha_thre > _ZERO and alphas[i] < alpha_thre:
            keep = False
        visible[i] = keep
        t *= _ONE - alphas[i]
        i += _STEP


@kernel
def accumulate_kernel(weights, values, packed_info, out):
    r = cuda.grid(1)
    if r >= packed_info.shape[0]:
        return
    first, stop = _samples_of(packed_info, r)
    for c in range(values.shape[1]):
        total = _ZERO
        i = first
        while i < stop:
            total += weights[i] * values[i, c]
            i += _STEP
        out[r, c] = total


def render_transmittance_from_alpha(alphas: torch.Tensor, packed_info: torch.Tensor) -> torch.Tensor:
    _spec._check_samples("render_transmittance_from_alpha", packed_info, ("alphas", alphas))
    _on_device("render_transmittance_from_alpha", alphas, packed_info)
    trans = torch.empty_like(alphas)
    transmittance_from_alpha_kernel[_blocks(len(packed_info)), BLOCK](alphas.contiguous(), _packed(packed_info), trans)
    return trans


def render_transmittance_from_density(t_starts: torch.Tensor, t_ends: torch.Tensor, sigmas: torch.Tensor,
                                      packed_info: torch.Tensor, dir_norms: torch.Tensor | None = None):
    _, trans, alphas = render_weight_from_density(t_starts, t_ends, sigmas, packed_info, dir_norms)
    return trans, alphas


def render_weight_from_alpha(alphas: torch.Tensor, packed_info: torch.Tensor):
    trans = render_transmittance_from_alpha(alphas, packed_info)
    return trans * alphas, trans


def render_weight_from_density(t_starts: torch.Tensor, t_ends: torch.Tensor, sigmas: torch.Tensor,
                               packed_info: torch.Tensor, dir_norms: torch.Tensor | None = None):
    who = "render_weight_from_density"
    _spec._check_samples(who, packed_info, ("t_starts", t_starts), ("t_ends", t_ends), ("sigmas", sigmas))
    _on_device(who, t_starts, t_ends, sigmas, packed_info)
    norms = _norms_or_ones(dir_norms, packed_info)
    weights, trans, alphas = (torch.empty_like(sigmas) for _ in range(3))
    weight_from_density_kernel[_blocks(len(packed_info)), BLOCK](
        t_starts.contiguous(), t_ends.contiguous(), sigmas.contiguous(), _packed(packed_info), norms,
        weights, trans, alphas)
    return weights, trans, alphas


def render_visibility_from_alpha(alphas: torch.Tensor, packed_info: torch.Tensor,
                                 early_stop_eps: float = _spec.EARLY_STOP_EPS, alpha_thre: float = 0.0) -> torch.Tensor:
    _spec._check_samples("render_visibility_from_alpha", packed_info, ("alphas", alphas))
    _on_device("render_visibility_from_alpha", alphas, packed_info)
    visible = torch.empty(alphas.shape[0], dtype=torch.bool, device=alphas.device)
    visibility_kernel[_blocks(len(packed_info)), BLOCK](alphas.contiguous(), _packed(packed_info),
                                                        np.float32(early_stop_eps), np.float32(alpha_thre), visible)
    return visible


def accumulate_along_rays(weights: torch.Tensor, values: torch.Tensor, packed_info: torch.Tensor) -> torch.Tensor:
    who = "accumulate_along_rays"
    _spec._check(weights, "weights", 1, who)
    _spec._check(values, "values", 2, who)
    if values.shape[0] != weights.shape[0]:
        raise ValueError(f"{who}: values has {values.shape[0]} samples, weights has {weights.shape[0]}")
    check_packed_info(packed_info, weights.shape[0], who)
    _on_device(who, weights, values, packed_info)
    out = torch.empty(len(packed_info), values.shape[1], dtype=torch.float32, device=weights.device)
    accumulate_kernel[_blocks(len(packed_info)), BLOCK](weights.contiguous(), values.contiguous(),
                                                        _packed(packed_info), out)
    return out


# ------------------------------------------------------------------ hierarchical sampling

@kernel
def cdf_kernel(weights, cdf):
    r = cuda.grid(1)
    if r >= weights.shape[0]:
        return
    n = weights.shape[1]
    total = _ZERO
    for i in range(n):
        total += weights[r, i] + _PAD
    running = _ZERO
    cdf[r, 0] = _ZERO
    for i in range(n):
        running += (weights[r, i] + _PAD) / total
        cdf[r, i + 1] = running


@kernel
def invert_cdf_kernel(bins, cdf, u, z):
    i = cuda.grid(1)
    if i >= u.shape[0] * u.shape[1]:
        return
    r, j = i // u.shape[1], i % u.shape[1]
    x = u[r, j]
    edges = cdf.shape[1]
    # searchsorted(right=True): the first k with cdf[k] > x, found by bisection
    lo, hi = 0, edges
    while lo < hi:
        mid = (lo + hi) // 2
        if cdf[r, mid] <= x:
            lo = mid + 1
        else:
            hi = mid
    below = max(lo - 1, 0)
    above = min(lo, edges - 1)
    denom = cdf[r, above] - cdf[r, below]
    if denom < _PAD:
        denom = _ONE
    t = (x - cdf[r, below]) / denom
    z[r, j] = bins[r, below] + t * (bins[r, above] - bins[r, below])


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    who = "sample_pdf"
    for name, t in (("bins", bins), ("weights", weights), ("u", u)):
        _spec._check(t, name, 2, who)
    if bins.shape[0] != weights.shape[0] or u.shape[0] != weights.shape[0]:
        raise ValueError(f"{who}: bins, weights and u must have one row per ray")
    if bins.shape[1] != weights.shape[1] + 1:
        raise ValueError(f"{who}: bins must have one more column (edges) than weights (bins), "
                         f"got {bins.shape[1]} and {weights.shape[1]}")
    _on_device(who, bins, weights, u)
    cdf = torch.empty(bins.shape, dtype=torch.float32, device=bins.device)
    cdf_kernel[_blocks(weights.shape[0]), BLOCK](weights.contiguous(), cdf)
    z = torch.empty_like(u)
    invert_cdf_kernel[_blocks(u.numel()), BLOCK](bins.contiguous(), cdf, u.contiguous(), z)
    return z
