"""Chapter 07's per-primitive setup and shading as numba.cuda kernels: twins of :mod:`.torch_impl`.

One thread per primitive (slicing, projection, triangle and convex setup) or per pixel
(shading). The projection reuses chapter 06's device functions (EWA covariance, tile
rectangle), so a sliced 4D Gaussian is projected by the very code that projects a 3D one.
Everything is float32 (constants are ``np.float32``; camera scalars passed as float32).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from numba import cuda, float32, int32

from ...launch import kernel
from ..constants import ALPHA_MIN, EIGEN_FLOOR, FOV_CLAMP, LOW_PASS, SH_C0, SH_C1, SH_C2, SIGMAS
from ..kernels import _require, ewa_cov2d_device, tile_rect_device
from ..torch_impl import Projection, tile_grid
from .constants import F0_DIELECTRIC, MAX_HULL, PAD_OFFSET, TEMPORAL_CULL

__all__ = ["slice_4d_kernel", "project_cov_kernel", "triangle_setup_kernel", "convex_setup_kernel", "shade_kernel",
           "mesh_gaussians_kernel", "relight_kernel", "indirect_kernel", "gabor_setup_kernel",
           "slice_4d", "project_covariances", "triangle_setup",
           "convex_setup", "shade_pbr", "mesh_gaussians", "relight", "indirect_diffuse", "gabor_setup", "BLOCK_1D"]

BLOCK_1D = 128
_F0, _F1, _F2, _HALF = np.float32(0.0), np.float32(1.0), np.float32(2.0), np.float32(0.5)
_F4, _F5, _F8 = np.float32(4.0), np.float32(5.0), np.float32(8.0)
_CULL = np.float32(TEMPORAL_CULL)
_LOW_PASS = np.float32(LOW_PASS)
_EIGEN_FLOOR = np.float32(EIGEN_FLOOR)
_SIGMAS = np.float32(SIGMAS)
_ALPHA_MIN = np.float32(ALPHA_MIN)
_AREA_MIN = np.float32(1e-6)
_LEN_MIN = np.float32(1e-12)
_HALF_MAX = np.float32(65536.0)
_PAD = np.float32(PAD_OFFSET)
_A_MAX = np.float32(1.0 - 1e-6)
_F0_DIELECTRIC = np.float32(F0_DIELECTRIC)
_INF = np.float32(np.inf)
_PI = np.float32(math.pi)
_COS_MIN = np.float32(1e-4)
_HULL_STACK = 2 * MAX_HULL
_SORT = MAX_HULL


def _blocks(n: int, block: int = BLOCK_1D) -> int:
    return max(1, (n + block - 1) // block)


def _f32(x) -> np.float32:
    return np.float32(x)


# ------------------------------------------------------------------ 4D Gaussians

@kernel
def slice_4d_kernel(means4, cov4, opacities, t, means3, cov3, opacities_t):
    """One thread per 4D Gaussian: its conditional 3D Gaussian at time t (see torch_impl.slice_4d)."""
    i = cuda.grid(1)
    if i >= means4.shape[0]:
        return
    s_tt = cov4[i, 3, 3]
    dt = t - means4[i, 3]
    shift = dt / s_tt
    for r in range(3):
        means3[i, r] = means4[i, r] + cov4[i, r, 3] * shift
        for c in range(3):
            cov3[i, r, c] = cov4[i, r, c] - cov4[i, r, 3] * cov4[i, c, 3] / s_tt
    marginal = math.exp(-_HALF * dt * dt / s_tt)
    opacities_t[i] = opacities[i] * marginal if marginal > _CULL else _F0


def slice_4d(means4: torch.Tensor, cov4: torch.Tensor, opacities: torch.Tensor, t: float):
    """numba twin of :func:`torch_impl.slice_4d`."""
    _require(means4, "means4", (None, 4))
    n = means4.shape[0]
    _require(cov4, "cov4", (n, 4, 4))
    _require(opacities, "opacities", (n,))
    means3 = torch.empty(n, 3, dtype=torch.float32, device=means4.device)
    cov3 = torch.empty(n, 3, 3, dtype=torch.float32, device=means4.device)
    opacities_t = torch.empty(n, dtype=torch.float32, device=means4.device)
    slice_4d_kernel[_blocks(n), BLOCK_1D](means4.contiguous(), cov4.contiguous(), opacities.contiguous(), _f32(t),
                                          means3, cov3, opacities_t)
    return means3, cov3, opacities_t


@kernel
def project_cov_kernel(means, cov3, view, fx, fy, cx, cy, lim_x, lim_y, near, tiles_x, tiles_y,
                       means2d, depths, conics, radii):
    """chapter 06's ``project_kernel`` with the 3D covariance read instead of built from quats."""
    i = cuda.grid(1)
    if i >= means.shape[0]:
        return
    px, py, pz = means[i, 0], means[i, 1], means[i, 2]
    x = view[0, 0] * px + view[0, 1] * py + view[0, 2] * pz + view[0, 3]
    y = view[1, 0] * px + view[1, 1] * py + view[1, 2] * pz + view[1, 3]
    z = view[2, 0] * px + view[2, 1] * py + view[2, 2] * pz + view[2, 3]
    depths[i] = z
    means2d[i, 0] = _F0
    means2d[i, 1] = _F0
    conics[i, 0] = _F0
    conics[i, 1] = _F0
    conics[i, 2] = _F0
    radii[i] = 0
    if z <= near:
        return
    a, b, c = ewa_cov2d_device(x, y, z, cov3[i, 0, 0], cov3[i, 0, 1], cov3[i, 0, 2], cov3[i, 1, 1], cov3[i, 1, 2],
                               cov3[i, 2, 2], view, fx, fy, lim_x, lim_y)
    a += _LOW_PASS
    c += _LOW_PASS
    det = a * c - b * b
    if det <= _F0:
        return
    mid = _HALF * (a + c)
    radius = math.ceil(_SIGMAS * math.sqrt(mid + math.sqrt(max(_EIGEN_FLOOR, mid * mid - det))))
    mx = fx * x / z + cx
    my = fy * y / z + cy
    x0, y0, x1, y1 = tile_rect_device(mx, my, float32(radius), float32(radius), tiles_x, tiles_y)
    if (x1 - x0) * (y1 - y0) == 0:
        return
    means2d[i, 0] = mx
    means2d[i, 1] = my
    inv_det = _F1 / det
    conics[i, 0] = c * inv_det
    conics[i, 1] = -b * inv_det
    conics[i, 2] = a * inv_det
    radii[i] = int32(radius)


