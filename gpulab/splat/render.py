"""The whole pipeline in one call, on either backend, plus the stage-by-stage pieces.

    out = render(gaussians, camera)                    # numba on a GPU, torch on a CPU
    out = render(gaussians, camera, backend="torch")   # differentiable (training)
    out.image, out.transmittance, out.projection, out.ranges, ...

:func:`rasterize` is the primitive-agnostic back half (bin, sort, ranges, composite): a
later chapter calls it with its own projection's parameter table, screen bounds and
:class:`~gpulab.splat.footprints.Footprint`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import runtime
from . import kernels, torch_impl
from .camera import Camera
from .footprints import GAUSSIAN, Footprint, gaussian_params
from .torch_impl import Projection, tile_grid

__all__ = ["Gaussians", "RenderResult", "backend_module", "render", "rasterize"]

BACKENDS = ("torch", "numba", "auto")


@dataclass
class Gaussians:
    """A scene of N Gaussians (activated values: positive scales, opacities in [0, 1])."""
    means: torch.Tensor        # [N, 3] world positions
    quats: torch.Tensor        # [N, 4] rotations (w, x, y, z), normalised when used
    scales: torch.Tensor       # [N, 3] standard deviations along the local axes
    opacities: torch.Tensor    # [N]
    sh: torch.Tensor           # [N, K, 3] spherical-harmonic colour coefficients, K in {1, 4, 9, 16}

    def __post_init__(self):
        n = self.means.shape[0] if self.means.dim() == 2 else -1
        for name, want in (("means", (n, 3)), ("quats", (n, 4)), ("scales", (n, 3)), ("opacities", (n,))):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != want:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"Gaussians.{name} must have shape {want}, got {got}")
        if self.sh.dim() != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3 or self.sh.shape[1] not in (1, 4, 9, 16):
            raise ValueError(f"Gaussians.sh must have shape [N, K, 3] with K in 1, 4, 9, 16, got {tuple(self.sh.shape)}")

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return {1: 0, 4: 1, 9: 2, 16: 3}[self.sh.shape[1]]

    def to(self, device) -> "Gaussians":
        return Gaussians(*(getattr(self, f).to(device) for f in ("means", "quats", "scales", "opacities", "sh")))

    def detach(self) -> "Gaussians":
        return Gaussians(*(getattr(self, f).detach() for f in ("means", "quats", "scales", "opacities", "sh")))


@dataclass
class RenderResult:
    image: torch.Tensor          # [H, W, C]
    transmittance: torch.Tensor  # [H, W] (alpha = 1 - transmittance)
    projection: Projection | None
    colors: torch.Tensor | None  # [N, C] per-Gaussian features that were composited
    keys: torch.Tensor           # [L] sorted keys
    gaussian_ids: torch.Tensor   # [L] Gaussian of each sorted key
    ranges: torch.Tensor         # [n_tiles, 2]
    backend: str


def backend_module(backend: str):
    """The module of stage functions for ``backend`` ("auto": numba on a GPU, torch on a CPU)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = "numba" if runtime.ON_GPU else "torch"
    return kernels if backend == "numba" else torch_impl


def rasterize(params: torch.Tensor, features: torch.Tensor, means2d: torch.Tensor, radii: torch.Tensor,
              depths: torch.Tensor, width: int, height: int, background: torch.Tensor | None = None,
              footprint: Footprint = GAUSSIAN, backend: str = "auto"):
    """Bin, sort, find tile ranges and composite: (image, transmittance, (keys, ids, ranges)).

    ``means2d``/``radii`` give each primitive's screen square (radius 0 = culled),
    ``depths`` its sort order, ``params`` [N, footprint.n_params] its footprint.
    """
    stages = backend_module(backend)
    if background is None:
        background = torch.zeros(features.shape[1], dtype=features.dtype, device=features.device)
    keys, ids = stages.bin_gaussians(means2d.detach(), radii, depths.detach(), width, height)
    keys, ids = stages.sort_keys(keys, ids)
    tiles_x, tiles_y = tile_grid(width, height)
    ranges = stages.tile_ranges(keys, tiles_x * tiles_y)
    image, trans = stages.rasterize_tiles(params, features, background, ranges, ids, width, height, footprint)
    return image, trans, (keys, ids, ranges)


def render(gaussians: Gaussians, camera: Camera, background: torch.Tensor | None = None,
           backend: str = "auto", features: torch.Tensor | None = None) -> RenderResult:
    """Render ``gaussians`` seen by ``camera``: project, colour, bin, sort, composite.

    ``features`` [N, C] replaces the SH colours (e.g. depth or normals, any C).
    """
    if not isinstance(gaussians, Gaussians):
        raise TypeError(f"render takes a Gaussians scene, got {type(gaussians).__name__}")
    if not isinstance(camera, Camera):
        raise TypeError(f"render takes a Camera, got {type(camera).__name__}")
    stages = backend_module(backend)
    g = gaussians
    proj = stages.project_gaussians(g.means, g.quats, g.scales, camera)
    if features is None:
        features = stages.sh_to_color(g.sh, g.means, camera.position, g.sh_degree)
    params = gaussian_params(proj.means2d, proj.conics, g.opacities)
    image, trans, (keys, ids, ranges) = rasterize(
        params, features, proj.means2d, proj.radii, proj.depths, camera.width, camera.height,
        background, GAUSSIAN, backend)
    name = "numba" if stages is kernels else "torch"
    return RenderResult(image, trans, proj, features, keys, ids, ranges, name)
