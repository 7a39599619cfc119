"""Where a frame's time goes: each stage timed alone on inputs prepared by the stage before.

    times, counts = time_stages(gaussians, camera, backend="numba")   # {"project": ms, "bin": ms, ...}
    times, counts = time_stages(gaussians, camera, backend="numba", backward=True)   # + the backward pass

Stages of the path :func:`~gpulab.splat.render.render` runs: ``project`` (+ SH colour),
``bin`` (the opacity-aware box, tile counts, depth order, scan, writing the pairs), ``sort`` (the stable counting sort by
tile, :mod:`.tilesort`), ``ranges``, ``raster``; ``total`` is one whole render call. For
comparison, ``bin_64bit`` and ``sort_64bit`` time the classic 64-bit (tile, depth) keys of 3DGS
(:func:`~gpulab.splat.kernels.bin_gaussians` + ``torch.sort``), and ``sort_torch32`` torch.sort of the
32-bit tile ids. With ``backward=True``:
``raster_backward``, ``project_backward`` and ``forward_backward`` (render + loss.backward()).
"""
from __future__ import annotations

import torch

from .. import runtime
from ..harness import bench
from .footprints import GAUSSIAN, gaussian_params
from .render import Gaussians, backend_module, render
from .torch_impl import tile_grid

__all__ = ["STAGES", "stage_calls", "time_stages", "work_counts", "trainable_copy"]

STAGES = ("project", "bin", "sort", "ranges", "raster")


def stage_calls(gaussians, camera, backend: str = "auto", background=None, backward: bool = False):
    """One zero-argument callable per stage, each fed the previous stage's real output."""
    s = backend_module(backend)
    numba = s.__name__.endswith("kernels")
    g, cam = gaussians, camera
    w, h = cam.width, cam.height
    n_tiles = tile_grid(w, h)[0] * tile_grid(w, h)[1]

    def project():
        p = s.project_gaussians(g.means, g.quats, g.scales, cam)
        return p, s.sh_to_color(g.sh, g.means, cam.position, g.sh_degree)

    proj, colors = project()
    params = gaussian_params(proj.means2d, proj.conics, g.opacities)
    extents = s.tile_extents(proj.conics, g.opacities, proj.radii)     # the box render bins with

    def bin_pairs():
        box = s.tile_extents(proj.conics, g.opacities, proj.radii)
        if numba:   # the tile-major path render runs, in its two halves
            return s._bin_front_to_back(proj.means2d, box, proj.depths, w, h)
        return s.bin_gaussians(proj.means2d, box, proj.depths, w, h)

    sort_pairs = (lambda t, i: s._sort_by_tile(t, i, n_tiles)[:2]) if numba else s.sort_keys
    pairs = bin_pairs()
    tiles, sids = sort_pairs(*pairs)
    ranges = s.tile_ranges(tiles, n_tiles)
    if background is None:
        background = torch.zeros(3, device=params.device)
    calls = {
        "project": project,
        "bin": bin_pairs,
        "sort": lambda: sort_pairs(*pairs),
        "ranges": lambda: s.tile_ranges(tiles, n_tiles),
        "raster": lambda: s.rasterize_tiles(params, colors, background, ranges, sids, w, h, GAUSSIAN),
        "total": lambda: render(g, cam, background, backend=backend),
    }
    if numba:
        keys64, ids64 = s.bin_gaussians(proj.means2d, extents, proj.depths, w, h)
        calls["bin_64bit"] = lambda: s.bin_gaussians(proj.means2d, extents, proj.depths, w, h)
        square, _ = s.bin_gaussians(proj.means2d, proj.radii, proj.depths, w, h)
        calls["sort_64bit"] = lambda: s.sort_keys(keys64, ids64)
        calls["sort_torch32"] = lambda: s._sort_by_tile_torch(*pairs)    # torch.sort of the 32-bit tile ids
    if backward:
        calls.update(_backward_calls(g, cam, background, backend, numba, params, colors, ranges, sids, proj))
    counts = {"intersections": int(len(tiles)), "visible": int((proj.radii > 0).sum()),
              **({"intersections_3sigma_square": int(len(square))} if numba else {}),
              "max_per_tile": int((ranges[:, 1] - ranges[:, 0]).max()) if n_tiles else 0}
    return calls, counts