def project_covariances(means: torch.Tensor, cov3: torch.Tensor, camera) -> Projection:
    """numba twin of :func:`torch_impl.project_covariances`."""
    _require(means, "means", (None, 3))
    n = means.shape[0]
    _require(cov3, "cov3", (n, 3, 3))
    dev = means.device
    view = camera.viewmat.to(device=dev, dtype=torch.float32).contiguous()
    tiles_x, tiles_y = tile_grid(camera.width, camera.height)
    means2d = torch.empty(n, 2, dtype=torch.float32, device=dev)
    depths = torch.empty(n, dtype=torch.float32, device=dev)
    conics = torch.empty(n, 3, dtype=torch.float32, device=dev)
    radii = torch.empty(n, dtype=torch.int32, device=dev)
    project_cov_kernel[_blocks(n), BLOCK_1D](
        means.contiguous(), cov3.contiguous(), view, _f32(camera.fx), _f32(camera.fy), _f32(camera.cx),
        _f32(camera.cy), _f32(FOV_CLAMP * camera.tan_fovx), _f32(FOV_CLAMP * camera.tan_fovy), _f32(camera.near),
        tiles_x, tiles_y, means2d, depths, conics, radii)
    return Projection(means2d, depths, conics, radii)


# ------------------------------------------------------------------ boxes

@cuda.jit(device=True)
def write_box_device(i, lo_x, lo_y, hi_x, hi_y, keep, tiles_x, tiles_y, means2d, radii):
    """Centre and int32 half-sizes of the box [lo, hi] (0 where not kept or off screen)."""
    means2d[i, 0] = _F0
    means2d[i, 1] = _F0
    radii[i, 0] = 0
    radii[i, 1] = 0
    if not keep:
        return
    mx = _HALF * (lo_x + hi_x)
    my = _HALF * (lo_y + hi_y)
    rx = math.ceil(min(max(_HALF * (hi_x - lo_x), _F0), _HALF_MAX))
    ry = math.ceil(min(max(_HALF * (hi_y - lo_y), _F0), _HALF_MAX))
    x0, y0, x1, y1 = tile_rect_device(mx, my, float32(rx), float32(ry), tiles_x, tiles_y)
    if (x1 - x0) * (y1 - y0) == 0:
        return
    means2d[i, 0] = mx
    means2d[i, 1] = my
    radii[i, 0] = int32(rx)
    radii[i, 1] = int32(ry)


# ------------------------------------------------------------------ triangles

@cuda.jit(device=True)
def _edge_device(params, i, k, ax, ay, bx, by):
    """Write edge k's outward unit normal and offset (ccw order); return its length."""
    dx = bx - ax
    dy = by - ay
    length = max(math.sqrt(dx * dx + dy * dy), _LEN_MIN)
    nx = dy / length
    ny = -dx / length
    params[i, 3 * k] = nx
    params[i, 3 * k + 1] = ny
    params[i, 3 * k + 2] = -(nx * ax + ny * ay)
    return length


@kernel
def triangle_setup_kernel(verts2d, sigmas, opacities, tiles_x, tiles_y, params, means2d, radii):
    """One thread per triangle: edges, incentre, phi(s), the box (see torch_impl.triangle_setup)."""
    i = cuda.grid(1)
    if i >= verts2d.shape[0]:
        return
    ax, ay = verts2d[i, 0, 0], verts2d[i, 0, 1]
    bx, by = verts2d[i, 1, 0], verts2d[i, 1, 1]
    cx, cy = verts2d[i, 2, 0], verts2d[i, 2, 1]
    cross = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    if cross <= _F0:                    # make the order counter-clockwise: swap b and c
        bx, by, cx, cy = cx, cy, bx, by
    l_ab = _edge_device(params, i, 0, ax, ay, bx, by)
    l_bc = _edge_device(params, i, 1, bx, by, cx, cy)
    l_ca = _edge_device(params, i, 2, cx, cy, ax, ay)
    total = l_ab + l_bc + l_ca
    sx = (l_bc * ax + l_ca * bx + l_ab * cx) / total
    sy = (l_bc * ay + l_ca * by + l_ab * cy) / total
    phi_s = params[i, 0] * sx + params[i, 1] * sy + params[i, 2]
    for k in range(1, 3):
        phi_s = max(phi_s, params[i, 3 * k] * sx + params[i, 3 * k + 1] * sy + params[i, 3 * k + 2])
    area_ok = abs(cross) > _AREA_MIN
    params[i, 9] = phi_s if area_ok else -_F1
    params[i, 10] = sigmas[i]
    params[i, 11] = opacities[i]
    keep = area_ok and opacities[i] >= _ALPHA_MIN
    write_box_device(i, min(ax, min(bx, cx)), min(ay, min(by, cy)), max(ax, max(bx, cx)), max(ay, max(by, cy)),
                     keep, tiles_x, tiles_y, means2d, radii)


