"""The triangle and smooth-convex footprints: chapter 06's :class:`~gpulab.splat.Footprint`
interface, so its compositing kernel (:func:`gpulab.splat.kernels.raster_kernel_for`) and its
torch rasterizer composite them unchanged.

Each has a torch weight (broadcasting over ``params[..., P]`` and pixel centres) and a numba
device function reading row ``j`` of the block's shared-memory batch; both return
``alpha = min(0.99, o * w)``. The tables come from :func:`.torch_impl.triangle_setup` and
:func:`.torch_impl.convex_setup` (or their numba twins).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from numba import cuda

from ..constants import ALPHA_MAX
from ..footprints import Footprint
from .constants import MAX_HULL

__all__ = ["triangle_alpha", "triangle_alpha_device", "convex_alpha", "convex_alpha_device", "TRIANGLE", "CONVEX",
           "TRIANGLE_PARAMS", "CONVEX_PARAMS", "gabor_alpha", "gabor_alpha_device", "GABOR", "GABOR_PARAMS",
           "GABOR_FREQS"]

TRIANGLE_PARAMS = 12                    # 3 x (nx, ny, c), phi(s), sigma, opacity
CONVEX_PARAMS = 3 * MAX_HULL + 3        # 8 x (nx, ny, c), delta', sigma', opacity

_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_ALPHA_MAX = np.float32(ALPHA_MAX)
_EXP_LIMIT = np.float32(80.0)           # exp(80) is finite in float32; beyond it sigmoid(-x) is 0


def triangle_alpha(params: torch.Tensor, px, py) -> torch.Tensor:
    """Triangle Splatting's window: ``w = max(0, phi(p) / phi(s)) ** sigma``, alpha = min(0.99, o w).

    ``phi(p) = max_k (n_k . p + c_k)`` over the outward unit edge normals; ``phi(s) < 0`` at
    the incentre. Inside, phi(p) < 0 and the ratio is in (0, 1]; outside it is negative and
    the window is 0 (a negative base is never raised to sigma). Example: at the incentre
    with opacity 0.5, alpha is 0.5 for any sigma.
    """
    phi = params[..., 0] * px + params[..., 1] * py + params[..., 2]
    for k in (1, 2):
        phi = torch.maximum(phi, params[..., 3 * k] * px + params[..., 3 * k + 1] * py + params[..., 3 * k + 2])
    ratio = (phi / params[..., 9]).clamp_min(0.0)
    w = torch.where(ratio > 0, ratio.clamp_min(1e-30) ** params[..., 10], torch.zeros_like(ratio))
    return (params[..., 11] * w).clamp_max(ALPHA_MAX)


@cuda.jit(device=True)
def triangle_alpha_device(batch, j, px, py):
    """The numba twin of :func:`triangle_alpha` for row ``j`` of a shared-memory batch."""
    phi = batch[j, 0] * px + batch[j, 1] * py + batch[j, 2]
    phi = max(phi, batch[j, 3] * px + batch[j, 4] * py + batch[j, 5])
    phi = max(phi, batch[j, 6] * px + batch[j, 7] * py + batch[j, 8])
    ratio = phi / batch[j, 9]
    if ratio <= _ZERO:                  # on an edge or outside: no weight (and no pow of a negative)
        return _ZERO
    return min(_ALPHA_MAX, batch[j, 11] * math.pow(ratio, batch[j, 10]))


def convex_alpha(params: torch.Tensor, px, py) -> torch.Tensor:
    """3D Convex Splatting's window: ``w = sigmoid(-sigma' phi)``, ``phi = log sum_k exp(delta' L_k)``.

    The log-sum-exp is evaluated with its largest term shifted out,
    ``phi = delta' m + log sum_k exp(delta' (L_k - m))`` with ``m = max_k L_k``, so no exp
    overflows however sharp the convex (the reference rasterizer does the same).
    """
    dist = [params[..., 3 * k] * px + params[..., 3 * k + 1] * py + params[..., 3 * k + 2] for k in range(MAX_HULL)]
    d = torch.stack(dist, -1)
    m = d.amax(-1)
    delta, sigma = params[..., 3 * MAX_HULL], params[..., 3 * MAX_HULL + 1]
    phi = delta * m + torch.log(torch.exp(delta[..., None] * (d - m[..., None])).sum(-1))
    w = torch.sigmoid(-sigma * phi)
    return (params[..., 3 * MAX_HULL + 2] * w).clamp_max(ALPHA_MAX)


_DELTA, _SIGMA, _OPACITY = 3 * MAX_HULL, 3 * MAX_HULL + 1, 3 * MAX_HULL + 2


@cuda.jit(device=True)
def convex_alpha_device(batch, j, px, py):
    """The numba twin of :func:`convex_alpha` for row ``j`` of a shared-memory batch."""
    m = batch[j, 0] * px + batch[j, 1] * py + batch[j, 2]
    for k in range(1, MAX_HULL):
        m = max(m, batch[j, 3 * k] * px + batch[j, 3 * k + 1] * py + batch[j, 3 * k + 2])
    delta = batch[j, _DELTA]
    total = _ZERO
    for k in range(MAX_HULL):
        d = batch[j, 3 * k] * px + batch[j, 3 * k + 1] * py + batch[j, 3 * k + 2]
        total += math.exp(delta * (d - m))          # <= 1 each; the max's own term is 1
    x = batch[j, _SIGMA] * (delta * m + math.log(total))
    if x > _EXP_LIMIT:                  # far outside: sigmoid(-x) underflows to 0
        return _ZERO
    return min(_ALPHA_MAX, batch[j, _OPACITY] / (_ONE + math.exp(x)))


TRIANGLE = Footprint("triangle", TRIANGLE_PARAMS, triangle_alpha, triangle_alpha_device)
CONVEX = Footprint("convex", CONVEX_PARAMS, convex_alpha, convex_alpha_device)


# ------------------------------------------------------------------ Gabor

GABOR_FREQS = 2                          # frequencies per Gabor primitive
GABOR_PARAMS = 6 + 3 * GABOR_FREQS       # the Gaussian's 6, then per frequency (f_x, f_y, weight x attenuation)
_TWO_PI = np.float32(2.0 * math.pi)


def gabor_alpha(params: torch.Tensor, px, py) -> torch.Tensor:
    """A Gabor footprint: the Gaussian's alpha times ``max(0, 1 - sum_k w_k + sum_k w_k a_k cos(2 pi f_k . d))``.

    ``d = p - mean``; ``f_k`` is the k-th frequency projected to the screen and ``w_k a_k`` its
    weight times the attenuation the ray integral gives (:func:`.torch_impl.gabor_setup`). With
    every frequency 0 the modulation is 1 and this is the Gaussian; it never exceeds 1, so the
    Gaussian's box bounds it.
    """
    dx = px - params[..., 0]
    dy = py - params[..., 1]
    modulation = 1.0
    for k in range(GABOR_FREQS):
        fx, fy, wa = params[..., 6 + 3 * k], params[..., 7 + 3 * k], params[..., 8 + 3 * k]
        modulation = modulation + wa * (torch.cos(2 * math.pi * (fx * dx + fy * dy)) - 1.0)
    power = -0.5 * (params[..., 2] * dx * dx + params[..., 4] * dy * dy) - params[..., 3] * dx * dy
    alpha = params[..., 5] * torch.exp(power.clamp_max(0.0)) * torch.as_tensor(modulation).clamp_min(0.0)
    return torch.where(power > 0, torch.zeros_like(alpha), alpha.clamp_max(ALPHA_MAX))


@cuda.jit(device=True)
def gabor_alpha_device(batch, j, px, py):
    """The numba twin of :func:`gabor_alpha`."""
    dx = px - batch[j, 0]
    dy = py - batch[j, 1]
    power = -np.float32(0.5) * (batch[j, 2] * dx * dx + batch[j, 4] * dy * dy) - batch[j, 3] * dx * dy
    if power > _ZERO:
        return _ZERO
    modulation = _ONE
    for k in range(GABOR_FREQS):
        modulation += batch[j, 8 + 3 * k] * (math.cos(_TWO_PI * (batch[j, 6 + 3 * k] * dx + batch[j, 7 + 3 * k] * dy))
                                             - _ONE)
    if modulation <= _ZERO:
        return _ZERO
    return min(_ALPHA_MAX, batch[j, 5] * math.exp(power) * modulation)


GABOR = Footprint("gabor", GABOR_PARAMS, gabor_alpha, gabor_alpha_device)
