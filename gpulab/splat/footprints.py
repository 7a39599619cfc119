"""Footprints: how one primitive covers a pixel, in torch and as a numba device function.

The compositing stage asks one question of a primitive: *what alpha do you give the
pixel centred at (px, py)?* A :class:`Footprint` answers it twice, with the same
formula: ``torch_fn(params[..., P], px, py)`` for the torch rasterizer (broadcasting) and
``device_fn(batch, j, px, py)`` for the numba kernel, which reads row ``j`` of the block's
shared-memory batch ``batch`` [256, P]. Everything else (binning, sorting, the per-tile
loop, early stop, any number of feature channels) is shared, so a later chapter adds a
primitive (a 4D Gaussian sliced in time, a smooth convex, a triangle window) by writing
these two functions and a projection that fills the [N, P] parameter table.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from numba import cuda

from .constants import ALPHA_MAX

__all__ = ["Footprint", "gaussian_params", "gaussian_alpha", "gaussian_alpha_device", "GAUSSIAN"]

_ZERO = np.float32(0.0)
_HALF = np.float32(0.5)
_ALPHA_MAX = np.float32(ALPHA_MAX)


@dataclass(frozen=True)
class Footprint:
    """A primitive's coverage: ``n_params`` floats per primitive, a torch and a numba alpha.

    Both functions return alpha in [0, 0.99], and 0 where the primitive does not reach.
    """
    name: str
    n_params: int
    torch_fn: Callable
    device_fn: Callable | None = None


def gaussian_params(means2d: torch.Tensor, conics: torch.Tensor, opacities: torch.Tensor) -> torch.Tensor:
    """Pack the Gaussian footprint's parameters: [N, 6] = (x, y, A, B, C, opacity)."""
    return torch.cat([means2d, conics, opacities[:, None]], -1).contiguous()


def gaussian_alpha(params: torch.Tensor, px, py) -> torch.Tensor:
    """3DGS alpha: ``min(0.99, o exp(power))``, ``power = -(A dx^2 + C dy^2)/2 - B dx dy``.

    ``dx = mean_x - px`` with pixel centres ``px = i + 0.5``; alpha is 0 where power > 0
    (only rounding makes a positive-definite form positive). Example: a Gaussian centred on
    the pixel with opacity 0.5 gives alpha 0.5.
    """
    dx = params[..., 0] - px
    dy = params[..., 1] - py
    power = -0.5 * (params[..., 2] * dx * dx + params[..., 4] * dy * dy) - params[..., 3] * dx * dy
    alpha = (params[..., 5] * torch.exp(power.clamp_max(0.0))).clamp_max(ALPHA_MAX)
    return torch.where(power > 0, torch.zeros_like(alpha), alpha)


@cuda.jit(device=True)
def gaussian_alpha_device(batch, j, px, py):
    """The numba twin of :func:`gaussian_alpha` for row ``j`` of a shared-memory batch."""
    dx = batch[j, 0] - px
    dy = batch[j, 1] - py
    power = -_HALF * (batch[j, 2] * dx * dx + batch[j, 4] * dy * dy) - batch[j, 3] * dx * dy
    if power > _ZERO:
        return _ZERO
    return min(_ALPHA_MAX, batch[j, 5] * math.exp(power))


GAUSSIAN = Footprint("gaussian", 6, gaussian_alpha, gaussian_alpha_device)