def triangle_setup(verts2d: torch.Tensor, sigmas: torch.Tensor, opacities: torch.Tensor, width: int, height: int):
    """numba twin of :func:`torch_impl.triangle_setup`."""
    _require(verts2d, "verts2d", (None, 3, 2))
    n = verts2d.shape[0]
    _require(sigmas, "sigmas", (n,))
    _require(opacities, "opacities", (n,))
    tiles_x, tiles_y = tile_grid(width, height)
    dev = verts2d.device
    params = torch.empty(n, 12, dtype=torch.float32, device=dev)
    means2d = torch.empty(n, 2, dtype=torch.float32, device=dev)
    radii = torch.empty(n, 2, dtype=torch.int32, device=dev)
    triangle_setup_kernel[_blocks(n), BLOCK_1D](verts2d.contiguous(), sigmas.contiguous(), opacities.contiguous(),
                                                tiles_x, tiles_y, params, means2d, radii)
    return params, means2d, radii


# ------------------------------------------------------------------ smooth convexes

@cuda.jit(device=True)
def _turn(ox, oy, ax, ay, bx, by):
    return (ax - ox) * (by - oy) - (ay - oy) * (bx - ox)


@kernel
def convex_setup_kernel(points2d, depths, deltas, sigmas, opacities, tiles_x, tiles_y, params, means2d, radii):
    """One thread per convex: monotone-chain hull, edges, scaled sharpness, box (torch_impl.convex_setup)."""
    i = cuda.grid(1)
    if i >= points2d.shape[0]:
        return
    k = points2d.shape[1]
    xs = cuda.local.array(_SORT, float32)
    ys = cuda.local.array(_SORT, float32)
    hx = cuda.local.array(_HULL_STACK, float32)
    hy = cuda.local.array(_HULL_STACK, float32)
    for a in range(k):                          # insertion sort by x, ties by y (stable like the torch sorts)
        px = points2d[i, a, 0]
        py = points2d[i, a, 1]
        b = a
        while b > 0 and (xs[b - 1] > px or (xs[b - 1] == px and ys[b - 1] > py)):
            xs[b] = xs[b - 1]
            ys[b] = ys[b - 1]
            b -= 1
        xs[b] = px
        ys[b] = py
    size = 0
    for a in range(k):                          # lower hull
        while size >= 2 and _turn(hx[size - 2], hy[size - 2], hx[size - 1], hy[size - 1], xs[a], ys[a]) <= _F0:
            size -= 1
        hx[size] = xs[a]
        hy[size] = ys[a]
        size += 1
    floor = size + 1
    for a in range(k - 2, -1, -1):              # upper hull
        while size >= floor and _turn(hx[size - 2], hy[size - 2], hx[size - 1], hy[size - 1], xs[a], ys[a]) <= _F0:
            size -= 1
        hx[size] = xs[a]
        hy[size] = ys[a]
        size += 1
    size = min(size - 1, k)
    for e in range(MAX_HULL):
        if e < size:
            nxt = e + 1 if e + 1 < size else 0
            dx = hx[nxt] - hx[e]
            dy = hy[nxt] - hy[e]
            length = max(math.sqrt(dx * dx + dy * dy), _LEN_MIN)
            nx = dy / length
            ny = -dx / length
            params[i, 3 * e] = nx
            params[i, 3 * e + 1] = ny
            params[i, 3 * e + 2] = -(nx * hx[e] + ny * hy[e])
        else:
            params[i, 3 * e] = _F0
            params[i, 3 * e + 1] = _F0
            params[i, 3 * e + 2] = _PAD
    z = depths[i]
    delta_z = deltas[i] * z
    sigma_z = sigmas[i] * z
    opacity = opacities[i]
    params[i, 3 * MAX_HULL] = delta_z
    params[i, 3 * MAX_HULL + 1] = sigma_z
    params[i, 3 * MAX_HULL + 2] = opacity
    keep = size >= 3 and opacity >= _ALPHA_MIN and z > _F0
    lo_x = lo_y = hi_x = hi_y = _F0
    if keep:
        a_min = min(_ALPHA_MIN / max(opacity, _ALPHA_MIN), _A_MAX)
        margin = max(_F0, -math.log(a_min / (_F1 - a_min)) / max(sigma_z * delta_z, _LEN_MIN))
        lo_x = lo_y = _INF
        hi_x = hi_y = -_INF
        for e in range(size):                   # corners of the hull pushed out by the margin
            p = e - 1 if e > 0 else size - 1
            n1x, n1y, c1 = params[i, 3 * p], params[i, 3 * p + 1], params[i, 3 * p + 2]
            n2x, n2y, c2 = params[i, 3 * e], params[i, 3 * e + 1], params[i, 3 * e + 2]
            r1 = margin - c1
            r2 = margin - c2
            det = n1x * n2y - n1y * n2x
            if abs(det) <= _LEN_MIN:
                det = _LEN_MIN
            qx = (r1 * n2y - r2 * n1y) / det
            qy = (n1x * r2 - n2x * r1) / det
            lo_x = min(lo_x, qx)
            lo_y = min(lo_y, qy)
            hi_x = max(hi_x, qx)
            hi_y = max(hi_y, qy)
    write_box_device(i, lo_x, lo_y, hi_x, hi_y, keep, tiles_x, tiles_y, means2d, radii)


