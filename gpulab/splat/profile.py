"""Where a frame's time goes: each stage timed alone on inputs prepared by the stage before.

    times = time_stages(gaussians, camera, backend="numba")   # {"project": ms, "bin": ms, ...}
"""
from __future__ import annotations

from .. import runtime
from ..harness import bench
from .footprints import GAUSSIAN, gaussian_params
from .render import backend_module, render
from .torch_impl import tile_grid

__all__ = ["STAGES", "stage_calls", "time_stages", "work_counts"]

STAGES = ("project", "bin", "sort", "ranges", "raster")


def stage_calls(gaussians, camera, backend: str = "auto", background=None):
    """One zero-argument callable per stage, each fed the previous stage's real output."""
    s = backend_module(backend)
    g, cam = gaussians, camera
    w, h = cam.width, cam.height
    n_tiles = tile_grid(w, h)[0] * tile_grid(w, h)[1]

    def project():
        p = s.project_gaussians(g.means, g.quats, g.scales, cam)
        return p, s.sh_to_color(g.sh, g.means, cam.position, g.sh_degree)

    proj, colors = project()
    params = gaussian_params(proj.means2d, proj.conics, g.opacities)
    keys, ids = s.bin_gaussians(proj.means2d, proj.radii, proj.depths, w, h)
    skeys, sids = s.sort_keys(keys, ids)
    ranges = s.tile_ranges(skeys, n_tiles)
    if background is None:
        import torch

        background = torch.zeros(3, device=params.device)
    return {
        "project": project,
        "bin": lambda: s.bin_gaussians(proj.means2d, proj.radii, proj.depths, w, h),
        "sort": lambda: s.sort_keys(keys, ids),
        "ranges": lambda: s.tile_ranges(skeys, n_tiles),
        "raster": lambda: s.rasterize_tiles(params, colors, background, ranges, sids, w, h, GAUSSIAN),
        "total": lambda: render(g, cam, background, backend=backend),
    }, {"intersections": int(len(keys)), "visible": int((proj.radii > 0).sum()),
        "max_per_tile": int((ranges[:, 1] - ranges[:, 0]).max()) if n_tiles else 0}


def time_stages(gaussians, camera, backend: str = "auto", warmup: int = 3, max_seconds: float = 1.0):
    """Median ms of each stage and of the whole render, plus the work counts."""
    calls, counts = stage_calls(gaussians, camera, backend)
    times = {name: bench(fn, warmup=warmup, max_seconds=max_seconds, name=name).median_ms
             for name, fn in calls.items()}
    runtime.synchronize()
    return times, counts


def work_counts(n_gaussians: int, intersections: int, pixels: int, sh_coeffs: int = 1) -> dict:
    """The fewest bytes each stage must move (float32 / int32 / int64), for a roofline.

    project: read means, quats, scales, opacity, SH (3 + 4 + 3 + 1 + 3K floats), write
    means2d, depth, conic, radius, colour (2 + 1 + 3 + 1 + 3); bin: read means2d + radius +
    depth, write a key (8 B) + id (4 B) per intersection; sort: a radix sort of 64-bit keys
    reads and writes keys and values once per 8-bit pass (8 passes); raster: read each
    intersection's id and 6 params + 3 colours (40 B), write 4 floats per pixel.
    """
    n, L = n_gaussians, intersections
    return {
        "project": 4 * n * (11 + 3 * sh_coeffs) + 4 * n * 10,
        "bin": 4 * n * 4 + 12 * L,
        "sort": 8 * 2 * 12 * L,
        "ranges": 8 * L,
        "raster": 40 * L + 16 * pixels,
    }
