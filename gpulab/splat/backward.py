"""The backward pass of the numba rasterizer: gradients of an image with respect to the scene.

Two kernels, in the order the chain rule runs (the structure of diff-gaussian-rasterization's
``backward.cu`` and of gsplat's ``rasterize_to_pixels_bwd`` and ``projection_ewa_3dgs_fused_bwd``):

* :func:`raster_backward_kernel_for`: one block per 16x16 tile, one thread per pixel, the same
  sorted tile lists as the forward pass but walked **back to front**. Each pixel starts from
  what the forward pass stored, its final transmittance ``T_final`` and the position of its
  last contributor, and divides the transmittance back, ``T_before = T_after / (1 - alpha)``,
  so nothing per (pixel, Gaussian) is kept from the forward pass. With ``behind`` = the colour
  the Gaussians behind the current one added, the gradient of a pixel's colour ``C`` is::

      dC/dfeature_g = alpha_g T_g
      dC/dalpha_g   = feature_g T_g - (behind + T_final * background) / (1 - alpha_g)
      dT_final/dalpha_g = -T_final / (1 - alpha_g)

  and ``alpha = min(0.99, o exp(power))`` passes it on to the opacity, the conic and the 2D
  mean. Many pixels add to the same Gaussian: the 32 threads of a warp, which all look at the
  same Gaussian at the same time, first sum their shares with shuffles (five steps of
  ``shfl_down``), then one lane adds the sum with an atomic (gsplat's ``warpSum``; the INRIA
  code issues one atomic per thread). That divides the atomics on a Gaussian by up to 32.
  Under the simulator, which has no warp shuffles, every thread adds its own share.
* :func:`project_backward_kernel`: one thread per Gaussian, from the gradients of the 2D
  mean, conic and depth back through the conic's inverse, the EWA Jacobian (with its
  clamp), the view transform and ``R S S^T R^T`` to means, quaternions and scales.

:mod:`.autograd` wraps both as ``torch.autograd.Function`` s so ``render(..., backend="numba")``
trains. Float32 throughout, like the forward kernels.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from numba import cuda, float32, int32

from .. import runtime
from ..launch import kernel
from .constants import ALPHA_MAX, ALPHA_MIN, BATCH, FOV_CLAMP, LOW_PASS, TILE
from .kernels import BLOCK_1D, _blocks, _f32, _require
from .torch_impl import tile_grid

__all__ = ["raster_backward_kernel_for", "rasterize_tiles_backward", "project_backward_kernel",
           "project_gaussians_backward", "WARP_REDUCE"]

# Sum each Gaussian's gradient over a warp before the atomic (needs shuffles: a real GPU).
WARP_REDUCE = not runtime.SIMULATOR
_FULL_MASK = 0xFFFFFFFF     # a Python int, as numba-cuda's own warp tests pass it (typed int64, truncated)
_F0, _F1, _F2, _HALF = np.float32(0.0), np.float32(1.0), np.float32(2.0), np.float32(0.5)
_ALPHA_MIN = np.float32(ALPHA_MIN)
_ALPHA_MAX = np.float32(ALPHA_MAX)
_LOW_PASS = np.float32(LOW_PASS)
_EPS = np.float32(1e-12)
N_GAUSSIAN_PARAMS = 6   # (x, y, A, B, C, opacity): the Gaussian footprint's parameter table


# ------------------------------------------------------------------ raster backward

@cuda.jit(device=True)
def warp_sum(value):
    """Sum of ``value`` over the 32 lanes of the warp, valid in lane 0 (a shuffle tree)."""
    offset = 16
    while offset > 0:
        value += cuda.shfl_down_sync(_FULL_MASK, value, offset)
        offset //= 2
    return value


@cuda.jit(device=True)
def warp_max(value):
    """Largest ``value`` over the warp, in every lane (a butterfly of xor shuffles)."""
    offset = 16
    while offset > 0:
        value = max(value, cuda.shfl_xor_sync(_FULL_MASK, value, offset))
        offset //= 2
    return value


@cuda.jit(device=True)
def add_to_gaussian(out, g, col, value, warp_reduce):
    """``out[g, col] += value`` for a value every lane of the warp holds (zero where unused)."""
    if warp_reduce:
        total = warp_sum(value)
        if cuda.laneid == 0 and total != _F0:
            cuda.atomic.add(out, (g, col), total)
    elif value != _F0:
        cuda.atomic.add(out, (g, col), value)


_RASTER_BACKWARD_KERNELS: dict = {}


def raster_backward_kernel_for(n_channels: int, warp_reduce: bool = WARP_REDUCE):
    """The Gaussian footprint's backward kernel for ``n_channels`` features (built once, cached)."""
    key = (n_channels, warp_reduce)
    if key in _RASTER_BACKWARD_KERNELS:
        return _RASTER_BACKWARD_KERNELS[key]
    n_params = N_GAUSSIAN_PARAMS

    def raster_backward_kernel(ranges, gaussian_ids, params, features, background, transmittance, last_ids,
                               v_image, v_transmittance, v_params, v_features):
        height = transmittance.shape[0]
        width = transmittance.shape[1]
        tile = cuda.blockIdx.y * cuda.gridDim.x + cuda.blockIdx.x
        rank = cuda.threadIdx.y * TILE + cuda.threadIdx.x
        x = cuda.blockIdx.x * TILE + cuda.threadIdx.x
        y = cuda.blockIdx.y * TILE + cuda.threadIdx.y
        inside = x < width and y < height
        px = float32(x) + _HALF
        py = float32(y) + _HALF
        start = ranges[tile, 0]
        end = ranges[tile, 1]
        batch_ids = cuda.shared.array(BATCH, int32)
        batch = cuda.shared.array((BATCH, n_params), float32)
        batch_features = cuda.shared.array((BATCH, n_channels), float32)
        tile_last = cuda.shared.array(1, int32)
        v_pixel = cuda.local.array(n_channels, float32)     # dL/d(this pixel's colour)
        behind = cuda.local.array(n_channels, float32)      # colour added by the Gaussians behind
        # what the forward pass left: the final transmittance and the last contributor
        T_final = _F1
        last = start - 1
        v_T_final = _F0
        for ch in range(n_channels):
            v_pixel[ch] = _F0
            behind[ch] = _F0
        if inside:
            T_final = transmittance[y, x]
            last = last_ids[y, x]
            v_T_final = v_transmittance[y, x]
            for ch in range(n_channels):
                v_pixel[ch] = v_image[y, x, ch]
        # a pixel's colour holds T_final * background and its alpha map T_final: both change
        # with every alpha in front of it by -T_final / (1 - alpha)
        v_through_T_final = v_T_final
        for ch in range(n_channels):
            v_through_T_final += background[ch] * v_pixel[ch]
        T = T_final
        # the tile's work ends at the last contributor of any of its pixels
        if rank == 0:
            tile_last[0] = start - 1
        cuda.syncthreads()
        if inside:
            cuda.atomic.max(tile_last, 0, int32(last))
        cuda.syncthreads()
        stop = tile_last[0] + 1
        n_batches = (stop - start + BATCH - 1) // BATCH
        # each warp skips what lies behind the last contributor of all its 32 pixels (gsplat's
        # warp_bin_final); under the simulator, without shuffles, the tile's is used
        warp_last = stop - 1
        if warp_reduce:
            warp_last = warp_max(last)
        for b in range(n_batches):
            batch_end = stop - b * BATCH                    # this batch: [batch_end - count, batch_end)
            count = min(BATCH, batch_end - start)
            cuda.syncthreads()                              # every thread is done with the last batch
            k = batch_end - 1 - rank                        # slot `rank` holds position k: back to front
            if k >= start:
                g = gaussian_ids[k]
                batch_ids[rank] = g
                for p in range(n_params):
                    batch[rank, p] = params[g, p]
                for ch in range(n_channels):
                    batch_features[rank, ch] = features[g, ch]
            cuda.syncthreads()
            # back to front; every lane of a warp runs every j, so the warp stays whole
            for j in range(max(0, batch_end - 1 - warp_last), count):
                used = inside and batch_end - 1 - j <= last
                alpha = _F0
                gauss = _F0
                dx = _F0
                dy = _F0
                if used:
                    dx = batch[j, 0] - px
                    dy = batch[j, 1] - py
                    power = -_HALF * (batch[j, 2] * dx * dx + batch[j, 4] * dy * dy) - batch[j, 3] * dx * dy
                    if power > _F0:
                        used = False
                    else:
                        gauss = math.exp(power)
                        alpha = min(_ALPHA_MAX, batch[j, 5] * gauss)
                        used = alpha >= _ALPHA_MIN
                if warp_reduce:
                    if not cuda.any_sync(_FULL_MASK, used):  # no lane of the warp used it
                        continue
                v_mx = _F0
                v_my = _F0
                v_a = _F0
                v_b = _F0
                v_c = _F0
                v_opacity = _F0
                one_over = _F1
                if used:
                    one_over = _F1 / (_F1 - alpha)
                    T = T * one_over                        # transmittance in front of this Gaussian
                    weight = alpha * T
                    v_alpha = -T_final * one_over * v_through_T_final
                    for ch in range(n_channels):
                        f = batch_features[j, ch]
                        v_alpha += (f * T - behind[ch] * one_over) * v_pixel[ch]
                        behind[ch] += f * weight
                    if batch[j, 5] * gauss <= _ALPHA_MAX:   # the 0.99 clamp passes no gradient
                        v_power = v_alpha * alpha
                        v_opacity = v_alpha * gauss
                        v_mx = -v_power * (batch[j, 2] * dx + batch[j, 3] * dy)
                        v_my = -v_power * (batch[j, 4] * dy + batch[j, 3] * dx)
                        v_a = -_HALF * v_power * dx * dx
                        v_b = -v_power * dx * dy
                        v_c = -_HALF * v_power * dy * dy
                g = batch_ids[j]
                add_to_gaussian(v_params, g, 0, v_mx, warp_reduce)
                add_to_gaussian(v_params, g, 1, v_my, warp_reduce)
                add_to_gaussian(v_params, g, 2, v_a, warp_reduce)
                add_to_gaussian(v_params, g, 3, v_b, warp_reduce)
                add_to_gaussian(v_params, g, 4, v_c, warp_reduce)
                add_to_gaussian(v_params, g, 5, v_opacity, warp_reduce)
                for ch in range(n_channels):
                    v_f = _F0
                    if used:
                        v_f = alpha * T * v_pixel[ch]
                    add_to_gaussian(v_features, g, ch, v_f, warp_reduce)

    raster_backward_kernel.__name__ = f"raster_backward_gaussian_{n_channels}ch"
    compiled = kernel(fastmath=True)(raster_backward_kernel)
    _RASTER_BACKWARD_KERNELS[key] = compiled
    return compiled


