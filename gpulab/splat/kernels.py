"""The 3D Gaussian splatting pipeline as numba.cuda kernels: the fast path.

Same stages and signatures as :mod:`.torch_impl`; tests hold them equal. The structure is
that of diff-gaussian-rasterization (Kerbl et al. 2023):

* ``project_kernel``: one thread per Gaussian (3D covariance, EWA, conic, radius, culling);
* ``sh_kernel``: one thread per Gaussian, spherical harmonics to RGB;
* ``count_tiles_kernel`` + an exclusive scan (``torch.cumsum``) + ``write_keys_kernel``:
  each Gaussian writes one ``tile << 32 | depth`` key per tile it touches at its offset;
* the sort is ``torch.sort`` (CUB's radix sort on a GPU, as the original uses CUB);
* ``tile_ranges_kernel``: one thread per sorted key finds where each tile's run starts/ends;
* :func:`bin_and_sort`, what :func:`~gpulab.splat.render.render` runs: the same pairs sorted
  tile-major with 32-bit keys. The Gaussians are sorted by depth once (N keys, not one per
  pair), ``write_tile_ids_kernel`` writes each pair's tile id in that order, and a stable
  sort of the 32-bit tile ids keeps each tile's list front to back: 4 radix passes over
  4-byte keys instead of 8 over 8-byte ones, the same lists as the 64-bit keys give;
* the raster kernel: one block per 16x16 tile, one thread per pixel; each round the
  block stages 256 Gaussians in shared memory (one load per thread), then every thread
  composites them front to back; the block leaves when all its pixels are saturated.

Everything in kernels is float32: constants are ``np.float32`` module globals, and camera
scalars are passed as ``np.float32`` (a Python float would make numba compute in float64).
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch
from numba import cuda, float32, int32, int64

from .. import runtime
from ..launch import kernel
from .constants import (ALPHA_MIN, BATCH, EIGEN_FLOOR, EXTEND_MAX, FOV_CLAMP, LOW_PASS, SH_C0, SH_C1, SH_C2,
                        SH_C3, SIGMAS, T_MIN, TILE)
from . import tilesort
from .footprints import GAUSSIAN, Footprint
from .torch_impl import Projection, sort_keys, tile_grid

__all__ = [
    "project_kernel", "sh_kernel", "count_tiles_kernel", "write_keys_kernel", "tile_ranges_kernel",
    "write_tile_ids_kernel", "tile_ranges_of_tiles_kernel", "extents_kernel", "raster_kernel_for",
    "project_gaussians", "tile_extents",
    "sh_to_color", "bin_gaussians", "sort_keys", "bin_and_sort", "tile_ranges", "rasterize_tiles", "BLOCK_1D",
]

BLOCK_1D = 256          # threads per block of the one-thread-per-item kernels
# how render's numba path sorts the pairs by tile: "counting" (tilesort) or "torch" (torch.sort)
SORT = os.environ.get("GPULAB_SPLAT_SORT", "counting")
if SORT not in ("counting", "torch"):
    raise ValueError(f"GPULAB_SPLAT_SORT must be 'counting' or 'torch', got {SORT!r}")

_F0, _F1, _F2 = np.float32(0.0), np.float32(1.0), np.float32(2.0)
_F3, _F4 = np.float32(3.0), np.float32(4.0)
_HALF = np.float32(0.5)
_LOW_PASS = np.float32(LOW_PASS)
_EIGEN_FLOOR = np.float32(EIGEN_FLOOR)
_SIGMAS = np.float32(SIGMAS)
_EXTEND_MAX = np.float32(EXTEND_MAX)
_INV_TILE = np.float32(1.0 / TILE)
_EPS = np.float32(1e-12)
_ALPHA_MIN = np.float32(ALPHA_MIN)
_T_MIN = np.float32(T_MIN)
_MASK32 = np.int64(0xFFFFFFFF)
_C0, _C1 = np.float32(SH_C0), np.float32(SH_C1)
_C20, _C21, _C22, _C23, _C24 = (np.float32(c) for c in SH_C2)
_C30, _C31, _C32, _C33, _C34, _C35, _C36 = (np.float32(c) for c in SH_C3)


# ------------------------------------------------------------------ input checks

def _require(t, name: str, shape: tuple, dtype=torch.float32) -> None:
    """``shape`` uses None for any extent; raises TypeError/ValueError that say what to do."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise TypeError(f"{name} must be {dtype} for the numba kernels, got {t.dtype} "
                        f"(convert with .to({dtype}))")
    if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name} must have shape {want}, got {list(t.shape)}")
    if t.device.type != runtime.device.type:
        raise ValueError(f"{name} is on {t.device}; the kernels need tensors on {runtime.device}")