def convex_setup(points2d: torch.Tensor, depths: torch.Tensor, deltas: torch.Tensor, sigmas: torch.Tensor,
                 opacities: torch.Tensor, width: int, height: int):
    """numba twin of :func:`torch_impl.convex_setup`."""
    _require(points2d, "points2d", (None, None, 2))
    n, k = points2d.shape[:2]
    if k > MAX_HULL:
        raise ValueError(f"convex_setup takes at most {MAX_HULL} points per convex, got {k}")
    for name, t in (("depths", depths), ("deltas", deltas), ("sigmas", sigmas), ("opacities", opacities)):
        _require(t, name, (n,))
    tiles_x, tiles_y = tile_grid(width, height)
    dev = points2d.device
    params = torch.empty(n, 3 * MAX_HULL + 3, dtype=torch.float32, device=dev)
    means2d = torch.empty(n, 2, dtype=torch.float32, device=dev)
    radii = torch.empty(n, 2, dtype=torch.int32, device=dev)
    convex_setup_kernel[_blocks(n), BLOCK_1D](points2d.contiguous(), depths.contiguous(), deltas.contiguous(),
                                              sigmas.contiguous(), opacities.contiguous(), tiles_x, tiles_y,
                                              params, means2d, radii)
    return params, means2d, radii


# ------------------------------------------------------------------ shading

@kernel
def shade_kernel(gbuffer, alpha, light, light_rgb, fx, fy, cx, cy, out):
    """One thread per pixel: Cook-Torrance GGX under one directional light (torch_impl.shade_pbr)."""
    x, y = cuda.grid(2)
    h = out.shape[0]
    w = out.shape[1]
    if x >= w or y >= h:
        return
    rx = (float32(x) + _HALF - cx) / fx
    ry = (float32(y) + _HALF - cy) / fy
    inv = _F1 / math.sqrt(rx * rx + ry * ry + _F1)
    vx, vy, vz = -rx * inv, -ry * inv, -inv
    lx, ly, lz = light[0], light[1], light[2]
    inv = _F1 / math.sqrt(lx * lx + ly * ly + lz * lz)
    lx, ly, lz = lx * inv, ly * inv, lz * inv
    hx, hy, hz = vx + lx, vy + ly, vz + lz
    inv = _F1 / max(math.sqrt(hx * hx + hy * hy + hz * hz), _LEN_MIN)
    hx, hy, hz = hx * inv, hy * inv, hz * inv
    nx, ny, nz = gbuffer[y, x, 1], gbuffer[y, x, 2], gbuffer[y, x, 3]
    n_l = max(nx * lx + ny * ly + nz * lz, _F0)
    n_v = max(nx * vx + ny * vy + nz * vz, _COS_MIN)
    n_h = max(nx * hx + ny * hy + nz * hz, _F0)
    v_h = max(vx * hx + vy * hy + vz * hz, _F0)
    rough = gbuffer[y, x, 7]
    metal = gbuffer[y, x, 8]
    a2 = rough * rough * rough * rough
    denom = n_h * n_h * (a2 - _F1) + _F1
    ndf = a2 / (_PI * denom * denom)
    k = (rough + _F1) * (rough + _F1) / _F8
    geometry = (n_l / (n_l * (_F1 - k) + k)) * (n_v / (n_v * (_F1 - k) + k))
    schlick = (_F1 - v_h) ** 5
    cover = alpha[y, x]
    for ch in range(3):
        albedo = gbuffer[y, x, 4 + ch]
        f0 = _F0_DIELECTRIC + (albedo - _F0_DIELECTRIC) * metal
        fresnel = f0 + (_F1 - f0) * schlick
        specular = ndf * fresnel * geometry / (_F4 * max(n_l, _COS_MIN) * n_v)
        diffuse = (_F1 - fresnel) * (_F1 - metal) * albedo / _PI
        out[y, x, ch] = (diffuse + specular) * light_rgb[ch] * n_l * cover


