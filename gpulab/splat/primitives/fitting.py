"""Fit screen-space primitives to an image: the lecture's equal-count comparison.

``fit_2d(kind, target, n)`` places ``n`` primitives of one kind (``"gaussian"``,
``"triangle"``, ``"convex"``) directly in pixel space (no camera), composites them with
chapter 06's torch rasterizer (differentiable) and fits positions, shapes, sharpness,
opacities and colours to ``target`` with Adam. A hard-edged target is where the papers say
their primitives beat Gaussians at equal count; the lecture measures it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..footprints import GAUSSIAN, gaussian_params
from ..render import rasterize
from ..scenes import psnr
from . import torch_impl as T
from .footprints import CONVEX, TRIANGLE

__all__ = ["Fit", "fit_2d", "hard_edged_target", "KINDS"]

KINDS = ("gaussian", "triangle", "convex")


@dataclass
class Fit:
    kind: str
    image: torch.Tensor
    psnr: float
    history: list


def hard_edged_target(height: int = 32, width: int = 32) -> torch.Tensor:
    """[H, W, 3] in [0, 1]: a tilted square, a triangle and a disc on grey (hard edges everywhere)."""
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    u, v = xs / width, ys / height
    img = torch.full((height, width, 3), 0.25)
    c, s = math.cos(0.4), math.sin(0.4)
    qx, qy = c * (u - 0.3) + s * (v - 0.35), -s * (u - 0.3) + c * (v - 0.35)
    img[(qx.abs() < 0.16) & (qy.abs() < 0.16)] = torch.tensor([0.9, 0.2, 0.1])
    tri = (v > 0.55) & (v < 0.95) & ((u - 0.72).abs() < (v - 0.55) * 0.6)
    img[tri] = torch.tensor([0.1, 0.7, 0.3])
    img[((u - 0.75) ** 2 + (v - 0.25) ** 2) < 0.15 ** 2] = torch.tensor([0.2, 0.3, 0.9])
    return img


def _leaves(kind: str, n: int, height: int, width: int, gen: torch.Generator) -> dict:
    centres = torch.rand(n, 1, 2, generator=gen) * torch.tensor([width, height])
    size = 0.6 * math.sqrt(height * width / n)
    p = {"colour": torch.zeros(n, 3), "opacity": torch.full((n,), 1.0)}
    if kind == "gaussian":
        p.update(mean=centres[:, 0].clone(), log_scale=torch.full((n, 2), math.log(0.5 * size)),
                 angle=torch.rand(n, generator=gen) * math.pi)
    elif kind == "triangle":
        p.update(verts=centres + size * torch.randn(n, 3, 2, generator=gen),
                 raw_sigma=torch.full((n,), math.log(1.16 - 0.01)))
    else:
        p.update(points=centres + 0.7 * size * torch.randn(n, 6, 2, generator=gen),
                 log_delta=torch.zeros(n), log_sigma=torch.zeros(n))
    return {k: v.requires_grad_() for k, v in p.items()}


def _table(kind: str, p: dict, height: int, width: int):
    """(params, means2d, radii, footprint) of the current leaves."""
    opacity = torch.sigmoid(p["opacity"])
    if kind == "gaussian":
        scale = torch.exp(p["log_scale"])
        c, s = torch.cos(p["angle"]), torch.sin(p["angle"])
        rot = torch.stack([c, -s, s, c], -1).reshape(-1, 2, 2)
        cov = rot @ torch.diag_embed(scale ** 2) @ rot.transpose(1, 2) + 0.3 * torch.eye(2)
        inv = torch.linalg.inv(cov)
        conic = torch.stack([inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 1]], -1)
        radii = torch.ceil(3 * scale.detach().amax(-1) + 1).to(torch.int32)
        return gaussian_params(p["mean"], conic, opacity), p["mean"], radii, GAUSSIAN
    if kind == "triangle":
        sigma = 0.01 + torch.exp(p["raw_sigma"])
        params, means2d, radii = T.triangle_setup(p["verts"], sigma, opacity, width, height)
        return params, means2d, radii, TRIANGLE
    depth = torch.ones_like(opacity)
    params, means2d, radii = T.convex_setup(p["points"], depth, torch.exp(p["log_delta"]), torch.exp(p["log_sigma"]),
                                            opacity, width, height)
    return params, means2d, radii, CONVEX


def render_2d(kind: str, p: dict, height: int, width: int) -> torch.Tensor:
    params, means2d, radii, footprint = _table(kind, p, height, width)
    n = params.shape[0]
    depths = torch.arange(1, n + 1, dtype=params.dtype)          # a fixed front-to-back order
    image, _, _ = rasterize(params, torch.sigmoid(p["colour"]), means2d.detach(), radii, depths, width, height,
                            torch.zeros(3), footprint, "torch")
    return image


def fit_2d(kind: str, target: torch.Tensor, n: int = 24, steps: int = 60, seed: int = 0, lr: float = 0.05) -> Fit:
    """Fit ``n`` primitives of ``kind`` to ``target`` [H, W, 3] for ``steps`` Adam steps (MSE)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    height, width = target.shape[:2]
    gen = torch.Generator().manual_seed(seed)
    p = _leaves(kind, n, height, width, gen)
    positional = {"mean", "verts", "points"}
    opt = torch.optim.Adam([{"params": [v for k, v in p.items() if k in positional], "lr": 20 * lr},
                            {"params": [v for k, v in p.items() if k not in positional], "lr": lr}])
    history = []
    for _ in range(steps):
        image = render_2d(kind, p, height, width)
        loss = ((image - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    with torch.no_grad():
        image = render_2d(kind, p, height, width)
    return Fit(kind, image, psnr(image, target), history)
