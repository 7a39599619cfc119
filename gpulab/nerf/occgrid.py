"""The occupancy grid of instant-ngp (Müller et al. 2022, arXiv:2201.05989) as nerfacc's
``OccGridEstimator`` maintains it (``nerfacc/estimators/occ_grid.py``), and grid marching.

The grid: ``levels`` cubes of ``resolution**3`` cells; level 0 is the scene's box, each next
level doubles it about the same centre (instant-ngp's cascades for unbounded scenes). Each
cell keeps a float occupancy (density x marching step, the opacity a step through it would
have) and one bit: occupied or not. Training updates it every 16 steps (``n``):

* which cells: all of them for the first 256 steps (``warmup_steps``), then per level
  ``cells // 4`` uniformly drawn cells plus up to ``cells // 4`` of the occupied ones;
* where: one jittered point per cell, ``(cell + U[0, 1)^3) / resolution`` in the level's box;
* how: ``occ <- max(ema_decay * occ, new)`` with ``ema_decay = 0.95`` (a max, not a mean: one
  dense sample keeps a cell alive, and it fades by 5% per update once the field empties it);
* the bits: ``occupied = occ > min(mean(occ), occ_thre)``, ``occ_thre = 0.01`` (the mean
  over all cells of all levels; a cell marked -1 is invisible and left out, nerfacc's
  convention), packed 8 cells a byte (bit ``i % 8`` of byte ``i // 8``; instant-ngp orders
  cells along a Morton curve, here they are row-major ``(x * R + y) * R + z``).

Marching: samples at ``t_k = t_min + k * dt`` (``dt`` = the render step: sqrt(3)/1024 of the
box diagonal in instant-ngp for a unit cube, 5e-3 in nerfacc's NeRF-synthetic examples),
with ``dt = clamp(t * cone_angle, step, 1e10)`` when ``cone_angle > 0`` (0.004 for unbounded
scenes); a sample is kept when the cell under its midpoint is occupied (the finest level
whose box holds it). :func:`march_dense` visits every lattice point (the specification);
:func:`march_skipping` (numba) jumps over empty cells to the first lattice point past the
cell's exit and keeps exactly the same samples.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from numba import cuda

from .. import runtime
from ..launch import kernel
from .fields import ray_box
from .packing import pack_info

__all__ = ["OccupancyGrid", "cells_to_update", "ema_update", "pack_bits", "unpack_bits", "ray_bounds",
           "march_dense", "march_skipping", "EMA_DECAY", "OCC_THRE", "WARMUP_STEPS", "UPDATE_EVERY",
           "STEP_INSTANT_NGP", "STEP_NERFACC", "CONE_ANGLE_UNBOUNDED"]

EMA_DECAY = 0.95
OCC_THRE = 0.01
WARMUP_STEPS = 256
UPDATE_EVERY = 16
STEP_INSTANT_NGP = math.sqrt(3) / 1024      # per unit of box size: 1024 steps along the diagonal
STEP_NERFACC = 5e-3
CONE_ANGLE_UNBOUNDED = 0.004
BLOCK = 128
_ZERO = np.float32(0.0)


# ------------------------------------------------------------------ bits

def pack_bits(binary: torch.Tensor) -> torch.Tensor:
    """``[..., n]`` bools (n a multiple of 8) to ``[..., n // 8]`` uint8: cell i is bit i % 8 of byte i // 8."""
    if binary.shape[-1] % 8:
        raise ValueError(f"pack_bits: the last dimension must be a multiple of 8, got {binary.shape[-1]}")
    weights = (2 ** torch.arange(8, device=binary.device)).to(torch.uint8)
    grouped = binary.reshape(*binary.shape[:-1], -1, 8).to(torch.uint8)
    return (grouped * weights).sum(-1).to(torch.uint8)


def unpack_bits(bitfield: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pack_bits`."""
    shifts = torch.arange(8, device=bitfield.device)
    return ((bitfield[..., None].to(torch.int64) >> shifts) & 1).bool().reshape(*bitfield.shape[:-1], -1)


# ------------------------------------------------------------------ the update

def cells_to_update(step: int, binaries: torch.Tensor, gen: torch.Generator,
                    warmup_steps: int = WARMUP_STEPS) -> list[torch.Tensor]:
    """Per level, the cell indices an update at ``step`` evaluates (nerfacc's schedule):
    all cells before ``warmup_steps``; then ``n = cells // 4`` uniform cells plus ``n``
    occupied ones drawn with replacement (all of them if fewer are occupied).
    ``binaries``: ``[levels, cells]`` bool."""
    levels, cells = binaries.shape
    if step < warmup_steps:
        return [torch.arange(cells, device=binaries.device) for _ in range(levels)]
    n = cells // 4
    chosen = []
    for lvl in range(levels):
        uniform = torch.randint(cells, (n,), generator=gen).to(binaries.device)
        occupied = torch.nonzero(binaries[lvl])[:, 0]
        if n < len(occupied):
            occupied = occupied[torch.randint(len(occupied), (n,), generator=gen).to(binaries.device)]
        chosen.append(torch.cat([uniform, occupied]))
    return chosen


def ema_update(occs: torch.Tensor, indices: torch.Tensor, new_occ: torch.Tensor,
               ema_decay: float = EMA_DECAY, occ_thre: float = OCC_THRE):
    """One EMA step on the flat occupancies ``occs`` (all levels, ``[cells_total]``).

    ``occs[indices] = max(ema_decay * occs[indices], new_occ)`` (cells not evaluated keep
    their value; an index listed twice takes the largest of its new values), then
    ``threshold = min(mean(occs[occs >= 0]), occ_thre)`` and ``binary = occs > threshold``.
    Returns ``(occs, binary)``, new tensors.

    Example: occs ``[0.2, 0.0, 0.004, -1]``, indices ``[0, 1]``, new ``[0.1, 0.001]`` give
    occs ``[0.19, 0.001, 0.004, -1]``; the mean of the visible cells is 0.065, so the
    threshold is 0.01 and binary ``[True, False, False, False]``.
    """
    occs = occs.clone()
    decayed = occs[indices] * ema_decay
    best_new = torch.full_like(occs, -math.inf).scatter_reduce(0, indices, new_occ, reduce="amax")[indices]
    occs[indices] = torch.maximum(decayed, best_new)
    visible = occs[occs >= 0]
    threshold = min(float(visible.mean()) if visible.numel() else 0.0, occ_thre)
    return occs, occs > threshold


class OccupancyGrid:
    """``levels`` x ``resolution**3`` cells over ``aabb`` (level 0), doubling per level."""

    def __init__(self, aabb=(-1.0, -1.0, -1.0, 1.0, 1.0, 1.0), resolution: int = 128, levels: int = 1,
                 device=None):
        if resolution % 8 or resolution < 8:
            raise ValueError(f"resolution must be a multiple of 8 (bitfield bytes, level boundaries on cell "
                             f"boundaries), got {resolution}")
        if not 1 <= levels <= 8:
            raise ValueError(f"levels must be 1..8, got {levels}")
        device = device or runtime.device
        self.resolution, self.levels = resolution, levels
        self.cells = resolution ** 3
        base = torch.tensor(aabb, dtype=torch.float32)
        centre, half = (base[:3] + base[3:]) / 2, (base[3:] - base[:3]) / 2
        self.aabbs = torch.stack([torch.cat([centre - half * 2 ** l, centre + half * 2 ** l])
                                  for l in range(levels)]).to(device)
        self.occs = torch.zeros(levels * self.cells, dtype=torch.float32, device=device)
        self.bitfield = torch.zeros(levels, self.cells // 8, dtype=torch.uint8, device=device)
        r = torch.arange(resolution, device=device)
        self.grid_coords = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)

    @property
    def binaries(self) -> torch.Tensor:
        """``[levels, cells]`` bool, unpacked from the bitfield."""
        return unpack_bits(self.bitfield)

    def update(self, step: int, occ_eval_fn, gen: torch.Generator, occ_thre: float = OCC_THRE,
               ema_decay: float = EMA_DECAY, warmup_steps: int = WARMUP_STEPS) -> int:
        """One update (nerfacc's ``_update``); returns how many cells were evaluated.
        ``occ_eval_fn(x [N, 3]) -> [N]``: density times the render step."""
        chosen = cells_to_update(step, self.binaries, gen, warmup_steps)
        all_indices, all_new = [], []
        for lvl, cells in enumerate(chosen):
            jitter = torch.rand(len(cells), 3, generator=gen).to(self.occs.device)
            unit = (self.grid_coords[cells] + jitter) / self.resolution
            lo, hi = self.aabbs[lvl, :3], self.aabbs[lvl, 3:]
            all_new.append(occ_eval_fn(lo + unit * (hi - lo)).reshape(-1).float())
            all_indices.append(lvl * self.cells + cells)
        indices = torch.cat(all_indices)
        self.occs, binary = ema_update(self.occs, indices, torch.cat(all_new), ema_decay, occ_thre)
        self.bitfield = pack_bits(binary.view(self.levels, self.cells))
        return len(indices)

    def update_every_n_steps(self, step: int, occ_eval_fn, gen: torch.Generator, n: int = UPDATE_EVERY,
                             **options) -> int:
        """nerfacc's schedule: an update when ``step % n == 0`` (0 cells otherwise)."""
        return self.update(step, occ_eval_fn, gen, **options) if step % n == 0 else 0

    def occupied(self, x: torch.Tensor) -> torch.Tensor:
        """Whether the cell under each point ``[N, 3]`` is occupied (finest level holding it;
        outside every level: no)."""
        result = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        done = torch.zeros_like(result)
        binaries = self.binaries
        for lvl in range(self.levels):
            lo, hi = self.aabbs[lvl, :3], self.aabbs[lvl, 3:]
            inside = ((x >= lo) & (x < hi)).all(-1) & ~done
            cell = ((x - lo) / (hi - lo) * self.resolution).floor().long().clamp(0, self.resolution - 1)
            index = (cell[:, 0] * self.resolution + cell[:, 1]) * self.resolution + cell[:, 2]
            result = torch.where(inside, binaries[lvl][index.clamp(0, self.cells - 1)], result)
            done = done | inside
        return result


# ------------------------------------------------------------------ marching

def ray_bounds(grid: OccupancyGrid, origins: torch.Tensor, dirs: torch.Tensor, near_plane: float = 0.0,
               far_plane: float = 1e10):
    """``t_min, t_max`` of each ray inside the outermost level's box, clipped to the planes
    (a miss gives ``t_min >= t_max``: no samples)."""
    if not torch.allclose(dirs.norm(dim=-1), torch.ones_like(dirs[:, 0]), atol=1e-4):
        raise ValueError("marching needs unit directions (t is a distance): pass dirs / dirs.norm(dim=-1, keepdim=True)")
    outer = grid.aabbs[-1]
    t_in, t_out = ray_box(origins, dirs, outer[:3], outer[3:])
    return t_in.clamp(min=near_plane), t_out.clamp(max=far_plane)


def march_dense(grid: OccupancyGrid, origins: torch.Tensor, dirs: torch.Tensor, step_size: float,
                near_plane: float = 0.0, far_plane: float = 1e10, cone_angle: float = 0.0):
    """Every lattice point of every ray, kept where its midpoint's cell is occupied.
    Returns ``(packed_info, t_starts, t_ends, visited)``: ``visited[r]`` lattice points looked at."""
    t_min, t_max = ray_bounds(grid, origins, dirs, near_plane, far_plane)
    step = torch.tensor(step_size, dtype=torch.float32)
    starts_list, ends_list, keep_list = [], [], []
    t = t_min.clone()
    active = t < t_max
    visited = torch.zeros(len(t), dtype=torch.int64, device=t.device)
    while bool(active.any()):                 # one lattice point of every active ray per pass
        dt = torch.clamp(t * cone_angle, min=step, max=1e10) if cone_angle > 0 else step.expand_as(t)
        t_end = torch.minimum(t + dt, t_max)
        mid = (t + t_end) * 0.5
        keep = active & grid.occupied(origins + mid[:, None] * dirs)
        starts_list.append(t.clone()); ends_list.append(t_end); keep_list.append(keep)
        visited += active.long()
        # the uniform lattice is t_min + k * step (recomputed, not summed: the skipping
        # marcher jumps to a k, and both must land on the same float)
        t_next = t + dt if cone_angle > 0 else t_min + visited.float() * step
        t = torch.where(active, t_next, t)
        active = active & (t < t_max)
    if not keep_list:
        empty = torch.zeros(0, dtype=torch.float32, device=t.device)
        return pack_info(torch.zeros(len(t), dtype=torch.int64, device=t.device)), empty, empty.clone(), visited
    keep = torch.stack(keep_list, 1)                       # [rays, passes], ray-major = packed order
    t_starts = torch.stack(starts_list, 1)[keep]
    t_ends = torch.stack(ends_list, 1)[keep]
    return pack_info(keep.sum(1)), t_starts, t_ends, visited


@cuda.jit(device=True)
def _cell_state(px, py, pz, aabbs, bitfield, res):
    """(occupied, level, cx, cy, cz) of the finest level holding the point; level -1 if none."""
    cells = np.float32(res)                # float32 x int64 would be float64 on the GPU
    for lvl in range(aabbs.shape[0]):
        lo_x, lo_y, lo_z = aabbs[lvl, 0], aabbs[lvl, 1], aabbs[lvl, 2]
        hi_x, hi_y, hi_z = aabbs[lvl, 3], aabbs[lvl, 4], aabbs[lvl, 5]
        if lo_x <= px < hi_x and lo_y <= py < hi_y and lo_z <= pz < hi_z:
            cx = min(max(int(math.floor((px - lo_x) / (hi_x - lo_x) * cells)), 0), res - 1)
            cy = min(max(int(math.floor((py - lo_y) / (hi_y - lo_y) * cells)), 0), res - 1)
            cz = min(max(int(math.floor((pz - lo_z) / (hi_z - lo_z) * cells)), 0), res - 1)
            index = (cx * res + cy) * res + cz
            bit = (bitfield[lvl, index >> 3] >> (index & 7)) & 1
            return bit == 1, lvl, cx, cy, cz
    return False, -1, 0, 0, 0


@cuda.jit(device=True)
def _axis_exit(o, d, lo, hi):
    """Distance along the ray to the face of [lo, hi] it leaves through, on one axis."""
    if d > _ZERO:
        return (hi - o) / d
    if d < _ZERO:
        return (lo - o) / d
    return np.float32(1e30)


@kernel
def march_kernel(origins, dirs, t_min, t_max, aabbs, bitfield, res, step, cone_angle, skip, write, offsets,
                 counts, visited, t_starts, t_ends):
    r = cuda.grid(1)
    if r >= origins.shape[0]:
        return
    ox, oy, oz = origins[r, 0], origins[r, 1], origins[r, 2]
    dx, dy, dz = dirs[r, 0], dirs[r, 1], dirs[r, 2]
    t, end = t_min[r], t_max[r]
    n, looked, k = 0, 0, 0
    while t < end:
        dt = step
        if cone_angle > _ZERO:
            dt = min(max(t * cone_angle, step), np.float32(1e10))
        t_end = min(t + dt, end)
        mid = (t + t_end) * np.float32(0.5)
        looked += 1
        occupied, lvl, cx, cy, cz = _cell_state(ox + mid * dx, oy + mid * dy, oz + mid * dz, aabbs, bitfield, res)
        if occupied:
            if write:
                t_starts[offsets[r] + n] = t
                t_ends[offsets[r] + n] = t_end
            n += 1
        if occupied or lvl < 0 or cone_angle > _ZERO or not skip:
            k += 1
            t = t + dt if cone_angle > _ZERO else t_min[r] + np.float32(k) * step
            continue
        # an empty cell: the first lattice point whose midpoint may lie past the cell's exit,
        # less one (a whole step of margin against rounding: never skip an occupied sample)
        # (all float32: an int64 cell index or resolution in the product would make it float64)
        cells = np.float32(res)
        size_x = (aabbs[lvl, 3] - aabbs[lvl, 0]) / cells
        size_y = (aabbs[lvl, 4] - aabbs[lvl, 1]) / cells
        size_z = (aabbs[lvl, 5] - aabbs[lvl, 2]) / cells
        lo_x = aabbs[lvl, 0] + np.float32(cx) * size_x
        lo_y = aabbs[lvl, 1] + np.float32(cy) * size_y
        lo_z = aabbs[lvl, 2] + np.float32(cz) * size_z
        t_exit = min(_axis_exit(ox, dx, lo_x, lo_x + size_x),
                     min(_axis_exit(oy, dy, lo_y, lo_y + size_y), _axis_exit(oz, dz, lo_z, lo_z + size_z)))
        k_next = int(math.ceil((t_exit - t_min[r]) / step - np.float32(0.5))) - 1
        k = max(k + 1, k_next)
        t = t_min[r] + np.float32(k) * step
    counts[r] = n
    visited[r] = looked


def march_skipping(grid: OccupancyGrid, origins: torch.Tensor, dirs: torch.Tensor, step_size: float,
                   near_plane: float = 0.0, far_plane: float = 1e10, cone_angle: float = 0.0, skip: bool = True):
    """Same samples as :func:`march_dense`, one thread per ray jumping over empty cells
    (with ``cone_angle > 0`` it steps point by point: the lattice is not uniform).
    ``skip=False`` runs the same kernel visiting every lattice point: on a GPU, where the
    compiler fuses multiply-adds, that is the exact reference (torch's float rounding can
    differ from the kernel's by an ulp at a cell face)."""
    t_min, t_max = ray_bounds(grid, origins, dirs, near_plane, far_plane)
    n = origins.shape[0]
    dev = origins.device
    counts = torch.zeros(n, dtype=torch.int64, device=dev)
    visited = torch.zeros(n, dtype=torch.int64, device=dev)
    dummy = torch.zeros(1, dtype=torch.float32, device=dev)
    args = (origins.contiguous(), dirs.contiguous(), t_min.contiguous(), t_max.contiguous(), grid.aabbs.contiguous(),
            grid.bitfield, grid.resolution, np.float32(step_size), np.float32(cone_angle), bool(skip))
    blocks = max(1, math.ceil(n / BLOCK))
    march_kernel[blocks, BLOCK](*args, False, counts, counts, visited, dummy, dummy)      # pass 1: count
    info = pack_info(counts)
    total = int(counts.sum())
    t_starts = torch.empty(total, dtype=torch.float32, device=dev)
    t_ends = torch.empty(total, dtype=torch.float32, device=dev)
    if total:
        march_kernel[blocks, BLOCK](*args, True, info[:, 0].contiguous(), counts, visited, t_starts, t_ends)
    return info, t_starts, t_ends, visited
