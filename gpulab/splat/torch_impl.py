"""The 3D Gaussian splatting pipeline in torch: the readable, differentiable specification.

Each stage is one function, with the numba twin of the same name in :mod:`.kernels`
(gsplat keeps the same split: ``_torch_impl.py`` beside its CUDA stages):

1. :func:`project_gaussians`: quaternion + scale -> 3D covariance ``R S S^T R^T``; EWA
   projection through the perspective Jacobian (view-space ``x/z`` and ``y/z`` clamped to
   1.3 times the tangent of half the field of view); a 0.3 pixel^2 low-pass on the 2D
   covariance's diagonal; the conic (its inverse); a radius of 3 standard deviations
   along the larger eigenvalue; near-plane and off-screen culling (radius 0).
2. :func:`sh_to_color`: view-dependent colour from spherical harmonics of degree 0 to 3.
3. :func:`bin_gaussians`: one 64-bit key per (Gaussian, touched 16x16 tile):
   ``tile_id << 32 | depth bits``; then :func:`sort_keys` and :func:`tile_ranges`.
4. :func:`rasterize_tiles`: front-to-back alpha compositing of each tile's depth-sorted
   list, with a *pluggable footprint* (``alpha = footprint(params, px, py)``) and any
   number of feature channels, chunked by tiles so a 1080p frame fits in memory.

Constants follow diff-gaussian-rasterization (Kerbl et al. 2023) and gsplat. Every function
works in the dtype of its inputs (float64 for ``torch.autograd.gradcheck``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .constants import (ALPHA_MAX, ALPHA_MIN, EIGEN_FLOOR, EXTEND_MAX, FOV_CLAMP, LOW_PASS, NEAR_PLANE,
                        SH_C0, SH_C1, SH_C2, SH_C3, SIGMAS, T_MIN, TILE)
from .footprints import GAUSSIAN, Footprint, gaussian_alpha, gaussian_params

__all__ = [
    "TILE", "NEAR_PLANE", "LOW_PASS", "FOV_CLAMP", "ALPHA_MAX", "ALPHA_MIN", "T_MIN",
    "SH_C0", "SH_C1", "SH_C2", "SH_C3", "Projection", "Footprint",
    "quat_to_rotmat", "covariance_3d", "project_covariance", "conic_and_radius",
    "project_gaussians", "sh_to_color", "tile_grid", "tile_rects", "tile_extents", "bin_gaussians",
    "sort_keys", "bin_and_sort", "tile_ranges", "gaussian_params", "gaussian_alpha", "rasterize_tiles",
    "trace_pixel", "GAUSSIAN",
]

# ------------------------------------------------------------------ projection

def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [N, 3, 3] from quaternions [N, 4] stored (w, x, y, z).

    Quaternions are normalised first (a zero quaternion gives the identity).
    """
    q = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, -1).reshape(*q.shape[:-1], 3, 3)