def _blocks(n: int, block: int = BLOCK_1D) -> int:
    return (n + block - 1) // block


# ------------------------------------------------------------------ projection

@cuda.jit(device=True)
def covariance_3d_device(qw, qx, qy, qz, sx, sy, sz):
    """Upper triangle (xx, xy, xz, yy, yz, zz) of R S S^T R^T; the quaternion is normalised."""
    norm = math.sqrt(qw * qw + qx * qx + qy * qy + qz * qz)
    inv = _F1 / max(norm, _EPS)
    w, x, y, z = qw * inv, qx * inv, qy * inv, qz * inv
    r00 = _F1 - _F2 * (y * y + z * z)
    r01 = _F2 * (x * y - w * z)
    r02 = _F2 * (x * z + w * y)
    r10 = _F2 * (x * y + w * z)
    r11 = _F1 - _F2 * (x * x + z * z)
    r12 = _F2 * (y * z - w * x)
    r20 = _F2 * (x * z - w * y)
    r21 = _F2 * (y * z + w * x)
    r22 = _F1 - _F2 * (x * x + y * y)
    # M = R S (column k scaled by s_k); Sigma = M M^T
    m00, m01, m02 = r00 * sx, r01 * sy, r02 * sz
    m10, m11, m12 = r10 * sx, r11 * sy, r12 * sz
    m20, m21, m22 = r20 * sx, r21 * sy, r22 * sz
    return (m00 * m00 + m01 * m01 + m02 * m02,
            m00 * m10 + m01 * m11 + m02 * m12,
            m00 * m20 + m01 * m21 + m02 * m22,
            m10 * m10 + m11 * m11 + m12 * m12,
            m10 * m20 + m11 * m21 + m12 * m22,
            m20 * m20 + m21 * m21 + m22 * m22)


@cuda.jit(device=True)
def ewa_cov2d_device(x, y, z, s00, s01, s02, s11, s12, s22, view, fx, fy, lim_x, lim_y):
    """(a, b, c) of cov2d = T Sigma T^T, T = J W, with x/z and y/z clamped (no low-pass yet)."""
    tx = min(lim_x, max(-lim_x, x / z)) * z
    ty = min(lim_y, max(-lim_y, y / z)) * z
    j00 = fx / z
    j02 = -fx * tx / (z * z)
    j11 = fy / z
    j12 = -fy * ty / (z * z)
    # rows of T = J W (W = the view rotation, view[0:3, 0:3])
    t00 = j00 * view[0, 0] + j02 * view[2, 0]
    t01 = j00 * view[0, 1] + j02 * view[2, 1]
    t02 = j00 * view[0, 2] + j02 * view[2, 2]
    t10 = j11 * view[1, 0] + j12 * view[2, 0]
    t11 = j11 * view[1, 1] + j12 * view[2, 1]
    t12 = j11 * view[1, 2] + j12 * view[2, 2]
    # u = Sigma t0^T, v = Sigma t1^T
    u0 = s00 * t00 + s01 * t01 + s02 * t02
    u1 = s01 * t00 + s11 * t01 + s12 * t02
    u2 = s02 * t00 + s12 * t01 + s22 * t02
    v0 = s00 * t10 + s01 * t11 + s02 * t12
    v1 = s01 * t10 + s11 * t11 + s12 * t12
    v2 = s02 * t10 + s12 * t11 + s22 * t12
    return (t00 * u0 + t01 * u1 + t02 * u2,
            t10 * u0 + t11 * u1 + t12 * u2,
            t10 * v0 + t11 * v1 + t12 * v2)


