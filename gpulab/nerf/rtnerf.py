"""RT-NeRF (Li et al. 2022, arXiv:2212.01120): render from the occupied cubes, not from
uniform samples along every ray; and store each sparse block in the smaller of two formats.

Rendering, as the paper's algorithm goes (simplified to one occupancy level, in torch):

1. the occupied cells of an occupancy grid are the cubes;
2. the cubes are put in a coarse front-to-back order for this view. Here: by the Manhattan
   distance, in cells, from the camera's cell. Along any ray from the camera each cell
   coordinate moves away from the camera's monotonically, so every cell a ray enters is
   farther in that distance than the one it leaves: the order is exact for every ray;
3. each cube is projected (its 8 corners) to a pixel rectangle; only the rays of those
   pixels are intersected with it (slab test), and only rays still visible (T >= 1e-4)
   do any work: the rest of the rectangle is skipped;
4. samples are the points of the same lattice uniform marching uses (t_min + (k + 1/2) dt)
   that fall in the cube; they are composited into the ray's colour and transmittance.

Storage: a block of B^3 voxels with n non-empty ones costs B^3 bits as a bitmap, or
3 ceil(log2 B) bits per non-empty voxel as coordinates (the values cost the same either
way). Coordinates win below the density 1 / (3 ceil(log2 B)): 8.3% for B = 16, 6.7% for
B = 32. RT-NeRF picks, per block, whichever is smaller.
"""
from __future__ import annotations

import math

import torch

from .fields import ray_box
from .occgrid import OccupancyGrid

__all__ = ["occupied_cubes", "cube_order", "cube_rects", "render_cube_ordered", "render_uniform",
           "bitmap_bytes", "coordinate_bytes", "crossover_density", "encode_block", "decode_block",
           "EARLY_STOP_EPS"]

EARLY_STOP_EPS = 1e-4


def occupied_cubes(grid: OccupancyGrid, level: int = 0):
    """Cells of ``level`` whose bit is set: ``(cells [M, 3] int64, lo corners [M, 3], size [3])``."""
    cells = grid.grid_coords[grid.binaries[level]]
    lo, hi = grid.aabbs[level, :3], grid.aabbs[level, 3:]
    size = (hi - lo) / grid.resolution
    return cells, lo + cells.float() * size, size


def cube_order(cells: torch.Tensor, camera_cell: torch.Tensor) -> torch.Tensor:
    """Indices of ``cells`` front to back: sorted by Manhattan distance (in cells, real valued
    for a camera inside a cell) from the camera's position in cell units."""
    centre = cells.float() + 0.5
    distance = (centre - camera_cell[None, :]).abs().sum(-1)
    return torch.argsort(distance, stable=True)


def cube_rects(lo: torch.Tensor, size: torch.Tensor, w2c: torch.Tensor, fx, fy, cx, cy, width, height):
    """Pixel rectangles ``[M, 4]`` (x0, y0, x1, y1), exclusive ends, of the cubes' projections;
    a cube with a corner behind the camera covers the whole image (conservative)."""
    corners = torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)],
                           dtype=lo.dtype, device=lo.device)
    pts = lo[:, None, :] + corners[None] * size                                     # [M, 8, 3]
    cam = pts @ w2c[:, :3].T + w2c[:, 3]
    z = cam[..., 2]
    behind = (z <= 1e-6).any(-1)
    zc = z.clamp(min=1e-6)
    px, py = fx * cam[..., 0] / zc + cx, fy * cam[..., 1] / zc + cy
    x0 = torch.floor(px.amin(-1) - 0.5).clamp(0, width)
    x1 = torch.ceil(px.amax(-1) + 0.5).clamp(0, width)
    y0 = torch.floor(py.amin(-1) - 0.5).clamp(0, height)
    y1 = torch.ceil(py.amax(-1) + 0.5).clamp(0, height)
    full = torch.tensor([0, 0, width, height], dtype=lo.dtype, device=lo.device)
    rects = torch.stack([x0, y0, x1, y1], -1)
    return torch.where(behind[:, None], full, rects).long()