def covariance_3d(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """World-space covariances [N, 3, 3] = R S S^T R^T (S = diag(scales)).

    Example: the identity quaternion and scales (1, 2, 3) give diag(1, 4, 9).
    """
    m = quat_to_rotmat(quats) * scales[..., None, :]      # R S: column k scaled by s_k
    return m @ m.transpose(-1, -2)


def project_covariance(cov3d: torch.Tensor, means_cam: torch.Tensor, view_rot: torch.Tensor,
                       fx: float, fy: float, lim_x: float, lim_y: float) -> torch.Tensor:
    """The EWA 2D covariance [N, 2, 2] (before the low-pass) of world covariances ``cov3d``.

    ``cov2d = T Sigma T^T`` with ``T = J W``: ``W`` the view rotation, ``J`` the Jacobian of
    the perspective map at the (clamped) view-space mean::

        J = [[fx/z, 0,    -fx x / z^2],
             [0,    fy/z, -fy y / z^2]],   x/z clamped to [-lim_x, lim_x], y/z likewise.

    The clamp keeps Gaussians far outside the view from exploding into huge splats.
    """
    x, y, z = means_cam.unbind(-1)
    tx = (x / z).clamp(-lim_x, lim_x) * z
    ty = (y / z).clamp(-lim_y, lim_y) * z
    zero = torch.zeros_like(z)
    jac = torch.stack([fx / z, zero, -fx * tx / (z * z),
                       zero, fy / z, -fy * ty / (z * z)], -1).reshape(*z.shape, 2, 3)
    t = jac @ view_rot
    return t @ cov3d @ t.transpose(-1, -2)


def conic_and_radius(cov2d: torch.Tensor):
    """Low-pass, inverse and radius of 2D covariances [N, 2, 2].

    Returns ``(conic [N, 3] = (A, B, C) of the inverse [[A, B], [B, C]], radius [N] float,
    det [N])`` after adding LOW_PASS to the diagonal. The radius is
    ``ceil(3 sqrt(lambda_max))`` with ``lambda_max = mid + sqrt(max(0.1, mid^2 - det))``.
    """
    a = cov2d[..., 0, 0] + LOW_PASS
    b = cov2d[..., 0, 1]
    c = cov2d[..., 1, 1] + LOW_PASS
    det = a * c - b * b
    safe_det = torch.where(det > 0, det, torch.ones_like(det))
    conic = torch.stack([c / safe_det, -b / safe_det, a / safe_det], -1)
    mid = 0.5 * (a + c)
    lambda_max = mid + torch.sqrt((mid * mid - det).clamp_min(EIGEN_FLOOR))
    radius = torch.ceil(SIGMAS * torch.sqrt(lambda_max))
    return conic, radius, det


@dataclass
class Projection:
    """What :func:`project_gaussians` returns (one row per Gaussian; culled ones: radius 0)."""
    means2d: torch.Tensor    # [N, 2] pixel coordinates (pixel centres at +0.5)
    depths: torch.Tensor     # [N] view-space z
    conics: torch.Tensor     # [N, 3] inverse 2D covariance (A, B, C)
    radii: torch.Tensor      # [N] int32, 0 = culled

    @property
    def visible(self) -> torch.Tensor:
        return self.radii > 0


def tile_grid(width: int, height: int) -> tuple[int, int]:
    """Number of tiles across and down: ceil(width / 16), ceil(height / 16)."""
    return -(-width // TILE), -(-height // TILE)


def tile_rects(means2d: torch.Tensor, radii: torch.Tensor, width: int, height: int):
    """Tiles touched by each splat's box [mx - rx, mx + rx] x [my - ry, my + ry]: (x0, y0, x1, y1),
    x1 exclusive. ``radii`` [N] (a square, rx = ry) or [N, 2] (rx, ry per axis).

    ``x0 = clamp(floor((mx - rx) / 16), 0, tiles_x)``, ``x1 = clamp(ceil((mx + rx) / 16), 0,
    tiles_x)`` (gsplat's rule; the INRIA code's ``getRect`` rounds differently at tile
    edges): a splat reaching exactly x = 16.0 stays in tile 0, one reaching 16.5 (pixel
    16's centre) also touches tile 1.
    """
    tiles_x, tiles_y = tile_grid(width, height)
    r = radii.to(means2d.dtype)
    rx, ry = (r, r) if r.dim() == 1 else (r[:, 0], r[:, 1])
    mx, my = means2d[:, 0], means2d[:, 1]
    x0 = torch.floor(((mx - rx) / TILE).clamp(0, tiles_x)).long()
    x1 = torch.ceil(((mx + rx) / TILE).clamp(0, tiles_x)).long()
    y0 = torch.floor(((my - ry) / TILE).clamp(0, tiles_y)).long()
    y1 = torch.ceil(((my + ry) / TILE).clamp(0, tiles_y)).long()
    return x0, y0, x1, y1


def tile_extents(conics: torch.Tensor, opacities: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """The box binning uses, per axis: [N, 2] int32 half-sizes (rx, ry), 0 = nothing to bin.

    gsplat 1.5's opacity-aware box (after StopThePop, Radl et al. 2024, arXiv:2402.00525,
    sec. B.2): a pixel is composited only where ``o exp(-q / 2) >= 1/255`` (q the conic's
    quadratic form), i.e. inside the ellipse ``q <= e^2`` with ``e = sqrt(2 ln(255 o))``,
    at most 3.33; that ellipse reaches ``e sqrt(Sigma_xx)`` along x and ``e sqrt(Sigma_yy)``
    along y (Sigma = the inverse of the conic). So no pixel that could be composited is left
    out, and a thin or faint splat gets far fewer tiles than the 3-sigma square of the
    larger eigenvalue that 3DGS bins with (``radii``, still what culls: 0 stays 0).
    """
    a, b, c = conics[:, 0], conics[:, 1], conics[:, 2]
    det = a * c - b * b
    safe = torch.where(det > 0, det, torch.ones_like(det))
    ratio = (opacities / ALPHA_MIN).clamp_min(1.0)
    extend = torch.sqrt(2.0 * torch.log(ratio)).clamp_max(EXTEND_MAX)
    rx = torch.ceil(extend * torch.sqrt((c / safe).clamp_min(0.0)))
    ry = torch.ceil(extend * torch.sqrt((a / safe).clamp_min(0.0)))
    keep = (radii > 0) & (det > 0) & (opacities >= ALPHA_MIN)
    return torch.where(keep[:, None], torch.stack([rx, ry], -1), torch.zeros_like(torch.stack([rx, ry], -1))
                       ).to(torch.int32)


def project_gaussians(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor,
                      camera) -> Projection:
    """Project N Gaussians (means [N,3], quats [N,4] (w,x,y,z), scales [N,3]) into ``camera``.

    Culled (radius 0): view-space z <= camera.near, a singular 2D covariance, or a splat
    whose tile rectangle is empty (off screen). Culled rows have means2d = conics = 0.
    """
    dtype = means.dtype
    view = camera.viewmat.to(device=means.device, dtype=dtype)
    rot, trans = view[:3, :3], view[:3, 3]
    p = means @ rot.T + trans
    z = p[:, 2]
    in_front = z > camera.near
    z_safe = torch.where(in_front, z, torch.ones_like(z))     # culled rows stay finite
    p_safe = torch.stack([p[:, 0], p[:, 1], z_safe], -1)
    cov2d = project_covariance(covariance_3d(quats, scales), p_safe, rot, camera.fx, camera.fy,
                               FOV_CLAMP * camera.tan_fovx, FOV_CLAMP * camera.tan_fovy)
    conics, radius, det = conic_and_radius(cov2d)
    means2d = torch.stack([camera.fx * p[:, 0] / z_safe + camera.cx,
                           camera.fy * p[:, 1] / z_safe + camera.cy], -1)
    keep = in_front & (det > 0)
    radius = torch.where(keep, radius, torch.zeros_like(radius))
    x0, y0, x1, y1 = tile_rects(means2d.detach(), radius.detach(), camera.width, camera.height)
    keep = keep & ((x1 - x0) * (y1 - y0) > 0)
    zero = torch.zeros((), dtype=dtype, device=means.device)
    return Projection(
        means2d=torch.where(keep[:, None], means2d, zero),
        depths=z,
        conics=torch.where(keep[:, None], conics, zero),
        radii=torch.where(keep, radius, zero).to(torch.int32),
    )


# ------------------------------------------------------------------ colour

def sh_to_color(sh: torch.Tensor, means: torch.Tensor, campos: torch.Tensor, degree: int) -> torch.Tensor:
    """RGB [N, 3] from spherical-harmonic coefficients sh [N, K, 3] (K >= (degree+1)^2).

    The direction is from the camera centre to the Gaussian; the result gets +0.5 and is
    clamped at 0 (3DGS). Degree 0: ``0.2820948 * sh[:, 0] + 0.5``.
    """
    d = means - campos.to(means)
    d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    x, y, z = (t[:, None] for t in d.unbind(-1))
    result = SH_C0 * sh[:, 0]
    if degree > 0:
        result = result - SH_C1 * y * sh[:, 1] + SH_C1 * z * sh[:, 2] - SH_C1 * x * sh[:, 3]
    if degree > 1:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        result = (result + SH_C2[0] * xy * sh[:, 4] + SH_C2[1] * yz * sh[:, 5]
                  + SH_C2[2] * (2 * zz - xx - yy) * sh[:, 6] + SH_C2[3] * xz * sh[:, 7]
                  + SH_C2[4] * (xx - yy) * sh[:, 8])
    if degree > 2:
        result = (result + SH_C3[0] * y * (3 * xx - yy) * sh[:, 9] + SH_C3[1] * xy * z * sh[:, 10]
                  + SH_C3[2] * y * (4 * zz - xx - yy) * sh[:, 11]
                  + SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh[:, 12]
                  + SH_C3[4] * x * (4 * zz - xx - yy) * sh[:, 13]
                  + SH_C3[5] * z * (xx - yy) * sh[:, 14] + SH_C3[6] * x * (xx - 3 * yy) * sh[:, 15])
    return (result + 0.5).clamp_min(0.0)


# ------------------------------------------------------------------ binning

def bin_gaussians(means2d: torch.Tensor, radii: torch.Tensor, depths: torch.Tensor,
                  width: int, height: int):
    """Unsorted keys [L] int64 and Gaussian ids [L] int32, one per (Gaussian, touched tile).

    ``radii`` [N] or [N, 2] int32 (see :func:`tile_rects`; :func:`tile_extents` gives the box
    :func:`~gpulab.splat.render.render` bins with), 0 = culled.

    ``key = tile_id << 32 | bits of the float32 depth`` (positive floats order like their
    bits, so sorting the keys sorts by tile, then front to back). Keys come Gaussian by
    Gaussian, each Gaussian's tiles row by row: the order the numba kernel writes them.
    """
    tiles_x, _ = tile_grid(width, height)
    x0, y0, x1, y1 = tile_rects(means2d.detach(), radii, width, height)
    w = (x1 - x0).clamp_min(0)
    alive = radii > 0 if radii.dim() == 1 else (radii > 0).all(-1)
    counts = torch.where(alive, w * (y1 - y0).clamp_min(0), torch.zeros_like(w))
    total = int(counts.sum())
    ids = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    first = torch.cumsum(counts, 0) - counts                 # exclusive scan: each one's offset
    local = torch.arange(total, device=counts.device) - first[ids]
    w_safe = w[ids].clamp_min(1)
    tile_id = (y0[ids] + local // w_safe) * tiles_x + x0[ids] + local % w_safe
    depth_bits = depths.detach().float().contiguous().view(torch.int32).long() & 0xFFFFFFFF
    keys = (tile_id << 32) | depth_bits[ids]
    return keys, ids.to(torch.int32)


def sort_keys(keys: torch.Tensor, gaussian_ids: torch.Tensor):
    """Sort keys ascending (torch.sort: CUB radix sort on a GPU) and carry the ids along."""
    sorted_keys, order = torch.sort(keys, stable=True)
    return sorted_keys, gaussian_ids[order]


def bin_and_sort(means2d: torch.Tensor, radii: torch.Tensor, depths: torch.Tensor, width: int, height: int):
    """Binning and sorting in one call: (sorted tile ids [L] int32, Gaussian ids [L] int32).

    The same lists as ``sort_keys(*bin_gaussians(...))``, the tile of each sorted key kept
    in 32 bits (its depth only decided the order). The numba twin gets there with 32-bit
    keys (a tile-major sort); :func:`tile_ranges` takes either form.
    """
    keys, ids = sort_keys(*bin_gaussians(means2d, radii, depths, width, height))
    return (keys >> 32).to(torch.int32), ids


def tile_ranges(sorted_keys: torch.Tensor, n_tiles: int) -> torch.Tensor:
    """[n_tiles, 2] int32: tile t's Gaussians are sorted positions [start, end); empty: (0, 0).

    ``sorted_keys``: int64 keys (tile << 32 | depth) or int32 tile ids, sorted.
    """
    ranges = torch.zeros(n_tiles, 2, dtype=torch.int32, device=sorted_keys.device)
    if sorted_keys.numel() == 0:
        return ranges
    tiles = (sorted_keys >> 32) if sorted_keys.dtype == torch.int64 else sorted_keys.long()
    new = torch.ones_like(tiles, dtype=torch.bool)
    new[1:] = tiles[1:] != tiles[:-1]
    starts = torch.nonzero(new).flatten()
    ends = torch.cat([starts[1:], starts.new_tensor([len(tiles)])])
    ranges[tiles[starts], 0] = starts.to(torch.int32)
    ranges[tiles[starts], 1] = ends.to(torch.int32)
    return ranges


# ------------------------------------------------------------------ compositing

def _composite_slice(alpha, feats, T_in, stopped_in):
    """Front-to-back compositing of one slice of each tile's list: [g, 256, k] alphas.

    Returns (colour contribution [g, 256, C], T after, stopped after). A Gaussian is used
    only if no earlier one stopped the pixel and ``T * (1 - alpha) >= 1e-4``; the stopping
    Gaussian itself is not used (3DGS).
    """
    one_minus = 1.0 - alpha
    prefix = torch.cumprod(one_minus, -1)
    T_before = T_in[..., None] * torch.cat([torch.ones_like(prefix[..., :1]), prefix[..., :-1]], -1)
    stop_here = (alpha > 0) & (T_before * one_minus < T_MIN)
    stopped = stopped_in[..., None] | (torch.cumsum(stop_here.to(torch.int32), -1) > 0)
    weight = torch.where(stopped, torch.zeros_like(alpha), alpha * T_before)
    color = torch.einsum("gpk,gkc->gpc", weight, feats)
    T_out = T_in * torch.where(stopped, torch.ones_like(one_minus), one_minus).prod(-1)
    return color, T_out, stopped[..., -1]


def rasterize_tiles(params: torch.Tensor, features: torch.Tensor, background: torch.Tensor,
                    ranges: torch.Tensor, gaussian_ids: torch.Tensor, width: int, height: int,
                    footprint: Footprint = GAUSSIAN, max_elements: int = 1 << 24):
    """Composite each tile's sorted list: (image [H, W, C], transmittance [H, W]).

    ``params`` [N, P] footprint parameters, ``features`` [N, C] (any C: RGB, depth, normals),
    ``background`` [C]. Pixel (i, j) samples the footprint at (i + 0.5, j + 0.5); its colour
    is ``sum_k f_k alpha_k T_k + T_final * background``. Work goes in chunks of tiles (and of
    each tile's list) so no intermediate has more than ``max_elements`` entries: a 1080p
    frame with millions of splats fits in GPU memory. Differentiable w.r.t. params,
    features and background.
    """
    device, dtype = params.device, params.dtype
    tiles_x, tiles_y = tile_grid(width, height)
    n_tiles, n_ch = tiles_x * tiles_y, features.shape[1]
    local = torch.arange(TILE * TILE, device=device)
    lx, ly = (local % TILE).to(dtype), (local // TILE).to(dtype)
    counts = (ranges[:, 1] - ranges[:, 0]).long()
    busy = torch.nonzero(counts > 0).flatten()
    # longest lists first, so each chunk pads its tiles to about the same length
    busy = busy[torch.argsort(counts[busy], descending=True)]
    busy_counts = counts[busy].tolist()
    done_tiles, done_colors, done_T = [], [], []
    per_tile = TILE * TILE
    i = 0
    while i < len(busy_counts):
        longest = busy_counts[i]
        group = max(1, min(len(busy_counts) - i, max_elements // (per_tile * longest)))
        tiles = busy[i:i + group]
        starts, n = ranges[tiles, 0].long(), counts[tiles]
        px = ((tiles % tiles_x) * TILE).to(dtype)[:, None] + lx + 0.5     # [g, 256]
        py = ((tiles // tiles_x) * TILE).to(dtype)[:, None] + ly + 0.5
        step = max(1, max_elements // (per_tile * group))
        color = torch.zeros(group, per_tile, n_ch, dtype=dtype, device=device)
        T = torch.ones(group, per_tile, dtype=dtype, device=device)
        stopped = torch.zeros(group, per_tile, dtype=torch.bool, device=device)
        for k0 in range(0, longest, step):
            k = torch.arange(k0, min(longest, k0 + step), device=device)
            valid = k[None, :] < n[:, None]                                  # [g, k]
            gid = gaussian_ids[(starts[:, None] + k).clamp_max(len(gaussian_ids) - 1)].long()
            alpha = footprint.torch_fn(params[gid][:, None], px[..., None], py[..., None])
            alpha = torch.where(valid[:, None, :] & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))
            c, T, stopped = _composite_slice(alpha, features[gid], T, stopped)
            color = color + c
        done_tiles.append(tiles)
        done_colors.append(color + T[..., None] * background)
        done_T.append(T)
        i += group
    all_colors = background.to(dtype).expand(n_tiles, per_tile, n_ch)
    all_T = torch.ones(n_tiles, per_tile, dtype=dtype, device=device)
    if done_tiles:
        index = torch.cat(done_tiles)
        all_colors = all_colors.index_copy(0, index, torch.cat(done_colors))
        all_T = all_T.index_copy(0, index, torch.cat(done_T))
    image = (all_colors.reshape(tiles_y, tiles_x, TILE, TILE, n_ch).permute(0, 2, 1, 3, 4)
             .reshape(tiles_y * TILE, tiles_x * TILE, n_ch)[:height, :width])
    trans = (all_T.reshape(tiles_y, tiles_x, TILE, TILE).permute(0, 2, 1, 3)
             .reshape(tiles_y * TILE, tiles_x * TILE)[:height, :width])
    return image, trans


def trace_pixel(params: torch.Tensor, ranges: torch.Tensor, gaussian_ids: torch.Tensor,
                x: int, y: int, width: int, footprint: Footprint = GAUSSIAN) -> dict:
    """Follow pixel (x, y) through its tile's list, one Gaussian at a time, as a thread does.

    Returns lists (for plotting): ``ids``, ``alpha``, ``T_before``, ``weight``, ``status``
    ("used", "skipped: alpha < 1/255", "stop: T would fall below 1e-4", "after stop").
    """
    tiles_x, _ = tile_grid(width, 1)
    tile = (y // TILE) * tiles_x + x // TILE
    start, end = (int(v) for v in ranges[tile])
    out = {"ids": [], "alpha": [], "T_before": [], "weight": [], "status": []}
    T, done = 1.0, False
    for k in range(start, end):
        g = int(gaussian_ids[k])
        alpha = float(footprint.torch_fn(params[g].double(), x + 0.5, y + 0.5))
        out["ids"].append(g)
        out["alpha"].append(alpha)
        out["T_before"].append(T)
        if done:
            status, w = "after stop", 0.0
        elif alpha < ALPHA_MIN:
            status, w = "skipped: alpha < 1/255", 0.0
        elif T * (1 - alpha) < T_MIN:
            status, w, done = "stop: T would fall below 1e-4", 0.0, True
        else:
            status, w = "used", alpha * T
            T *= 1 - alpha
        out["weight"].append(w)
        out["status"].append(status)
    out["T_final"] = T
    return out