def rasterize_tiles_backward(params, features, background, ranges, gaussian_ids, transmittance, last_ids,
                             v_image, v_transmittance):
    """Gradients (v_params [N, 6], v_features [N, C]) of the Gaussian footprint's compositing.

    Takes the forward pass's inputs, its final ``transmittance`` and ``last_ids`` [H, W], and
    the incoming gradients ``v_image`` [H, W, C] and ``v_transmittance`` [H, W].
    """
    height, width = transmittance.shape
    tiles_x, tiles_y = tile_grid(width, height)
    _require(params, "params", (None, N_GAUSSIAN_PARAMS))
    n = params.shape[0]
    _require(features, "features", (n, None))
    n_ch = features.shape[1]
    _require(background, "background", (n_ch,))
    _require(ranges, "ranges", (tiles_x * tiles_y, 2), torch.int32)
    _require(gaussian_ids, "gaussian_ids", (None,), torch.int32)
    _require(last_ids, "last_ids", (height, width), torch.int32)
    _require(v_image, "v_image", (height, width, n_ch))
    _require(v_transmittance, "v_transmittance", (height, width))
    v_params = torch.zeros(n, N_GAUSSIAN_PARAMS, dtype=torch.float32, device=params.device)
    v_features = torch.zeros(n, n_ch, dtype=torch.float32, device=params.device)
    raster_backward_kernel_for(n_ch)[(tiles_x, tiles_y), (TILE, TILE)](
        ranges, gaussian_ids, params.contiguous(), features.contiguous(), background.contiguous(),
        transmittance.contiguous(), last_ids.contiguous(), v_image.contiguous(), v_transmittance.contiguous(),
        v_params, v_features)
    return v_params, v_features