def _camera_rays(c2w, fx, fy, cx, cy, width, height):
    from .torch_impl import pinhole_rays
    origins, dirs = pinhole_rays(c2w, fx, fy, cx, cy, width, height)
    return origins, dirs / dirs.norm(dim=-1, keepdim=True)


def render_cube_ordered(field, grid: OccupancyGrid, c2w, fx, fy, cx, cy, width: int, height: int,
                        step_size: float, early_stop_eps: float = EARLY_STOP_EPS):
    """RT-NeRF's rendering. Returns ``(image [H, W, 3], opacity [H, W], stats)``; ``stats``
    counts ``samples`` (field evaluations), ``cubes`` and ``ray_cube_tests`` (rays intersected
    with cubes). ``field.density(x)``, ``field.rgb(x)``; unit-direction rays through pixel centres."""
    origins, dirs = _camera_rays(c2w, fx, fy, cx, cy, width, height)
    outer = grid.aabbs[-1]
    t_min_all, _ = ray_box(origins, dirs, outer[:3], outer[3:])
    t_min_all = t_min_all.clamp(min=0.0)
    trans = torch.ones(width * height, device=origins.device)
    color = torch.zeros(width * height, 3, device=origins.device)
    cells, lo, size = occupied_cubes(grid)
    w2c = torch.cat([c2w[:, :3].T, -(c2w[:, :3].T @ c2w[:, 3:])], dim=1)
    camera_cell = (c2w[:, 3] - grid.aabbs[0, :3]) / size
    order = cube_order(cells, camera_cell)
    rects = cube_rects(lo, size, w2c, fx, fy, cx, cy, width, height)
    stats = {"samples": 0, "cubes": int(len(order)), "ray_cube_tests": 0}
    max_steps = int(math.ceil(float(size.norm()) / step_size)) + 2
    for c in order.tolist():
        x0, y0, x1, y1 = rects[c].tolist()
        if x0 >= x1 or y0 >= y1:
            continue
        ys, xs = torch.meshgrid(torch.arange(y0, y1), torch.arange(x0, x1), indexing="ij")
        rays = (ys * width + xs).reshape(-1).to(origins.device)
        rays = rays[trans[rays] >= early_stop_eps]           # finished rays do no more work
        if rays.numel() == 0:
            continue
        stats["ray_cube_tests"] += rays.numel()
        t_in, t_out = ray_box(origins[rays], dirs[rays], lo[c], lo[c] + size)
        hit = t_out > torch.maximum(t_in, t_min_all[rays])
        rays, t_in, t_out = rays[hit], t_in[hit], t_out[hit]
        if rays.numel() == 0:
            continue
        t0 = t_min_all[rays]
        # lattice points whose midpoint t0 + (k + 1/2) dt lies in [t_in, t_out)
        k_first = torch.ceil((torch.maximum(t_in, t0) - t0) / step_size - 0.5).clamp(min=0)
        k = k_first[:, None] + torch.arange(max_steps, device=origins.device)[None, :]
        mids = t0[:, None] + (k + 0.5) * step_size
        valid = mids < t_out[:, None]
        if not bool(valid.any()):
            continue
        pts = origins[rays][:, None, :] + mids[..., None] * dirs[rays][:, None, :]
        flat = pts[valid]
        sigma = torch.zeros(valid.shape, device=origins.device)
        rgb = torch.zeros(*valid.shape, 3, device=origins.device)
        sigma[valid] = field.density(flat)
        rgb[valid] = field.rgb(flat)
        stats["samples"] += int(valid.sum())
        alpha = 1.0 - torch.exp(-sigma * step_size)
        t_local = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1]], 1), 1)
        weights = trans[rays][:, None] * t_local * alpha
        color[rays] += (weights[..., None] * rgb).sum(1)
        trans[rays] = trans[rays] * t_local[:, -1] * (1.0 - alpha[:, -1])
    return color.reshape(height, width, 3), (1.0 - trans).reshape(height, width), stats


