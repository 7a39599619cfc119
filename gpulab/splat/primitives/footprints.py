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
           "TRIANGLE_PARAMS", "CONVEX_PARAMS"]

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