# ------------------------------------------------------------------ projection backward

@kernel
def project_backward_kernel(means, quats, scales, view, fx, fy, lim_x, lim_y, radii,
                            v_means2d, v_depths, v_conics, v_means, v_quats, v_scales):
    """One thread per Gaussian: the chain rule of ``project_kernel``, recomputing its steps."""
    i = cuda.grid(1)
    if i >= means.shape[0]:
        return
    px, py, pz = means[i, 0], means[i, 1], means[i, 2]
    x = view[0, 0] * px + view[0, 1] * py + view[0, 2] * pz + view[0, 3]
    y = view[1, 0] * px + view[1, 1] * py + view[1, 2] * pz + view[1, 3]
    z = view[2, 0] * px + view[2, 1] * py + view[2, 2] * pz + view[2, 3]
    v_x = _F0
    v_y = _F0
    v_z = v_depths[i]                        # depths = z for every Gaussian, culled or not
    for k in range(4):
        v_quats[i, k] = _F0
    for k in range(3):
        v_scales[i, k] = _F0
    if radii[i] > 0:                         # culled ones have means2d = conics = 0: no gradient
        v_x, v_y, v_z = _backprop_visible(i, quats, scales, view, x, y, z, fx, fy, lim_x, lim_y,
                                          v_means2d, v_conics, v_quats, v_scales, v_z)
    # p = W m + t: v_m = W^T v_p
    for k in range(3):
        v_means[i, k] = view[0, k] * v_x + view[1, k] * v_y + view[2, k] * v_z