def shade_pbr(gbuffer: torch.Tensor, alpha: torch.Tensor, light_dir: torch.Tensor, light_rgb: torch.Tensor,
              fx: float, fy: float, cx: float, cy: float) -> torch.Tensor:
    """numba twin of :func:`torch_impl.shade_pbr`."""
    _require(gbuffer, "gbuffer", (None, None, 9))
    h, w = gbuffer.shape[:2]
    _require(alpha, "alpha", (h, w))
    _require(light_dir, "light_dir", (3,))
    _require(light_rgb, "light_rgb", (3,))
    out = torch.empty(h, w, 3, dtype=torch.float32, device=gbuffer.device)
    shade_kernel[((w + 15) // 16, (h + 15) // 16), (16, 16)](
        gbuffer.contiguous(), alpha.contiguous(), light_dir.contiguous(), light_rgb.contiguous(),
        _f32(fx), _f32(fy), _f32(cx), _f32(cy), out)
    return out


# ------------------------------------------------------------------ mesh-attached Gaussians

@kernel
def mesh_gaussians_kernel(verts, faces, tri_ids, barys, offsets, local_rot, scales, means, cov3):
    """One thread per Gaussian: rebuild mu and Sigma from its deformed triangle (torch_impl.mesh_gaussians)."""
    i = cuda.grid(1)
    if i >= tri_ids.shape[0]:
        return
    f = tri_ids[i]
    a, b, c = faces[f, 0], faces[f, 1], faces[f, 2]
    ux, uy, uz = verts[b, 0] - verts[a, 0], verts[b, 1] - verts[a, 1], verts[b, 2] - verts[a, 2]
    wx, wy, wz = verts[c, 0] - verts[a, 0], verts[c, 1] - verts[a, 1], verts[c, 2] - verts[a, 2]
    inv = _F1 / max(math.sqrt(ux * ux + uy * uy + uz * uz), _LEN_MIN)
    e1x, e1y, e1z = ux * inv, uy * inv, uz * inv
    nx, ny, nz = uy * wz - uz * wy, uz * wx - ux * wz, ux * wy - uy * wx
    inv = _F1 / max(math.sqrt(nx * nx + ny * ny + nz * nz), _LEN_MIN)
    nx, ny, nz = nx * inv, ny * inv, nz * inv
    e2x, e2y, e2z = ny * e1z - nz * e1y, nz * e1x - nx * e1z, nx * e1y - ny * e1x
    for r in range(3):
        means[i, r] = (barys[i, 0] * verts[a, r] + barys[i, 1] * verts[b, r] + barys[i, 2] * verts[c, r])
    means[i, 0] += offsets[i] * nx
    means[i, 1] += offsets[i] * ny
    means[i, 2] += offsets[i] * nz
    m = cuda.local.array((3, 3), float32)
    for col in range(3):                        # M = R_tri R_local S, column by column
        lx, ly, lz = local_rot[i, 0, col], local_rot[i, 1, col], local_rot[i, 2, col]
        s = scales[i, col]
        m[0, col] = (e1x * lx + e2x * ly + nx * lz) * s
        m[1, col] = (e1y * lx + e2y * ly + ny * lz) * s
        m[2, col] = (e1z * lx + e2z * ly + nz * lz) * s
    for r in range(3):
        for c2 in range(3):
            cov3[i, r, c2] = m[r, 0] * m[c2, 0] + m[r, 1] * m[c2, 1] + m[r, 2] * m[c2, 2]


def mesh_gaussians(verts: torch.Tensor, faces: torch.Tensor, tri_ids: torch.Tensor, barys: torch.Tensor,
                   offsets: torch.Tensor, local_rot: torch.Tensor, scales: torch.Tensor):
    """numba twin of :func:`torch_impl.mesh_gaussians`."""
    _require(verts, "verts", (None, 3))
    _require(faces, "faces", (None, 3), torch.int32)
    _require(tri_ids, "tri_ids", (None,), torch.int32)
    n = tri_ids.shape[0]
    _require(barys, "barys", (n, 3))
    _require(offsets, "offsets", (n,))
    _require(local_rot, "local_rot", (n, 3, 3))
    _require(scales, "scales", (n, 3))
    means = torch.empty(n, 3, dtype=torch.float32, device=verts.device)
    cov3 = torch.empty(n, 3, 3, dtype=torch.float32, device=verts.device)
    mesh_gaussians_kernel[_blocks(n), BLOCK_1D](verts.contiguous(), faces.contiguous(), tri_ids.contiguous(),
                                                barys.contiguous(), offsets.contiguous(), local_rot.contiguous(),
                                                scales.contiguous(), means, cov3)
    return means, cov3


# ------------------------------------------------------------------ relightable Gaussians

_GOLDEN = np.float32(math.pi * (3.0 - math.sqrt(5.0)))
_Z_MIN = np.float32(math.sin(math.radians(10.0)))
_TWO_PI = np.float32(2.0 * math.pi)
_FOUR_PI = np.float32(4.0 * math.pi)
_F0_R3DG = np.float32(0.04)
_FM_A, _FM_B = np.float32(-5.55473), np.float32(-6.98316)
_EPS6 = np.float32(1e-6)
_C1_MIN = np.float32(1e-7)
_SH0, _SH1 = np.float32(SH_C0), np.float32(SH_C1)
_SH20, _SH21, _SH22, _SH23, _SH24 = (np.float32(c) for c in SH_C2)


@cuda.jit(device=True)
def _sh9_dot(c, x, y, z, ch):
    """max(0, sum_j c[j, ch] Y_j(x, y, z)) for SH coefficients c [9, 3] (degree <= 2, 3DGS's basis)."""
    total = (_SH0 * c[0, ch] - _SH1 * y * c[1, ch] + _SH1 * z * c[2, ch] - _SH1 * x * c[3, ch]
             + _SH20 * x * y * c[4, ch] + _SH21 * y * z * c[5, ch] + _SH22 * (_F2 * z * z - x * x - y * y) * c[6, ch]
             + _SH23 * x * z * c[7, ch] + _SH24 * (x * x - y * y) * c[8, ch])
    return max(total, _F0)


@kernel
def relight_kernel(normals, base_color, roughness, viewdirs, visibility, env_sh, local_sh, colors):
    """One thread per Gaussian, a loop over its hemisphere's samples (see torch_impl.relight)."""
    i = cuda.grid(1)
    if i >= normals.shape[0]:
        return
    n_samples = visibility.shape[1]
    nx, ny, nz = normals[i, 0], normals[i, 1], normals[i, 2]
    inv = _F1 / max(math.sqrt(nx * nx + ny * ny + nz * nz), _LEN_MIN)
    nx, ny, nz = nx * inv, ny * inv, nz * inv
    vx, vy, vz = viewdirs[i, 0], viewdirs[i, 1], viewdirs[i, 2]
    inv = _F1 / max(math.sqrt(vx * vx + vy * vy + vz * vz), _LEN_MIN)
    vx, vy, vz = vx * inv, vy * inv, vz * inv
    side = _F1 if nx * vx + ny * vy + nz * vz >= _F0 else -_F1          # the normal turned to the viewer
    fx, fy, fz = nx * side, ny * side, nz * side
    n_v = min(max(fx * vx + fy * vy + fz * vz, _EPS6), _F1)
    # the rotation from +z to n (Rodrigues about z x n; n = -z maps by -I)
    c1 = nz + _F1
    ax, ay = -ny, nx
    flip = not (c1 > _F0)
    c1 = max(c1, _C1_MIN)
    r = roughness[i]
    a = r * r
    a2 = a * a
    k = (a + _F2 * r + _F1) / _F8
    g_v = n_v * (_F1 - k) + k
    acc0 = _F0
    acc1 = _F0
    acc2 = _F0
    for s in range(n_samples):
        fs = float32(s)
        z = max(_Z_MIN, _F1 - _F2 * fs / (_F2 * float32(n_samples) - _F1))
        rad = math.sqrt(_F1 - z * z)
        theta = fs * _GOLDEN
        lx, ly = math.sin(theta) * rad, math.cos(theta) * rad
        if flip:
            dx, dy, dz = -lx, -ly, -z
        else:
            dx = (_F1 - ay * ay / c1) * lx + (ax * ay / c1) * ly + ay * z
            dy = (ax * ay / c1) * lx + (_F1 - ax * ax / c1) * ly - ax * z
            dz = -ay * lx + ax * ly + (_F1 - (ax * ax + ay * ay) / c1) * z
        cos_in = max(nx * dx + ny * dy + nz * dz, _F0)
        hx, hy, hz = dx + vx, dy + vy, dz + vz
        inv = _F1 / max(math.sqrt(hx * hx + hy * hy + hz * hz), _LEN_MIN)
        hx, hy, hz = hx * inv, hy * inv, hz * inv
        n_l = min(max(fx * dx + fy * dy + fz * dz, _EPS6), _F1)
        n_h = min(max(fx * hx + fy * hy + fz * hz, _EPS6), _F1)
        v_h = min(max(vx * hx + vy * hy + vz * hz, _EPS6), _F1)
        fresnel = _F0_R3DG + (_F1 - _F0_R3DG) * math.pow(_F2, (_FM_A * v_h + _FM_B) * v_h)
        nom0 = n_h * n_h * (a2 - _F1) + _F1
        denom = min(max(_FOUR_PI * nom0 * nom0 * g_v * (n_l * (_F1 - k) + k), _EPS6), _FOUR_PI)
        f_s = fresnel * a2 / denom
        weight = _TWO_PI * cos_in
        vis = visibility[i, s]
        for ch in range(3):
            # one device function, one array type: a 2D view of this Gaussian's local SH, the 2D environment
            light = _sh9_dot(local_sh[i], dx, dy, dz, ch) + _sh9_dot(env_sh, dx, dy, dz, ch) * vis
            term = (base_color[i, ch] / _PI + f_s) * light * weight
            if ch == 0:
                acc0 += term
            elif ch == 1:
                acc1 += term
            else:
                acc2 += term
    inv_s = _F1 / float32(n_samples)
    colors[i, 0] = acc0 * inv_s
    colors[i, 1] = acc1 * inv_s
    colors[i, 2] = acc2 * inv_s


def relight(normals: torch.Tensor, base_color: torch.Tensor, roughness: torch.Tensor, viewdirs: torch.Tensor,
            visibility: torch.Tensor, env_sh: torch.Tensor, local_sh: torch.Tensor) -> torch.Tensor:
    """numba twin of :func:`torch_impl.relight`."""
    _require(normals, "normals", (None, 3))
    n = normals.shape[0]
    _require(base_color, "base_color", (n, 3))
    _require(roughness, "roughness", (n,))
    _require(viewdirs, "viewdirs", (n, 3))
    _require(visibility, "visibility", (n, None))
    _require(env_sh, "env_sh", (9, 3))
    _require(local_sh, "local_sh", (n, 9, 3))
    colors = torch.empty(n, 3, dtype=torch.float32, device=normals.device)
    relight_kernel[_blocks(n), BLOCK_1D](normals.contiguous(), base_color.contiguous(), roughness.contiguous(),
                                         viewdirs.contiguous(), visibility.contiguous(), env_sh.contiguous(),
                                         local_sh.contiguous(), colors)
    return colors


# ------------------------------------------------------------------ GI-GS: screen-space indirect diffuse

@cuda.jit(device=True)
def _round_half_away(x):
    """CUDA's roundf: halves away from zero."""
    r = math.floor(abs(x) + _HALF)
    return r if x >= _F0 else -r


@kernel
def indirect_kernel(pos, normal, rgb, albedo, metallic, f0, fx, fy, radius, bias, thick, delta, steps, start,
                    n_phi, n_theta, out):
    """One thread per pixel: hemisphere grid x screen-space march (see torch_impl.indirect_diffuse)."""
    x, y = cuda.grid(2)
    h = out.shape[0]
    w = out.shape[1]
    if x >= w or y >= h:
        return
    px, py, pz = pos[y, x, 0], pos[y, x, 1], pos[y, x, 2]
    nx, ny, nz = normal[y, x, 0], normal[y, x, 1], normal[y, x, 2]
    inv = _F1 / max(math.sqrt(nx * nx + ny * ny + nz * nz), _LEN_MIN)
    nx, ny, nz = nx * inv, ny * inv, nz * inv
    tx, ty, tz = -nx * ny, _F1 - ny * ny, -nz * ny            # up - n (n . up), up = (0, 1, 0)
    inv = _F1 / max(math.sqrt(tx * tx + ty * ty + tz * tz), _LEN_MIN)
    tx, ty, tz = tx * inv, ty * inv, tz * inv
    bx, by, bz = ny * tz - nz * ty, nz * tx - nx * tz, nx * ty - ny * tx
    inv = _F1 / max(math.sqrt(bx * bx + by * by + bz * bz), _LEN_MIN)
    bx, by, bz = bx * inv, by * inv, bz * inv
    inv = _F1 / max(math.sqrt(px * px + py * py + pz * pz), _LEN_MIN)
    cos_v = max(-(nx * px + ny * py + nz * pz) * inv, np.float32(1e-7))
    schlick = min(max(_F1 - cos_v, _EPS6), _F1) ** 5
    scale = (_F1 + pz / np.float32(100.0)) * (_F1 + pz / np.float32(100.0)) * radius / float32(steps)
    cx = float32(w) / _F2
    cy = float32(h) / _F2
    acc0 = _F0
    acc1 = _F0
    acc2 = _F0
    count = 0
    for i in range(n_phi):
        phi = float32(i) * delta * _PI
        for j in range(n_theta):
            theta = float32(j) * delta * _HALF * _PI
            st, ct = math.sin(theta), math.cos(theta)
            lx, ly, lz = st * math.cos(phi), st * math.sin(phi), ct
            dx = lx * tx + ly * bx + lz * nx
            dy = lx * ty + ly * by + lz * ny
            dz = lx * tz + ly * bz + lz * nz
            weight = ct * st
            count += 1
            for s in range(start, steps):
                step = float32(s) * scale
                qx, qy, qz = px + dx * step, py + dy * step, pz + dz * step
                sx = _round_half_away(qx / (qz + np.float32(1e-7)) * fx + cx)
                sy = _round_half_away(qy / (qz + np.float32(1e-7)) * fy + cy)
                if sx < _F0 or sx > float32(w - 1) or sy < _F0 or sy > float32(h - 1):
                    break
                ix = int32(sx)
                iy = int32(sy)
                sample_depth = pos[iy, ix, 2]
                if sample_depth <= qz + bias and sample_depth >= qz - thick:
                    acc0 += rgb[iy, ix, 0] * weight
                    acc1 += rgb[iy, ix, 1] * weight
                    acc2 += rgb[iy, ix, 2] * weight
                    break
    norm = _PI / float32(count)
    m = metallic[y, x]
    for ch in range(3):
        fresnel = f0[y, x, ch] + (_F1 - f0[y, x, ch]) * schlick
        k_d = (_F1 - fresnel) * (_F1 - m)
        total = acc0 if ch == 0 else (acc1 if ch == 1 else acc2)
        out[y, x, ch] = norm * total * k_d * albedo[y, x, ch]


def indirect_diffuse(pos: torch.Tensor, normal: torch.Tensor, rgb: torch.Tensor, albedo: torch.Tensor,
                     metallic: torch.Tensor, f0: torch.Tensor, fx: float, fy: float, radius: float = 0.8,
                     bias: float = 0.01, thick: float = 0.05, delta: float = 0.0625, steps: int = 16,
                     start: int = 8) -> torch.Tensor:
    """numba twin of :func:`torch_impl.indirect_diffuse`."""
    _require(pos, "pos", (None, None, 3))
    h, w = pos.shape[:2]
    for name, t in (("normal", normal), ("rgb", rgb), ("albedo", albedo), ("f0", f0)):
        _require(t, name, (h, w, 3))
    _require(metallic, "metallic", (h, w))
    n_phi = math.ceil(2.0 / delta - 1e-9)
    n_theta = int(round(0.5 / (delta * 0.5))) + 1
    out = torch.empty(h, w, 3, dtype=torch.float32, device=pos.device)
    indirect_kernel[((w + 15) // 16, (h + 15) // 16), (16, 16)](
        pos.contiguous(), normal.contiguous(), rgb.contiguous(), albedo.contiguous(), metallic.contiguous(),
        f0.contiguous(), _f32(fx), _f32(fy), _f32(radius), _f32(bias), _f32(thick), _f32(delta), int(steps),
        int(start), int(n_phi), int(n_theta), out)
    return out


# ------------------------------------------------------------------ Gabor primitives

@kernel
def gabor_setup_kernel(means, cov3, freqs, weights, opacities, view, fx, fy, lim_x, lim_y, near, means2d, conics,
                       radii, params):
    """One thread per Gabor: its projected frequencies and attenuations (torch_impl.project_frequencies)."""
    i = cuda.grid(1)
    if i >= means.shape[0]:
        return
    n_cols = params.shape[1]
    for c in range(n_cols):
        params[i, c] = _F0
    if radii[i] <= 0:
        return
    params[i, 0] = means2d[i, 0]
    params[i, 1] = means2d[i, 1]
    params[i, 2] = conics[i, 0]
    params[i, 3] = conics[i, 1]
    params[i, 4] = conics[i, 2]
    params[i, 5] = opacities[i]
    px, py, pz = means[i, 0], means[i, 1], means[i, 2]
    x = view[0, 0] * px + view[0, 1] * py + view[0, 2] * pz + view[0, 3]
    y = view[1, 0] * px + view[1, 1] * py + view[1, 2] * pz + view[1, 3]
    z = view[2, 0] * px + view[2, 1] * py + view[2, 2] * pz + view[2, 3]
    z = z if z > near else _F1
    tx = min(lim_x, max(-lim_x, x / z)) * z
    ty = min(lim_y, max(-lim_y, y / z)) * z
    j00, j02 = fx / z, -fx * tx / (z * z)
    j11, j12 = fy / z, -fy * ty / (z * z)
    t = cuda.local.array((2, 3), float32)
    for c in range(3):
        t[0, c] = j00 * view[0, c] + j02 * view[2, c]
        t[1, c] = j11 * view[1, c] + j12 * view[2, c]
    ts = cuda.local.array((2, 3), float32)                      # T Sigma
    for r in range(2):
        for c in range(3):
            ts[r, c] = t[r, 0] * cov3[i, 0, c] + t[r, 1] * cov3[i, 1, c] + t[r, 2] * cov3[i, 2, c]
    s00 = ts[0, 0] * t[0, 0] + ts[0, 1] * t[0, 1] + ts[0, 2] * t[0, 2]
    s01 = ts[0, 0] * t[1, 0] + ts[0, 1] * t[1, 1] + ts[0, 2] * t[1, 2]
    s11 = ts[1, 0] * t[1, 0] + ts[1, 1] * t[1, 1] + ts[1, 2] * t[1, 2]
    det = s00 * s11 - s01 * s01
    if det <= _F0:
        return
    for k in range(freqs.shape[1]):
        f0, f1, f2 = freqs[i, k, 0], freqs[i, k, 1], freqs[i, k, 2]
        g0 = ts[0, 0] * f0 + ts[0, 1] * f1 + ts[0, 2] * f2      # g = T Sigma f
        g1 = ts[1, 0] * f0 + ts[1, 1] * f1 + ts[1, 2] * f2
        u0 = (s11 * g0 - s01 * g1) / det                        # f2 = S2^-1 g
        u1 = (s00 * g1 - s01 * g0) / det
        sf0 = cov3[i, 0, 0] * f0 + cov3[i, 0, 1] * f1 + cov3[i, 0, 2] * f2
        sf1 = cov3[i, 1, 0] * f0 + cov3[i, 1, 1] * f1 + cov3[i, 1, 2] * f2
        sf2 = cov3[i, 2, 0] * f0 + cov3[i, 2, 1] * f1 + cov3[i, 2, 2] * f2
        quad = max(f0 * sf0 + f1 * sf1 + f2 * sf2 - (g0 * u0 + g1 * u1), _F0)
        params[i, 6 + 3 * k] = u0
        params[i, 7 + 3 * k] = u1
        params[i, 8 + 3 * k] = weights[i, k] * math.exp(-_F2 * _PI * _PI * quad)


def gabor_setup(means: torch.Tensor, cov3: torch.Tensor, freqs: torch.Tensor, weights: torch.Tensor,
                opacities: torch.Tensor, camera):
    """numba twin of :func:`torch_impl.gabor_setup`."""
    _require(means, "means", (None, 3))
    n = means.shape[0]
    _require(freqs, "freqs", (n, None, 3))
    _require(weights, "weights", (n, freqs.shape[1]))
    _require(opacities, "opacities", (n,))
    proj = project_covariances(means, cov3, camera)
    view = camera.viewmat.to(device=means.device, dtype=torch.float32).contiguous()
    params = torch.empty(n, 6 + 3 * freqs.shape[1], dtype=torch.float32, device=means.device)
    gabor_setup_kernel[_blocks(n), BLOCK_1D](
        means.contiguous(), cov3.contiguous(), freqs.contiguous(), weights.contiguous(), opacities.contiguous(),
        view, _f32(camera.fx), _f32(camera.fy), _f32(FOV_CLAMP * camera.tan_fovx), _f32(FOV_CLAMP * camera.tan_fovy),
        _f32(camera.near), proj.means2d, proj.conics, proj.radii, params)
    return params, proj