@cuda.jit(device=True)
def tile_rect_device(mx, my, rx, ry, tiles_x, tiles_y):
    """Tiles (x0, y0, x1, y1) touched by the box [mx - rx, mx + rx] x [my - ry, my + ry]; x1, y1 exclusive."""
    ftx = float32(tiles_x)
    fty = float32(tiles_y)
    x0 = int32(math.floor(min(max((mx - rx) * _INV_TILE, _F0), ftx)))
    x1 = int32(math.ceil(min(max((mx + rx) * _INV_TILE, _F0), ftx)))
    y0 = int32(math.floor(min(max((my - ry) * _INV_TILE, _F0), fty)))
    y1 = int32(math.ceil(min(max((my + ry) * _INV_TILE, _F0), fty)))
    return x0, y0, x1, y1


@kernel
def project_kernel(means, quats, scales, view, fx, fy, cx, cy, lim_x, lim_y, near, tiles_x, tiles_y,
                   means2d, depths, conics, radii):
    """One thread per Gaussian: view transform, culling, EWA 2D covariance, conic, radius."""
    i = cuda.grid(1)
    if i >= means.shape[0]:
        return
    px, py, pz = means[i, 0], means[i, 1], means[i, 2]
    x = view[0, 0] * px + view[0, 1] * py + view[0, 2] * pz + view[0, 3]
    y = view[1, 0] * px + view[1, 1] * py + view[1, 2] * pz + view[1, 3]
    z = view[2, 0] * px + view[2, 1] * py + view[2, 2] * pz + view[2, 3]
    depths[i] = z
    # culled Gaussians keep these zeros (radius 0 tells the later stages to skip them)
    means2d[i, 0] = _F0
    means2d[i, 1] = _F0
    conics[i, 0] = _F0
    conics[i, 1] = _F0
    conics[i, 2] = _F0
    radii[i] = 0
    if z <= near:                       # behind the camera or too close: cull
        return
    s00, s01, s02, s11, s12, s22 = covariance_3d_device(
        quats[i, 0], quats[i, 1], quats[i, 2], quats[i, 3], scales[i, 0], scales[i, 1], scales[i, 2])
    a, b, c = ewa_cov2d_device(x, y, z, s00, s01, s02, s11, s12, s22, view, fx, fy, lim_x, lim_y)
    a += _LOW_PASS                      # every splat covers at least about one pixel
    c += _LOW_PASS
    det = a * c - b * b
    if det <= _F0:
        return
    mid = _HALF * (a + c)
    lambda_max = mid + math.sqrt(max(_EIGEN_FLOOR, mid * mid - det))
    radius = math.ceil(_SIGMAS * math.sqrt(lambda_max))
    mx = fx * x / z + cx
    my = fy * y / z + cy
    x0, y0, x1, y1 = tile_rect_device(mx, my, float32(radius), float32(radius), tiles_x, tiles_y)
    if (x1 - x0) * (y1 - y0) == 0:      # entirely off screen
        return
    means2d[i, 0] = mx
    means2d[i, 1] = my
    inv_det = _F1 / det
    conics[i, 0] = c * inv_det
    conics[i, 1] = -b * inv_det
    conics[i, 2] = a * inv_det
    radii[i] = int32(radius)


def _f32(x) -> np.float32:
    return np.float32(x)


