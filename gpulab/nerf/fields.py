"""Analytic fields the chapter renders (chapter 09 replaces them with tiny MLPs).

Each density field maps points ``[N, 3]`` to densities ``[N]``; each has a closed-form
line integral, so the renderer can be checked against it:

* :class:`BoxField`: density sigma inside an axis-aligned box: T = exp(-sigma L), L the
  length of the ray inside the box;
* :class:`GaussianBlob`: sigma(x) = peak exp(-|x - c|^2 / (2 s^2)); along a ray
  x = o + t d (unit d) the optical depth from t0 to t1 is
  peak exp(-b^2 / (2 s^2)) s sqrt(pi / 2) [erf((t1 - tc) / (s sqrt 2)) - erf((t0 - tc) / (s sqrt 2))],
  tc the ray's closest approach to c and b its distance there;
* :func:`sphere_sdf`: signed distance to a sphere and its gradient (NeuS renders it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["BoxField", "GaussianBlob", "BlobScene", "sphere_sdf", "ray_box"]


def ray_box(origins: torch.Tensor, dirs: torch.Tensor, lo, hi):
    """Slab test: ``(t_in, t_out)`` per ray for the box [lo, hi] (t_in > t_out: a miss).
    Zero direction components are handled by +-inf slabs."""
    lo = torch.as_tensor(lo, dtype=origins.dtype, device=origins.device)
    hi = torch.as_tensor(hi, dtype=origins.dtype, device=origins.device)
    with torch.no_grad():
        safe = torch.where(dirs == 0, torch.full_like(dirs, 1e-30), dirs)
    t0, t1 = (lo - origins) / safe, (hi - origins) / safe
    t_in = torch.minimum(t0, t1).amax(dim=-1)
    t_out = torch.maximum(t0, t1).amin(dim=-1)
    return t_in, t_out


@dataclass
class BoxField:
    lo: tuple = (-0.5, -0.5, -0.5)
    hi: tuple = (0.5, 0.5, 0.5)
    sigma: float = 2.0
    color: tuple = (0.9, 0.4, 0.1)

    def density(self, x: torch.Tensor) -> torch.Tensor:
        lo = torch.tensor(self.lo, dtype=x.dtype, device=x.device)
        hi = torch.tensor(self.hi, dtype=x.dtype, device=x.device)
        inside = ((x >= lo) & (x <= hi)).all(dim=-1)
        return torch.where(inside, torch.full_like(x[:, 0], self.sigma), torch.zeros_like(x[:, 0]))

    def rgb(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.color, dtype=x.dtype, device=x.device).expand(x.shape[0], 3)

    def transmittance(self, origins: torch.Tensor, dirs: torch.Tensor, near: float, far: float) -> torch.Tensor:
        """exp(-sigma L), L the length inside the box between near and far (distances, unit dirs)."""
        t_in, t_out = ray_box(origins, dirs, self.lo, self.hi)
        length = (torch.minimum(t_out, torch.full_like(t_out, far)) -
                  torch.maximum(t_in, torch.full_like(t_in, near))).clamp(min=0)
        return torch.exp(-self.sigma * length)


@dataclass
class GaussianBlob:
    centre: tuple = (0.0, 0.0, 0.0)
    scale: float = 0.2
    peak: float = 10.0
    color: tuple = (0.2, 0.5, 0.9)

    def density(self, x: torch.Tensor) -> torch.Tensor:
        c = torch.tensor(self.centre, dtype=x.dtype, device=x.device)
        return self.peak * torch.exp(-((x - c) ** 2).sum(-1) / (2 * self.scale ** 2))

    def rgb(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.color, dtype=x.dtype, device=x.device).expand(x.shape[0], 3)

    def optical_depth(self, origins: torch.Tensor, dirs: torch.Tensor, t0, t1) -> torch.Tensor:
        """The closed-form integral of the density from t0 to t1 along unit-direction rays."""
        c = torch.tensor(self.centre, dtype=origins.dtype, device=origins.device)
        tc = ((c - origins) * dirs).sum(-1)
        b2 = ((origins + tc[:, None] * dirs - c) ** 2).sum(-1)
        s = self.scale
        edge = lambda t: torch.erf((t - tc) / (s * math.sqrt(2.0)))
        return self.peak * torch.exp(-b2 / (2 * s * s)) * s * math.sqrt(math.pi / 2) * (edge(t1) - edge(t0))


@dataclass
class BlobScene:
    """A few Gaussian blobs of different colours: the lecture's and the benchmark's scene."""
    blobs: tuple

    @staticmethod
    def random(n: int, gen: torch.Generator, extent: float = 0.6, scale=(0.06, 0.16), peak=(20.0, 60.0)):
        r = lambda *s: torch.rand(*s, generator=gen)
        blobs = tuple(GaussianBlob(tuple(((r(3) * 2 - 1) * extent).tolist()),
                                   float(scale[0] + (scale[1] - scale[0]) * r(1)),
                                   float(peak[0] + (peak[1] - peak[0]) * r(1)), tuple(r(3).tolist()))
                      for _ in range(n))
        return BlobScene(blobs)

    def density(self, x: torch.Tensor) -> torch.Tensor:
        return sum(b.density(x) for b in self.blobs)

    def rgb(self, x: torch.Tensor) -> torch.Tensor:
        dens = torch.stack([b.density(x) for b in self.blobs], dim=-1)           # [N, B]
        colors = torch.tensor([b.color for b in self.blobs], dtype=x.dtype, device=x.device)
        return (dens @ colors) / dens.sum(-1, keepdim=True).clamp(min=1e-12)


def sphere_sdf(x: torch.Tensor, centre=(0.0, 0.0, 0.0), radius: float = 0.5):
    """Signed distance to a sphere (negative inside) and its gradient (the outward normal)."""
    c = torch.tensor(centre, dtype=x.dtype, device=x.device)
    offset = x - c
    dist = offset.norm(dim=-1)
    return dist - radius, offset / dist.clamp(min=1e-12)[:, None]