@cuda.jit(device=True)
def _backprop_visible(i, quats, scales, view, x, y, z, fx, fy, lim_x, lim_y, v_means2d, v_conics,
                      v_quats, v_scales, v_z):
    """Gradient of a visible Gaussian's (means2d, conic) w.r.t. its view-space mean (returned)
    and its quaternion and scales (written)."""
    inv_z = _F1 / z
    # 2D mean: (fx x / z + cx, fy y / z + cy)
    v_mx = v_means2d[i, 0]
    v_my = v_means2d[i, 1]
    v_x = fx * inv_z * v_mx
    v_y = fy * inv_z * v_my
    v_z += -(fx * x * v_mx + fy * y * v_my) * inv_z * inv_z
    # the forward steps again: Sigma = M M^T with M = R S, then cov2d = T Sigma T^T, T = J W
    rot = cuda.local.array((3, 3), float32)
    m = cuda.local.array((3, 3), float32)
    sigma = cuda.local.array((3, 3), float32)
    qn = _rotation_device(quats[i, 0], quats[i, 1], quats[i, 2], quats[i, 3], rot)
    for r in range(3):
        for c in range(3):
            m[r, c] = rot[r, c] * scales[i, c]
    for r in range(3):
        for c in range(3):
            sigma[r, c] = m[r, 0] * m[c, 0] + m[r, 1] * m[c, 1] + m[r, 2] * m[c, 2]
    ratio_x = x * inv_z
    ratio_y = y * inv_z
    tx = min(lim_x, max(-lim_x, ratio_x)) * z
    ty = min(lim_y, max(-lim_y, ratio_y)) * z
    j00 = fx * inv_z
    j02 = -fx * tx * inv_z * inv_z
    j11 = fy * inv_z
    j12 = -fy * ty * inv_z * inv_z
    t = cuda.local.array((2, 3), float32)
    for c in range(3):
        t[0, c] = j00 * view[0, c] + j02 * view[2, c]
        t[1, c] = j11 * view[1, c] + j12 * view[2, c]
    ts = cuda.local.array((2, 3), float32)               # T Sigma
    for r in range(2):
        for c in range(3):
            ts[r, c] = t[r, 0] * sigma[0, c] + t[r, 1] * sigma[1, c] + t[r, 2] * sigma[2, c]
    a = ts[0, 0] * t[0, 0] + ts[0, 1] * t[0, 1] + ts[0, 2] * t[0, 2] + _LOW_PASS
    b = ts[0, 0] * t[1, 0] + ts[0, 1] * t[1, 1] + ts[0, 2] * t[1, 2]
    c2 = ts[1, 0] * t[1, 0] + ts[1, 1] * t[1, 1] + ts[1, 2] * t[1, 2] + _LOW_PASS
    inv_det = _F1 / (a * c2 - b * b)
    ca, cb, cc = c2 * inv_det, -b * inv_det, a * inv_det   # the conic [[ca, cb], [cb, cc]]
    # conic = cov2d^-1: v_cov2d = -conic G conic, G = [[vA, vB/2], [vB/2, vC]] (B sits off the diagonal)
    g00 = v_conics[i, 0]
    g01 = _HALF * v_conics[i, 1]
    g11 = v_conics[i, 2]
    h00 = ca * g00 + cb * g01                            # conic @ G
    h01 = ca * g01 + cb * g11
    h10 = cb * g00 + cc * g01
    h11 = cb * g01 + cc * g11
    v2 = cuda.local.array((2, 2), float32)               # dL/d cov2d (symmetric)
    v2[0, 0] = -(h00 * ca + h01 * cb)
    v2[0, 1] = -(h00 * cb + h01 * cc)
    v2[1, 0] = v2[0, 1]
    v2[1, 1] = -(h10 * cb + h11 * cc)
    # cov2d = T Sigma T^T: v_Sigma = T^T V T, v_T = 2 V T Sigma
    v_sigma = cuda.local.array((3, 3), float32)
    for r in range(3):
        for c in range(3):
            acc = _F0
            for p in range(2):
                for q in range(2):
                    acc += t[p, r] * v2[p, q] * t[q, c]
            v_sigma[r, c] = acc
    v_t = cuda.local.array((2, 3), float32)
    for r in range(2):
        for c in range(3):
            v_t[r, c] = _F2 * (v2[r, 0] * ts[0, c] + v2[r, 1] * ts[1, c])
    # T = J W: the four non-zero entries of J
    v_j00 = v_t[0, 0] * view[0, 0] + v_t[0, 1] * view[0, 1] + v_t[0, 2] * view[0, 2]
    v_j02 = v_t[0, 0] * view[2, 0] + v_t[0, 1] * view[2, 1] + v_t[0, 2] * view[2, 2]
    v_j11 = v_t[1, 0] * view[1, 0] + v_t[1, 1] * view[1, 1] + v_t[1, 2] * view[1, 2]
    v_j12 = v_t[1, 0] * view[2, 0] + v_t[1, 1] * view[2, 1] + v_t[1, 2] * view[2, 2]
    inv_z2 = inv_z * inv_z
    v_z += -(fx * v_j00 + fy * v_j11) * inv_z2 + _F2 * (fx * tx * v_j02 + fy * ty * v_j12) * inv_z2 * inv_z
    v_tx = -fx * inv_z2 * v_j02
    v_ty = -fy * inv_z2 * v_j12
    # tx = clamp(x / z) z: x itself inside the clamp, +-lim z outside it
    if -lim_x <= ratio_x <= lim_x:
        v_x += v_tx
    else:
        v_z += (lim_x if ratio_x > _F0 else -lim_x) * v_tx
    if -lim_y <= ratio_y <= lim_y:
        v_y += v_ty
    else:
        v_z += (lim_y if ratio_y > _F0 else -lim_y) * v_ty
    # Sigma = M M^T: v_M = 2 v_Sigma M; M = R diag(s): v_s_k = sum_r v_M[r, k] R[r, k]
    v_rot = cuda.local.array((3, 3), float32)
    for k in range(3):
        v_s = _F0
        for r in range(3):
            v_m = _F2 * (v_sigma[r, 0] * m[0, k] + v_sigma[r, 1] * m[1, k] + v_sigma[r, 2] * m[2, k])
            v_s += v_m * rot[r, k]
            v_rot[r, k] = v_m * scales[i, k]
        v_scales[i, k] = v_s
    _quat_backward_device(quats[i, 0], quats[i, 1], quats[i, 2], quats[i, 3], qn, v_rot, v_quats, i)
    return v_x, v_y, v_z