def trainable_copy(gaussians: Gaussians, features: torch.Tensor | None = None):
    """Leaf tensors that require grad (means, quats, scales, opacities, and colours as features)."""
    g = gaussians
    feats = features if features is not None else (0.28209479177387814 * g.sh[:, 0] + 0.5).clamp_min(0.0)
    leaves = [t.detach().clone().requires_grad_() for t in (g.means, g.quats, g.scales, g.opacities, feats)]
    return Gaussians(*leaves[:4], g.sh.detach()), leaves[4], leaves


def _backward_calls(g, cam, background, backend, numba, params, colors, ranges, sids, proj):
    """The backward stages: raster and projection kernels alone, and a whole training step."""
    scene, feats, leaves = trainable_copy(g, colors)
    calls = {}

    def forward_backward():
        out = render(scene, cam, background, backend=backend, features=feats)
        out.image.sum().backward()       # d(sum)/d(image) = 1: the gradient any loss hands down
        for t in leaves:
            t.grad = None

    calls["forward_backward"] = forward_backward
    if numba:
        from . import backward as B
        from . import kernels as K

        image, trans, last = K._launch_raster(params, colors, background, ranges, sids, cam.width, cam.height)
        v_image, v_trans = torch.ones_like(image), torch.zeros_like(trans)
        calls["raster_backward"] = lambda: B.rasterize_tiles_backward(
            params, colors, background, ranges, sids, trans, last, v_image, v_trans)
        n = len(g)
        v2, vd, vc = (torch.ones(n, 2, device=params.device), torch.zeros(n, device=params.device),
                      torch.ones(n, 3, device=params.device) * 1e-3)
        calls["project_backward"] = lambda: B.project_gaussians_backward(
            g.means, g.quats, g.scales, cam, proj.radii, v2, vd, vc)
    return calls


def time_stages(gaussians, camera, backend: str = "auto", warmup: int = 3, max_seconds: float = 1.0,
                backward: bool = False):
    """Median ms of each stage and of the whole render, plus the work counts."""
    calls, counts = stage_calls(gaussians, camera, backend, backward=backward)
    times = {name: bench(fn, warmup=warmup, max_seconds=max_seconds, name=name).median_ms
             for name, fn in calls.items()}
    runtime.synchronize()
    return times, counts


def work_counts(n_gaussians: int, intersections: int, pixels: int, sh_coeffs: int = 1) -> dict:
    """The fewest bytes each stage must move (float32 / int32 / int64), for a roofline.

    project: read means, quats, scales, opacity, SH (3 + 4 + 3 + 1 + 3K floats), write
    means2d, depth, conic, radius, colour (2 + 1 + 3 + 1 + 3); bin: read means2d + radius
    + depth, sort N depths (4 radix passes of a 4-byte key and torch's 8-byte index, read
    and written), write a 4-byte tile id + 4-byte id per pair; sort: what torch.sort really
    moves for L 32-bit keys: 4 passes over a 4-byte key and an 8-byte int64 index, read and
    written, then the gather ``ids[perm]`` (read 8 + 4, write 4); raster: per (Gaussian,
    tile) pair, its id and 6 params + 3 colours once (40 B: each block reads its list once
    into shared memory), 16 B written per pixel; ``sort_64bit``: 8 passes over an 8-byte key
    and an 8-byte index, then the same gather.
    """
    n, L = n_gaussians, intersections
    return {
        "project": 4 * n * (11 + 3 * sh_coeffs) + 4 * n * 10,
        "bin": 4 * n * 4 + 4 * 2 * 12 * n + 8 * L,
        "sort": 4 * 2 * 12 * L + 16 * L,
        "ranges": 4 * L,
        "raster": 40 * L + 16 * pixels,
        "sort_64bit": 8 * 2 * 16 * L + 16 * L,
    }