def render_uniform(field, grid: OccupancyGrid, c2w, fx, fy, cx, cy, width: int, height: int, step_size: float):
    """The baseline: every lattice point of every ray inside the grid's box, no skipping."""
    origins, dirs = _camera_rays(c2w, fx, fy, cx, cy, width, height)
    outer = grid.aabbs[-1]
    t_in, t_out = ray_box(origins, dirs, outer[:3], outer[3:])
    t_in = t_in.clamp(min=0.0)
    n_steps = int(math.ceil(float((t_out - t_in).clamp(min=0).max()) / step_size)) + 1
    mids = t_in[:, None] + (torch.arange(n_steps, device=origins.device)[None, :] + 0.5) * step_size
    valid = mids < t_out[:, None]
    pts = origins[:, None, :] + mids[..., None] * dirs[:, None, :]
    sigma = torch.zeros(valid.shape, device=origins.device)
    rgb = torch.zeros(*valid.shape, 3, device=origins.device)
    sigma[valid] = field.density(pts[valid])
    rgb[valid] = field.rgb(pts[valid])
    alpha = 1.0 - torch.exp(-sigma * step_size)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1]], 1), 1)
    weights = trans * alpha
    color = (weights[..., None] * rgb).sum(1)
    stats = {"samples": int(valid.sum())}
    return color.reshape(height, width, 3), weights.sum(1).reshape(height, width), stats


# ------------------------------------------------------------------ sparse block storage

def _coord_bits(block: int) -> int:
    return 3 * max(1, math.ceil(math.log2(block)))


def bitmap_bytes(block: int) -> int:
    """Bytes of a B^3 bitmap: one bit per voxel."""
    return math.ceil(block ** 3 / 8)


def coordinate_bytes(n_occupied: int, block: int) -> int:
    """Bytes of ``n`` packed (x, y, z) coordinates of ceil(log2 B) bits each."""
    return math.ceil(n_occupied * _coord_bits(block) / 8)


def crossover_density(block: int) -> float:
    """The density where the formats cost the same: n 3 ceil(log2 B) = B^3, so
    rho* = n / B^3 = 1 / (3 ceil(log2 B)). Below it, coordinates are smaller."""
    return 1.0 / _coord_bits(block)


def encode_block(mask: torch.Tensor):
    """``mask`` ``[B, B, B]`` bool -> ``("bitmap", uint8 bytes)`` or ``("coords", [n, 3] int)``,
    whichever is smaller in bits (ties go to the bitmap), and its size in bytes."""
    block = mask.shape[0]
    if mask.dim() != 3 or len(set(mask.shape)) != 1:
        raise ValueError(f"encode_block: mask must be a cube [B, B, B], got {list(mask.shape)}")
    n = int(mask.sum())
    if coordinate_bytes(n, block) < bitmap_bytes(block):
        return "coords", torch.nonzero(mask), coordinate_bytes(n, block)
    flat = mask.reshape(-1)
    pad = (-flat.numel()) % 8
    flat = torch.cat([flat, torch.zeros(pad, dtype=torch.bool, device=mask.device)])
    bits = (flat.reshape(-1, 8).to(torch.uint8) * (2 ** torch.arange(8, device=mask.device)).to(torch.uint8)).sum(-1)
    return "bitmap", bits.to(torch.uint8), bitmap_bytes(block)


def decode_block(kind: str, payload: torch.Tensor, block: int) -> torch.Tensor:
    """The inverse of :func:`encode_block`."""
    if kind == "coords":
        mask = torch.zeros(block, block, block, dtype=torch.bool, device=payload.device)
        if payload.numel():
            mask[payload[:, 0], payload[:, 1], payload[:, 2]] = True
        return mask
    if kind != "bitmap":
        raise ValueError(f"decode_block: kind must be 'bitmap' or 'coords', got {kind!r}")
    bits = ((payload[:, None].to(torch.int64) >> torch.arange(8, device=payload.device)) & 1).bool().reshape(-1)
    return bits[: block ** 3].reshape(block, block, block)