@cuda.jit(device=True)
def _rotation_device(qw, qx, qy, qz, rot):
    """Fill ``rot`` with the rotation of the normalised quaternion; returns the norm."""
    norm = math.sqrt(qw * qw + qx * qx + qy * qy + qz * qz)
    inv = _F1 / max(norm, _EPS)
    w, x, y, z = qw * inv, qx * inv, qy * inv, qz * inv
    rot[0, 0] = _F1 - _F2 * (y * y + z * z)
    rot[0, 1] = _F2 * (x * y - w * z)
    rot[0, 2] = _F2 * (x * z + w * y)
    rot[1, 0] = _F2 * (x * y + w * z)
    rot[1, 1] = _F1 - _F2 * (x * x + z * z)
    rot[1, 2] = _F2 * (y * z - w * x)
    rot[2, 0] = _F2 * (x * z - w * y)
    rot[2, 1] = _F2 * (y * z + w * x)
    rot[2, 2] = _F1 - _F2 * (x * x + y * y)
    return norm


@cuda.jit(device=True)
def _quat_backward_device(qw, qx, qy, qz, norm, v_rot, v_quats, i):
    """v_quats[i] from dL/dR, through R(q / |q|) (the normalisation's Jacobian included)."""
    inv = _F1 / max(norm, _EPS)
    w, x, y, z = qw * inv, qx * inv, qy * inv, qz * inv
    g = v_rot
    v_w = _F2 * (-z * g[0, 1] + y * g[0, 2] + z * g[1, 0] - x * g[1, 2] - y * g[2, 0] + x * g[2, 1])
    v_x = _F2 * (y * g[0, 1] + z * g[0, 2] + y * g[1, 0] - _F2 * x * g[1, 1] - w * g[1, 2]
                 + z * g[2, 0] + w * g[2, 1] - _F2 * x * g[2, 2])
    v_y = _F2 * (-_F2 * y * g[0, 0] + x * g[0, 1] + w * g[0, 2] + x * g[1, 0] + z * g[1, 2]
                 - w * g[2, 0] + z * g[2, 1] - _F2 * y * g[2, 2])
    v_z = _F2 * (-_F2 * z * g[0, 0] - w * g[0, 1] + x * g[0, 2] + w * g[1, 0] - _F2 * z * g[1, 1]
                 + y * g[1, 2] + x * g[2, 0] + y * g[2, 1])
    # q_hat = q / |q|: v_q = (v_hat - q_hat (q_hat . v_hat)) / |q| (only the scale where |q| is clamped)
    along = _F0
    if norm > _EPS:
        along = w * v_w + x * v_x + y * v_y + z * v_z
    v_quats[i, 0] = (v_w - w * along) * inv
    v_quats[i, 1] = (v_x - x * along) * inv
    v_quats[i, 2] = (v_y - y * along) * inv
    v_quats[i, 3] = (v_z - z * along) * inv


