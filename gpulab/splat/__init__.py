"""Chapter 06: a tile-based 3D Gaussian splatting rasterizer (Kerbl et al. 2023, arXiv:2308.04079).

Stages, each in torch (:mod:`.torch_impl`, the differentiable specification) and numba.cuda
(:mod:`.kernels`, the fast path) with the same signatures:

    project_gaussians -> sh_to_color -> tile_extents -> bin_gaussians -> sort_keys -> tile_ranges
    -> rasterize_tiles          (render's numba path: bin_and_sort, tile-major with 32-bit keys)

:func:`render` composes them; :func:`rasterize` is the primitive-agnostic back half that
later chapters reuse with their own :class:`Footprint`. Both backends are differentiable:
the numba path through its own backward kernels (:mod:`.backward`, wrapped as autograd
Functions in :mod:`.autograd`).
"""
from . import autograd, backward, kernels, tilesort, torch_impl
from .camera import Camera, look_at, orbit_camera
from .constants import (ALPHA_MAX, ALPHA_MIN, BATCH, FOV_CLAMP, LOW_PASS, NEAR_PLANE, SH_C0, SH_C1,
                        SH_C2, SH_C3, T_MIN, TILE)
from .footprints import GAUSSIAN, Footprint, gaussian_alpha, gaussian_alpha_device, gaussian_params
from .render import Gaussians, RenderResult, backend_module, rasterize, render
from .scenes import (TrainableGaussians, benchmark_camera, fit, orbit_views, psnr, random_gaussians,
                     toy_object)
from .torch_impl import Projection, tile_grid, trace_pixel

__all__ = [
    "autograd", "backward", "kernels", "tilesort", "torch_impl", "Camera", "look_at", "orbit_camera", "ALPHA_MAX", "ALPHA_MIN", "BATCH",
    "FOV_CLAMP", "LOW_PASS", "NEAR_PLANE", "SH_C0", "SH_C1", "SH_C2", "SH_C3", "T_MIN", "TILE",
    "GAUSSIAN", "Footprint", "gaussian_alpha", "gaussian_alpha_device", "gaussian_params",
    "Gaussians", "RenderResult", "backend_module", "rasterize", "render", "TrainableGaussians",
    "benchmark_camera", "fit", "orbit_views", "psnr", "random_gaussians", "toy_object",
    "Projection", "tile_grid", "trace_pixel",
]