def project_gaussians(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, camera) -> Projection:
    """numba twin of :func:`torch_impl.project_gaussians`."""
    _require(means, "means", (None, 3))
    n = means.shape[0]
    _require(quats, "quats", (n, 4))
    _require(scales, "scales", (n, 3))
    view = camera.viewmat.to(device=means.device, dtype=torch.float32).contiguous()
    tiles_x, tiles_y = tile_grid(camera.width, camera.height)
    means2d = torch.empty(n, 2, dtype=torch.float32, device=means.device)
    depths = torch.empty(n, dtype=torch.float32, device=means.device)
    conics = torch.empty(n, 3, dtype=torch.float32, device=means.device)
    radii = torch.empty(n, dtype=torch.int32, device=means.device)
    project_kernel[_blocks(n), BLOCK_1D](
        means.contiguous(), quats.contiguous(), scales.contiguous(), view,
        _f32(camera.fx), _f32(camera.fy), _f32(camera.cx), _f32(camera.cy),
        _f32(FOV_CLAMP * camera.tan_fovx), _f32(FOV_CLAMP * camera.tan_fovy), _f32(camera.near),
        tiles_x, tiles_y, means2d, depths, conics, radii)
    return Projection(means2d, depths, conics, radii)


@kernel
def extents_kernel(conics, opacities, radii, extents):
    """One thread per Gaussian: the opacity-aware per-axis box of :func:`torch_impl.tile_extents`."""
    i = cuda.grid(1)
    if i >= radii.shape[0]:
        return
    extents[i, 0] = 0
    extents[i, 1] = 0
    a = conics[i, 0]
    b = conics[i, 1]
    c = conics[i, 2]
    det = a * c - b * b
    opacity = opacities[i]
    if radii[i] <= 0 or det <= _F0 or opacity < _ALPHA_MIN:
        return
    extend = min(_EXTEND_MAX, math.sqrt(_F2 * math.log(opacity / _ALPHA_MIN)))
    extents[i, 0] = int32(math.ceil(extend * math.sqrt(max(_F0, c / det))))
    extents[i, 1] = int32(math.ceil(extend * math.sqrt(max(_F0, a / det))))