def project_gaussians_backward(means, quats, scales, camera, radii, v_means2d, v_depths, v_conics):
    """Gradients (v_means [N, 3], v_quats [N, 4], v_scales [N, 3]) of :func:`kernels.project_gaussians`."""
    _require(means, "means", (None, 3))
    n = means.shape[0]
    _require(quats, "quats", (n, 4))
    _require(scales, "scales", (n, 3))
    _require(radii, "radii", (n,), torch.int32)
    _require(v_means2d, "v_means2d", (n, 2))
    _require(v_depths, "v_depths", (n,))
    _require(v_conics, "v_conics", (n, 3))
    view = camera.viewmat.to(device=means.device, dtype=torch.float32).contiguous()
    v_means = torch.empty(n, 3, dtype=torch.float32, device=means.device)
    v_quats = torch.empty(n, 4, dtype=torch.float32, device=means.device)
    v_scales = torch.empty(n, 3, dtype=torch.float32, device=means.device)
    project_backward_kernel[_blocks(n), BLOCK_1D](
        means.contiguous(), quats.contiguous(), scales.contiguous(), view, _f32(camera.fx), _f32(camera.fy),
        _f32(FOV_CLAMP * camera.tan_fovx), _f32(FOV_CLAMP * camera.tan_fovy), radii.contiguous(),
        v_means2d.contiguous(), v_depths.contiguous(), v_conics.contiguous(), v_means, v_quats, v_scales)
    return v_means, v_quats, v_scales
