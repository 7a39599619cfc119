"""The whole pipeline in one call, on either backend, plus the stage-by-stage pieces.

    out = render(gaussians, camera)                    # numba on a GPU, torch on a CPU
    out = render(gaussians, camera, backend="torch")   # differentiable, the readable specification
    out = render(gaussians, camera, backend="numba")   # differentiable too (numba backward kernels)
    out.image, out.transmittance, out.projection, out.ranges, ...

:func:`rasterize` is the primitive-agnostic back half (bin, sort, ranges, composite): a
later chapter calls it with its own projection's parameter table, screen bounds and
:class:`~gpulab.splat.footprints.Footprint`.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

from .. import runtime
from . import autograd, kernels, torch_impl
from .camera import Camera
from .footprints import GAUSSIAN, Footprint, gaussian_params
from .torch_impl import Projection, tile_grid

__all__ = ["Gaussians", "RenderResult", "backend_module", "render", "rasterize", "pair_keys"]

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
        self._check_one_dtype_and_device()

    def _check_one_dtype_and_device(self) -> None:
        # torch would quietly promote a float64 field and the float32 kernels would refuse it
        # stages later; one float dtype and one device for the whole scene, said up front
        fields = {f: getattr(self, f) for f in ("means", "quats", "scales", "opacities", "sh")}
        dtypes = {f: t.dtype for f, t in fields.items()}
        if not all(d.is_floating_point for d in dtypes.values()) or len(set(dtypes.values())) > 1:
            raise TypeError("a Gaussians scene needs one floating dtype for all its fields, got "
                            + ", ".join(f"{f} {str(d).removeprefix('torch.')}" for f, d in dtypes.items())
                            + " (convert them alike, e.g. .float())")
        devices = {f: t.device for f, t in fields.items()}
        if len(set(devices.values())) > 1:
            raise ValueError("a Gaussians scene's fields must be on one device, got "
                             + ", ".join(f"{f} on {d}" for f, d in devices.items())
                             + " (move the scene with .to(device))")

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
    tiles: torch.Tensor          # [L] int32 tile of each sorted (Gaussian, tile) pair
    gaussian_ids: torch.Tensor   # [L] Gaussian of each sorted pair
    ranges: torch.Tensor         # [n_tiles, 2]
    backend: str

    @property
    def keys(self) -> torch.Tensor:
        """[L] int64 sorted keys ``tile << 32 | depth bits`` (3DGS's form), rebuilt on demand."""
        return pair_keys(self.tiles, self.gaussian_ids, self.projection.depths)


def pair_keys(tiles: torch.Tensor, gaussian_ids: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
    """The 64-bit keys ``tile << 32 | float32 depth bits`` of sorted (tile, Gaussian) pairs."""
    depth_bits = depths.detach().float().contiguous().view(torch.int32).long() & 0xFFFFFFFF
    return (tiles.long() << 32) | depth_bits[gaussian_ids.long()]


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

    ``means2d`` [N, 2] float and ``radii`` [N] int32 give each primitive's screen square
    (radius 0 = culled; or [N, 2]: half-sizes per axis), ``depths`` [N] its sort order, ``params`` [N, footprint.n_params]
    its footprint, ``features`` [N, C] what it composites, ``background`` [C]. ``keys`` are
    the sorted 64-bit ``tile << 32 | depth`` keys. Differentiable on both backends (numba:
    the Gaussian footprint).
    """
    _check_rasterize_inputs(params, features, means2d, radii, depths, width, height, background, footprint)
    image, trans, tiles, ids, ranges = _bin_sort_composite(params, features, means2d, radii, depths, width,
                                                           height, background, footprint, backend_module(backend))
    return image, trans, (pair_keys(tiles, ids, depths), ids, ranges)


def _bin_sort_composite(params, features, means2d, radii, depths, width, height, background, footprint, stages):
    """The back half of the pipeline: (image, transmittance, sorted tile ids, Gaussian ids, ranges)."""
    if background is None:
        background = torch.zeros(features.shape[1], dtype=features.dtype, device=features.device)
    if stages is kernels:   # the counting sort gives the tile ranges with the order
        tiles, ids, ranges = kernels._bin_sort_ranges(means2d.detach(), radii, depths.detach(), width, height)
    else:
        tiles, ids = stages.bin_and_sort(means2d.detach(), radii, depths.detach(), width, height)
        tiles_x, tiles_y = tile_grid(width, height)
        ranges = stages.tile_ranges(tiles, tiles_x * tiles_y)
    composite = stages.rasterize_tiles
    if stages is kernels and autograd.needs_grad(params, features, background):
        composite = autograd.rasterize_tiles          # the same kernel, plus its backward pass
    image, trans = composite(params, features, background, ranges, ids, width, height, footprint)
    return image, trans, tiles, ids, ranges


def _check_tensor(t, name: str, shape: tuple, floating: bool = True) -> None:
    """``t`` is a tensor of ``shape`` (None: any extent) with a float (or int32) dtype."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"rasterize: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        want = "[" + ", ".join("N" if s is None and k == 0 else "*" if s is None else str(s)
                               for k, s in enumerate(shape)) + "]"
        raise ValueError(f"rasterize: {name} must have shape {want}, got {list(t.shape)}")
    if floating and not t.dtype.is_floating_point:
        raise TypeError(f"rasterize: {name} must be a float tensor, got {t.dtype}")


def _check_rasterize_inputs(params, features, means2d, radii, depths, width, height, background,
                            footprint: Footprint) -> None:
    """Clear errors for what the stages would otherwise misread: [N, 3] means2d (x, y, depth?)
    would be binned from the first two columns, float radii truncated to a smaller square."""
    if not isinstance(footprint, Footprint):
        raise TypeError(f"rasterize: footprint must be a Footprint (e.g. splat.GAUSSIAN), got {type(footprint).__name__}")
    for name, size in (("width", width), ("height", height)):
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
            raise ValueError(f"rasterize: {name} must be a positive int (pixels), got {size!r}")
    _check_tensor(means2d, "means2d", (None, 2))
    n = means2d.shape[0]
    _check_tensor(radii, "radii", (n,) if not isinstance(radii, torch.Tensor) or radii.dim() < 2 else (n, 2),
                  floating=False)
    if radii.dtype != torch.int32:
        raise TypeError(f"rasterize: radii must be int32 pixel radii (0 = culled), got {radii.dtype}; "
                        "round float radii up: radii.ceil().to(torch.int32)")
    _check_tensor(depths, "depths", (n,))
    _check_tensor(params, "params", (n, footprint.n_params))
    _check_tensor(features, "features", (n, None))
    if features.dtype != params.dtype:
        raise TypeError(f"rasterize: features are {features.dtype} but params are {params.dtype}; "
                        "use one float dtype for both")
    if background is not None:
        _check_tensor(background, "background", (features.shape[1],))
    tensors = {"params": params, "features": features, "means2d": means2d, "radii": radii, "depths": depths}
    if background is not None:
        tensors["background"] = background
    if len({t.device for t in tensors.values()}) > 1:
        raise ValueError("rasterize: the tensors must be on one device, got "
                         + ", ".join(f"{k} on {t.device}" for k, t in tensors.items()))


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
    project, colour = stages.project_gaussians, stages.sh_to_color
    if stages is kernels and autograd.needs_grad(g.means, g.quats, g.scales):
        project = autograd.project_gaussians          # numba forward and backward kernels
    if stages is kernels and autograd.needs_grad(g.sh, g.means):
        colour = torch_impl.sh_to_color               # one elementwise pass: torch differentiates it
    proj = project(g.means, g.quats, g.scales, camera)
    if features is None:
        features = colour(g.sh, g.means, camera.position, g.sh_degree)
    params = gaussian_params(proj.means2d, proj.conics, g.opacities)
    _check_rasterize_inputs(params, features, proj.means2d, proj.radii, proj.depths, camera.width,
                            camera.height, background, GAUSSIAN)
    # bin with gsplat 1.5's opacity-aware box per axis: every pixel with alpha >= 1/255, fewer tiles
    extents = stages.tile_extents(proj.conics.detach(), g.opacities.detach(), proj.radii)
    image, trans, tiles, ids, ranges = _bin_sort_composite(
        params, features, proj.means2d, extents, proj.depths, camera.width, camera.height,
        background, GAUSSIAN, stages)
    name = "numba" if stages is kernels else "torch"
    return RenderResult(image, trans, proj, features, tiles, ids, ranges, name)