def tile_extents(conics: torch.Tensor, opacities: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """numba twin of :func:`torch_impl.tile_extents`: [N, 2] int32 (rx, ry)."""
    _require(conics, "conics", (None, 3))
    n = conics.shape[0]
    _require(opacities, "opacities", (n,))
    _require(radii, "radii", (n,), torch.int32)
    extents = torch.empty(n, 2, dtype=torch.int32, device=conics.device)
    extents_kernel[_blocks(n), BLOCK_1D](conics.contiguous(), opacities.contiguous(), radii, extents)
    return extents


# ------------------------------------------------------------------ colour

@kernel
def sh_kernel(sh, means, campos, degree, colors):
    """One thread per Gaussian: RGB = SH(direction from the camera) + 0.5, clamped at 0."""
    i = cuda.grid(1)
    if i >= means.shape[0]:
        return
    dx = means[i, 0] - campos[0]
    dy = means[i, 1] - campos[1]
    dz = means[i, 2] - campos[2]
    inv = _F1 / max(math.sqrt(dx * dx + dy * dy + dz * dz), _EPS)
    x, y, z = dx * inv, dy * inv, dz * inv
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    for ch in range(3):
        r = _C0 * sh[i, 0, ch]
        if degree > 0:
            r = r - _C1 * y * sh[i, 1, ch] + _C1 * z * sh[i, 2, ch] - _C1 * x * sh[i, 3, ch]
        if degree > 1:
            r = (r + _C20 * xy * sh[i, 4, ch] + _C21 * yz * sh[i, 5, ch]
                 + _C22 * (_F2 * zz - xx - yy) * sh[i, 6, ch] + _C23 * xz * sh[i, 7, ch]
                 + _C24 * (xx - yy) * sh[i, 8, ch])
        if degree > 2:
            r = (r + _C30 * y * (_F3 * xx - yy) * sh[i, 9, ch]
                 + _C31 * xy * z * sh[i, 10, ch]
                 + _C32 * y * (_F4 * zz - xx - yy) * sh[i, 11, ch]
                 + _C33 * z * (_F2 * zz - _F3 * xx - _F3 * yy) * sh[i, 12, ch]
                 + _C34 * x * (_F4 * zz - xx - yy) * sh[i, 13, ch]
                 + _C35 * z * (xx - yy) * sh[i, 14, ch]
                 + _C36 * x * (xx - _F3 * yy) * sh[i, 15, ch])
        colors[i, ch] = max(r + _HALF, _F0)


def _check_degree(sh: torch.Tensor, degree: int) -> None:
    if not isinstance(degree, int) or not 0 <= degree <= 3:
        raise ValueError(f"sh degree must be an int from 0 to 3, got {degree!r}")
    if sh.dim() != 3 or sh.shape[2] != 3 or sh.shape[1] < (degree + 1) ** 2:
        raise ValueError(f"degree {degree} needs sh of shape [N, >= {(degree + 1) ** 2}, 3], "
                         f"got {list(sh.shape)}")


def sh_to_color(sh: torch.Tensor, means: torch.Tensor, campos: torch.Tensor, degree: int) -> torch.Tensor:
    """numba twin of :func:`torch_impl.sh_to_color`."""
    _require(means, "means", (None, 3))
    _require(sh, "sh", (means.shape[0], None, 3))
    _check_degree(sh, degree)
    colors = torch.empty(means.shape[0], 3, dtype=torch.float32, device=means.device)
    campos = campos.to(device=means.device, dtype=torch.float32).contiguous()
    sh_kernel[_blocks(len(means)), BLOCK_1D](sh.contiguous(), means.contiguous(), campos, degree, colors)
    return colors


# ------------------------------------------------------------------ binning

@kernel
def count_tiles_kernel(means2d, radii, tiles_x, tiles_y, counts):
    """counts[i] = number of tiles Gaussian i's box (half-sizes ``radii[i]`` = (rx, ry)) touches."""
    i = cuda.grid(1)
    if i >= radii.shape[0]:
        return
    counts[i] = 0
    if radii[i, 0] <= 0 or radii[i, 1] <= 0:
        return
    x0, y0, x1, y1 = tile_rect_device(means2d[i, 0], means2d[i, 1], float32(radii[i, 0]),
                                      float32(radii[i, 1]), tiles_x, tiles_y)
    counts[i] = (x1 - x0) * (y1 - y0)


@kernel
def write_keys_kernel(means2d, radii, depth_bits, offsets, tiles_x, tiles_y, keys, ids):
    """Gaussian i writes its keys at [offsets[i-1], offsets[i]) (offsets: inclusive scan)."""
    i = cuda.grid(1)
    if i >= radii.shape[0] or radii[i, 0] <= 0 or radii[i, 1] <= 0:
        return
    k = int64(0) if i == 0 else offsets[i - 1]
    x0, y0, x1, y1 = tile_rect_device(means2d[i, 0], means2d[i, 1], float32(radii[i, 0]),
                                      float32(radii[i, 1]), tiles_x, tiles_y)
    depth = int64(depth_bits[i]) & _MASK32
    for ty in range(y0, y1):
        for tx in range(x0, x1):
            keys[k] = (int64(ty * tiles_x + tx) << 32) | depth
            ids[k] = i
            k += 1


def _box_half_sizes(radii: torch.Tensor, n: int) -> torch.Tensor:
    """[N, 2] int32 (rx, ry) from radii [N] (a square) or [N, 2]."""
    if isinstance(radii, torch.Tensor) and radii.dim() == 1:
        _require(radii, "radii", (n,), torch.int32)
        return radii[:, None].expand(n, 2).contiguous()
    _require(radii, "radii", (n, 2), torch.int32)
    return radii.contiguous()


def bin_gaussians(means2d: torch.Tensor, radii: torch.Tensor, depths: torch.Tensor, width: int, height: int):
    """numba twin of :func:`torch_impl.bin_gaussians` (same keys in the same order)."""
    _require(means2d, "means2d", (None, 2))
    n = means2d.shape[0]
    radii = _box_half_sizes(radii, n)
    _require(depths, "depths", (n,))
    tiles_x, tiles_y = tile_grid(width, height)
    counts = torch.empty(n, dtype=torch.int32, device=means2d.device)
    count_tiles_kernel[_blocks(n), BLOCK_1D](means2d, radii, tiles_x, tiles_y, counts)
    offsets = torch.cumsum(counts, 0)                       # int64 inclusive scan
    total = int(offsets[-1]) if n else 0                    # the one host sync of the pipeline
    keys = torch.empty(total, dtype=torch.int64, device=means2d.device)
    ids = torch.empty(total, dtype=torch.int32, device=means2d.device)
    depth_bits = depths.contiguous().view(torch.int32)      # reinterpret, no copy
    write_keys_kernel[_blocks(n), BLOCK_1D](means2d, radii, depth_bits, offsets, tiles_x, tiles_y, keys, ids)
    return keys, ids


@kernel
def tile_ranges_kernel(sorted_keys, ranges):
    """One thread per key: a change of tile between key i-1 and key i ends one run, starts the next."""
    i = cuda.grid(1)
    n = sorted_keys.shape[0]
    if i >= n:
        return
    tile = sorted_keys[i] >> 32
    if i == 0:
        ranges[tile, 0] = 0
    else:
        prev = sorted_keys[i - 1] >> 32
        if tile != prev:
            ranges[prev, 1] = i
            ranges[tile, 0] = i
    if i == n - 1:
        ranges[tile, 1] = n


@kernel
def tile_ranges_of_tiles_kernel(sorted_tiles, ranges):
    """:func:`tile_ranges_kernel` for sorted 32-bit tile ids (what :func:`bin_and_sort` gives)."""
    i = cuda.grid(1)
    n = sorted_tiles.shape[0]
    if i >= n:
        return
    tile = sorted_tiles[i]
    if i == 0:
        ranges[tile, 0] = 0
    else:
        prev = sorted_tiles[i - 1]
        if tile != prev:
            ranges[prev, 1] = i
            ranges[tile, 0] = i
    if i == n - 1:
        ranges[tile, 1] = n


def tile_ranges(sorted_keys: torch.Tensor, n_tiles: int) -> torch.Tensor:
    """numba twin of :func:`torch_impl.tile_ranges` (int64 keys, or int32 tile ids)."""
    if not isinstance(sorted_keys, torch.Tensor) or sorted_keys.dtype not in (torch.int64, torch.int32):
        got = sorted_keys.dtype if isinstance(sorted_keys, torch.Tensor) else type(sorted_keys).__name__
        raise TypeError(f"sorted_keys must be int64 keys (tile << 32 | depth) or int32 tile ids, got {got}")
    _require(sorted_keys, "sorted_keys", (None,), sorted_keys.dtype)
    ranges = torch.zeros(n_tiles, 2, dtype=torch.int32, device=sorted_keys.device)
    launch = tile_ranges_kernel if sorted_keys.dtype == torch.int64 else tile_ranges_of_tiles_kernel
    launch[_blocks(len(sorted_keys)), BLOCK_1D](sorted_keys, ranges)
    return ranges


@kernel
def write_tile_ids_kernel(order, means2d, radii, offsets, tiles_x, tiles_y, tiles, ids):
    """Thread r takes the r-th nearest Gaussian, ``order[r]``, and writes its tile ids (32 bits)
    and its id at [offsets[r-1], offsets[r]): pairs come out front to back."""
    r = cuda.grid(1)
    if r >= order.shape[0]:
        return
    i = order[r]
    if radii[i, 0] <= 0 or radii[i, 1] <= 0:
        return
    k = int32(0) if r == 0 else offsets[r - 1]
    x0, y0, x1, y1 = tile_rect_device(means2d[i, 0], means2d[i, 1], float32(radii[i, 0]),
                                      float32(radii[i, 1]), tiles_x, tiles_y)
    for ty in range(y0, y1):
        for tx in range(x0, x1):
            tiles[k] = ty * tiles_x + tx
            ids[k] = i
            k += 1


def bin_and_sort(means2d: torch.Tensor, radii: torch.Tensor, depths: torch.Tensor, width: int, height: int):
    """numba twin of :func:`torch_impl.bin_and_sort`: (sorted tile ids [L] int32, Gaussian ids [L] int32).

    Tile-major with 32-bit keys: depth order once per Gaussian, pairs written in that order,
    then a stable sort of the tile ids (:mod:`.tilesort`'s one-pass counting sort; torch.sort
    where the image has more than ``tilesort.MAX_TILES`` tiles). 3DGS and gsplat sort 64-bit
    (tile, depth) keys with CUB instead (gsplat limits the radix sort to the bits the tile ids
    use); torch.sort has no bit range and sorts (key, int64 index) pairs.
    """
    tiles, ids, _ = _bin_sort_ranges(means2d, radii, depths, width, height)
    return tiles, ids


def _bin_sort_ranges(means2d, radii, depths, width: int, height: int):
    """:func:`bin_and_sort` plus the tile ranges, which the counting sort gives for free."""
    tiles_x, tiles_y = tile_grid(width, height)
    return _sort_by_tile(*_bin_front_to_back(means2d, radii, depths, width, height), tiles_x * tiles_y)


def _bin_front_to_back(means2d, radii, depths, width: int, height: int):
    """The pairs (tile ids [L] int32, Gaussian ids [L] int32), unsorted, nearest Gaussian first."""
    _require(means2d, "means2d", (None, 2))
    n = means2d.shape[0]
    radii = _box_half_sizes(radii, n)
    _require(depths, "depths", (n,))
    device = means2d.device
    tiles_x, tiles_y = tile_grid(width, height)
    if tiles_x * tiles_y >= 2 ** 31:
        raise ValueError(f"{width}x{height} has too many tiles for 32-bit tile ids")
    counts = torch.empty(n, dtype=torch.int32, device=device)
    count_tiles_kernel[_blocks(n), BLOCK_1D](means2d, radii, tiles_x, tiles_y, counts)
    order = torch.argsort(depths, stable=True)              # front to back; ties by index, like the keys
    offsets = torch.cumsum(counts[order], 0, dtype=torch.int32)
    total = int(offsets[-1]) if n else 0                    # the one host sync of the pipeline
    tiles = torch.empty(total, dtype=torch.int32, device=device)
    ids = torch.empty(total, dtype=torch.int32, device=device)
    write_tile_ids_kernel[_blocks(n), BLOCK_1D](order, means2d, radii, offsets, tiles_x, tiles_y, tiles, ids)
    return tiles, ids


def _sort_by_tile(tiles, ids, n_tiles: int):
    """Stable sort of the pairs by tile (each tile's list stays front to back): (tiles, ids, ranges)."""
    if SORT == "counting" and n_tiles <= tilesort.MAX_TILES:
        return tilesort.counting_sort_by_tile(tiles, ids, n_tiles)
    sorted_tiles, sorted_ids = _sort_by_tile_torch(tiles, ids)
    return sorted_tiles, sorted_ids, tile_ranges(sorted_tiles, n_tiles)


def _sort_by_tile_torch(tiles, ids):
    """The same stable sort with torch.sort (CUB radix sort of (int32 key, int64 index) pairs)."""
    sorted_tiles, perm = torch.sort(tiles, stable=True)
    return sorted_tiles, ids[perm]


# ------------------------------------------------------------------ compositing

_RASTER_KERNELS: dict = {}


def raster_kernel_for(footprint: Footprint, n_channels: int):
    """The compositing kernel for one footprint and one channel count (built once, cached).

    The footprint's device function and the sizes of the shared-memory batch and of the
    per-pixel accumulator must be compile-time constants, so each (footprint, channels)
    pair gets its own kernel, made by this closure.
    """
    if footprint.device_fn is None:
        raise ValueError(f"footprint {footprint.name!r} has no numba device function")
    key = (footprint.name, footprint.device_fn, footprint.n_params, n_channels)
    if key in _RASTER_KERNELS:
        return _RASTER_KERNELS[key]
    alpha_at = footprint.device_fn
    n_params = footprint.n_params

    def raster_kernel(ranges, gaussian_ids, params, features, background, image, transmittance, last_ids):
        height = image.shape[0]
        width = image.shape[1]
        tile = cuda.blockIdx.y * cuda.gridDim.x + cuda.blockIdx.x
        rank = cuda.threadIdx.y * TILE + cuda.threadIdx.x      # this thread's slot in a batch
        x = cuda.blockIdx.x * TILE + cuda.threadIdx.x
        y = cuda.blockIdx.y * TILE + cuda.threadIdx.y
        inside = x < width and y < height
        px = float32(x) + _HALF                                 # pixel centres at +0.5
        py = float32(y) + _HALF
        start = ranges[tile, 0]
        end = ranges[tile, 1]
        batch_ids = cuda.shared.array(BATCH, int32)
        batch = cuda.shared.array((BATCH, n_params), float32)
        acc = cuda.local.array(n_channels, float32)
        for ch in range(n_channels):
            acc[ch] = _F0
        T = _F1
        last = start - 1                # sorted position of the last Gaussian used (the backward starts there)
        done = int32(0) if inside else int32(1)                 # threads past the image only load
        for first in range(start, end, BATCH):
            # all threads reach this barrier; it also keeps the previous batch alive until
            # every thread has used it. Leave together once every pixel is saturated.
            if cuda.syncthreads_count(done) == BATCH:
                break
            k = first + rank
            if k < end:
                g = gaussian_ids[k]
                batch_ids[rank] = g
                for p in range(n_params):
                    batch[rank, p] = params[g, p]
            cuda.syncthreads()
            if done == 0:
                for j in range(min(BATCH, end - first)):
                    alpha = alpha_at(batch, j, px, py)
                    if alpha < _ALPHA_MIN:
                        continue
                    test_T = T * (_F1 - alpha)
                    if test_T < _T_MIN:                         # stop before using this one
                        done = int32(1)
                        break
                    weight = alpha * T
                    g = batch_ids[j]
                    for ch in range(n_channels):
                        acc[ch] += features[g, ch] * weight
                    T = test_T
                    last = first + j
        if inside:
            for ch in range(n_channels):
                image[y, x, ch] = acc[ch] + T * background[ch]
            transmittance[y, x] = T
            last_ids[y, x] = last

    raster_kernel.__name__ = f"raster_{footprint.name}_{n_channels}ch"
    compiled = kernel(fastmath=True)(raster_kernel)
    _RASTER_KERNELS[key] = compiled
    return compiled


def rasterize_tiles(params: torch.Tensor, features: torch.Tensor, background: torch.Tensor,
                    ranges: torch.Tensor, gaussian_ids: torch.Tensor, width: int, height: int,
                    footprint: Footprint = GAUSSIAN):
    """numba twin of :func:`torch_impl.rasterize_tiles`: (image [H, W, C], transmittance [H, W])."""
    image, trans, _ = _launch_raster(params, features, background, ranges, gaussian_ids, width, height,
                                     footprint)
    return image, trans


def _launch_raster(params, features, background, ranges, gaussian_ids, width: int, height: int,
                   footprint: Footprint = GAUSSIAN):
    """:func:`rasterize_tiles` plus ``last_ids`` [H, W] int32: each pixel's last contributor.

    ``last_ids[y, x]`` is the sorted-list position of the last Gaussian the pixel used (its
    tile's start - 1 if none). The backward pass (:mod:`.backward`) needs it and the final
    transmittance to walk each list back to front, as diff-gaussian-rasterization
    (``n_contrib``) and gsplat (``last_ids``) store them.
    """
    tiles_x, tiles_y = tile_grid(width, height)
    _require(params, "params", (None, footprint.n_params))
    n = params.shape[0]
    _require(features, "features", (n, None))
    n_ch = features.shape[1]
    _require(background, "background", (n_ch,))
    _require(ranges, "ranges", (tiles_x * tiles_y, 2), torch.int32)
    _require(gaussian_ids, "gaussian_ids", (None,), torch.int32)
    image = torch.empty(height, width, n_ch, dtype=torch.float32, device=params.device)
    trans = torch.empty(height, width, dtype=torch.float32, device=params.device)
    last_ids = torch.empty(height, width, dtype=torch.int32, device=params.device)
    raster_kernel_for(footprint, n_ch)[(tiles_x, tiles_y), (TILE, TILE)](
        ranges, gaussian_ids, params.contiguous(), features.contiguous(), background.contiguous(),
        image, trans, last_ids)
    return image, trans, last_ids

