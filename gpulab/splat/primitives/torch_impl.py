"""Chapter 07's primitives in torch: the readable specification (numba twins in :mod:`.kernels`).

Every primitive reuses chapter 06's back half (bin, sort, composite: :func:`gpulab.splat.rasterize`);
what it adds is a per-primitive *setup* that fills the footprint's parameter table and the
screen box binning uses, and the footprint's weight (:mod:`.footprints`):

* :func:`slice_4d`: a 4D Gaussian at time ``t`` is a 3D Gaussian (the conditional of the
  space-time Gaussian given t) with a temporal opacity; then :func:`project_covariances`
  projects it exactly as chapter 06 projects a 3D Gaussian.
* :func:`triangle_setup`: outward unit edge normals, the incentre, the window's parameters.
* :func:`convex_setup`: the 2D hull of the projected points (monotone chain), its edges.
* :func:`shade_pbr`: direct Cook-Torrance shading of a composited G-buffer.

All functions work in the dtype of their inputs (float64 for the tests' references).
"""
from __future__ import annotations

import math

import torch

from ..constants import ALPHA_MIN, FOV_CLAMP, SH_C0, SH_C1, SH_C2
from ..torch_impl import Projection, conic_and_radius, project_covariance, tile_rects
from .constants import F0_DIELECTRIC, MAX_HULL, PAD_OFFSET, TEMPORAL_CULL

__all__ = ["slice_4d", "project_covariances", "triangle_setup", "convex_setup", "convex_hull", "shade_pbr",
           "mesh_gaussians", "relight", "indirect_diffuse", "gabor_setup", "project_frequencies",
           "fibonacci_hemisphere",
           "rotation_4d", "covariance_4d", "plane_rotation_4d", "triangle_frames", "twist"]


# ------------------------------------------------------------------ 4D Gaussians

def _left_isoclinic(q: torch.Tensor) -> torch.Tensor:
    """[N, 4, 4]: the matrix of x -> q x (quaternion product, x a 4-vector (w, x, y, z))."""
    a, b, c, d = q.unbind(-1)
    rows = [a, -b, -c, -d,
            b, a, -d, c,
            c, d, a, -b,
            d, -c, b, a]
    return torch.stack(rows, -1).reshape(*q.shape[:-1], 4, 4)


def _right_isoclinic(q: torch.Tensor) -> torch.Tensor:
    """[N, 4, 4]: the matrix of x -> x q."""
    p, q1, r, s = q.unbind(-1)
    rows = [p, -q1, -r, -s,
            q1, p, s, -r,
            r, -s, p, q1,
            s, r, -q1, p]
    return torch.stack(rows, -1).reshape(*q.shape[:-1], 4, 4)


def rotation_4d(q_left: torch.Tensor, q_right: torch.Tensor) -> torch.Tensor:
    """A 4D rotation [N, 4, 4] from two unit quaternions: R = L(q_left) R(q_right).

    Every rotation of 4-space is a left- times a right-isoclinic rotation (the two-quaternion
    form of Yang et al., arXiv:2310.10642); 4D Rotor Gaussian Splatting (arXiv:2402.03307)
    writes the same group with rotors. Coordinates are (x, y, z, t) in that order.
    """
    ql = q_left / q_left.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    qr = q_right / q_right.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return _left_isoclinic(ql) @ _right_isoclinic(qr)


def plane_rotation_4d(bivector: torch.Tensor) -> torch.Tensor:
    """The rotation [N, 4, 4] a rotor ``exp(-B/2)`` applies: ``expm(B)``, B antisymmetric.

    ``bivector`` [N, 6] holds the components (xy, xz, xt, yz, yt, zt) of B: a rotor with one
    non-zero component rotates in that plane by that angle (the rotor form of 4D rotations).
    """
    n = bivector.shape[0]
    b = torch.zeros(n, 4, 4, dtype=bivector.dtype, device=bivector.device)
    for k, (i, j) in enumerate(((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))):
        b[:, i, j] = -bivector[:, k]
        b[:, j, i] = bivector[:, k]
    return torch.linalg.matrix_exp(b)


def covariance_4d(rotation: torch.Tensor, scales4: torch.Tensor) -> torch.Tensor:
    """Space-time covariances [N, 4, 4] = R S S^T R^T, S = diag(scales4) (x, y, z, t)."""
    m = rotation * scales4[..., None, :]
    return m @ m.transpose(-1, -2)


def slice_4d(means4: torch.Tensor, cov4: torch.Tensor, opacities: torch.Tensor, t: float):
    """The 3D Gaussians a set of 4D Gaussians shows at time ``t``: (means3, cov3, opacities_t).

    Conditioning the space-time Gaussian on t (Schur complement)::

        cov3 = S_xx - S_xt S_xt^T / S_tt          (the conditional covariance, [N, 3, 3])
        mu3  = mu_x + S_xt (t - mu_t) / S_tt      (the mean moves along the space-time axis)
        o_t  = o exp(-(t - mu_t)^2 / (2 S_tt))    (the temporal marginal, peak 1 at t = mu_t)

    ``o_t`` is 0 where the marginal is at most 0.05 (the reference renderers cull those).
    Example: with no space-time rotation (S_xt = 0) and t = mu_t, the result is the 3D
    Gaussian (mu_x, S_xx, o) unchanged.
    """
    s_xx = cov4[..., :3, :3]
    s_xt = cov4[..., :3, 3]
    s_tt = cov4[..., 3, 3]
    dt = t - means4[..., 3]
    means3 = means4[..., :3] + s_xt * (dt / s_tt)[..., None]
    cov3 = s_xx - s_xt[..., :, None] * s_xt[..., None, :] / s_tt[..., None, None]
    marginal = torch.exp(-0.5 * dt * dt / s_tt)
    opacities_t = torch.where(marginal > TEMPORAL_CULL, opacities * marginal, torch.zeros_like(marginal))
    return means3, cov3, opacities_t


def project_covariances(means: torch.Tensor, cov3: torch.Tensor, camera) -> Projection:
    """Chapter 06's projection for Gaussians given by their covariances [N, 3, 3] (not quats
    and scales): the same EWA map, low-pass, radius and culling as
    :func:`gpulab.splat.torch_impl.project_gaussians`, which it equals for ``cov3 = R S S^T R^T``.
    """
    dtype = means.dtype
    view = camera.viewmat.to(device=means.device, dtype=dtype)
    rot, trans = view[:3, :3], view[:3, 3]
    p = means @ rot.T + trans
    z = p[:, 2]
    in_front = z > camera.near
    z_safe = torch.where(in_front, z, torch.ones_like(z))
    p_safe = torch.stack([p[:, 0], p[:, 1], z_safe], -1)
    cov2d = project_covariance(cov3, p_safe, rot, camera.fx, camera.fy,
                               FOV_CLAMP * camera.tan_fovx, FOV_CLAMP * camera.tan_fovy)
    conics, radius, det = conic_and_radius(cov2d)
    means2d = torch.stack([camera.fx * p[:, 0] / z_safe + camera.cx, camera.fy * p[:, 1] / z_safe + camera.cy], -1)
    keep = in_front & (det > 0)
    radius = torch.where(keep, radius, torch.zeros_like(radius))
    x0, y0, x1, y1 = tile_rects(means2d.detach(), radius.detach(), camera.width, camera.height)
    keep = keep & ((x1 - x0) * (y1 - y0) > 0)
    zero = torch.zeros((), dtype=dtype, device=means.device)
    return Projection(torch.where(keep[:, None], means2d, zero), z, torch.where(keep[:, None], conics, zero),
                      torch.where(keep, radius, zero).to(torch.int32))


# ------------------------------------------------------------------ triangles

def _box(lo: torch.Tensor, hi: torch.Tensor, keep: torch.Tensor, width: int, height: int):
    """(centre [N, 2], half-sizes [N, 2] int32) of the boxes [lo, hi]; 0 where not kept or off screen."""
    centre = 0.5 * (lo + hi)
    half = torch.ceil((0.5 * (hi - lo)).clamp(0, 65536))
    x0, y0, x1, y1 = tile_rects(centre.detach(), half.detach(), width, height)
    keep = keep & ((x1 - x0) * (y1 - y0) > 0)
    zero = torch.zeros((), dtype=centre.dtype, device=centre.device)
    return torch.where(keep[:, None], centre, zero), torch.where(keep[:, None], half, zero).to(torch.int32)


def triangle_setup(verts2d: torch.Tensor, sigmas: torch.Tensor, opacities: torch.Tensor, width: int, height: int):
    """The triangle footprint's table for projected triangles ``verts2d`` [N, 3, 2] (pixels).

    Returns ``(params [N, 12], means2d [N, 2], radii [N, 2] int32)``: per edge k the outward
    unit normal and offset (n_k, c_k), so that ``L_k(p) = n_k . p + c_k`` is the signed
    distance to edge k (positive outside); then ``phi(s) = max_k L_k(s)`` at the incentre s
    (minus the inradius), sigma and the opacity. The window (Triangle Splatting, arXiv:2505.19175)
    is ``w(p) = max(0, phi(p) / phi(s)) ** sigma`` with ``phi(p) = max_k L_k(p)``: 1 at the
    incentre, 0 on the edges and outside. The box is the triangle's bounding box (w = 0
    beyond it); degenerate triangles (area below 1e-6 pixel^2) are culled (radii 0).
    """
    a, b, c = verts2d[:, 0], verts2d[:, 1], verts2d[:, 2]
    cross = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    # counter-clockwise (in x, y) order: swap b and c of the clockwise ones
    ccw = (cross > 0)[:, None]
    b, c = torch.where(ccw, b, c), torch.where(ccw, c, b)
    edges = [(a, b), (b, c), (c, a)]
    cols, lengths = [], []
    for start, end in edges:
        d = end - start
        length = d.norm(dim=-1).clamp_min(1e-12)
        n = torch.stack([d[:, 1], -d[:, 0]], -1) / length[:, None]   # outward for a ccw triangle
        cols += [n[:, 0], n[:, 1], -(n * start).sum(-1)]
        lengths.append(length)
    # incentre: the vertices weighted by the lengths of the opposite edges
    la, lb, lc = lengths[1], lengths[2], lengths[0]           # |bc|, |ca|, |ab|
    s = (la[:, None] * a + lb[:, None] * b + lc[:, None] * c) / (la + lb + lc)[:, None]
    dists = [cols[3 * k] * s[:, 0] + cols[3 * k + 1] * s[:, 1] + cols[3 * k + 2] for k in range(3)]
    phi_s = torch.stack(dists, -1).amax(-1)
    area_ok = cross.abs() > 1e-6
    phi_s = torch.where(area_ok, phi_s, -torch.ones_like(phi_s))
    params = torch.stack(cols + [phi_s, sigmas, opacities], -1)
    keep = area_ok & (opacities >= ALPHA_MIN)
    means2d, radii = _box(verts2d.amin(1), verts2d.amax(1), keep, width, height)
    return params.contiguous(), means2d, radii


# ------------------------------------------------------------------ smooth convexes

def _cross(o: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a[..., 0] - o[..., 0]) * (b[..., 1] - o[..., 1]) - (a[..., 1] - o[..., 1]) * (b[..., 0] - o[..., 0])


def convex_hull(points2d: torch.Tensor):
    """2D convex hulls of [N, K, 2] points by Andrew's monotone chain, batched over N.

    Returns ``(hull [N, K, 2], size [N])``: the hull's vertices counter-clockwise (in x, y),
    starting from the smallest (x, y), collinear points dropped; rows past ``size`` are 0.
    The loop over the K points is the algorithm's; each step is one tensor operation over
    all N convexes (a point pops the stack's top while it does not turn left).
    """
    n, k, _ = points2d.shape
    # sort by x, ties by y (two stable sorts)
    order = torch.sort(points2d[..., 1], dim=1, stable=True).indices
    p = torch.gather(points2d, 1, order[..., None].expand(n, k, 2))
    order = torch.sort(p[..., 0], dim=1, stable=True).indices
    p = torch.gather(p, 1, order[..., None].expand(n, k, 2))
    rows = torch.arange(n, device=points2d.device)
    slots = torch.arange(2 * k, device=points2d.device)
    stack = torch.zeros(n, 2 * k, 2, dtype=points2d.dtype, device=points2d.device)
    size = torch.zeros(n, dtype=torch.long, device=points2d.device)

    def push(stack, size, point, floor):
        # out of place throughout, so the hull stays differentiable in the points
        for _ in range(k):          # at most k pops per point
            top = stack[rows, (size - 1).clamp_min(0)]
            below = stack[rows, (size - 2).clamp_min(0)]
            pop = (size >= floor + 2) & (_cross(below, top, point) <= 0)
            size = size - pop.long()
        stack = torch.where((slots[None, :] == size[:, None])[..., None], point[:, None, :], stack)
        return stack, size + 1

    for i in range(k):                              # lower hull, left to right
        stack, size = push(stack, size, p[:, i], 0)
    lower = size.clone()
    for i in range(k - 2, -1, -1):                  # upper hull, right to left
        stack, size = push(stack, size, p[:, i], lower - 1)
    size = size - 1                                 # the first point closes the chain again
    keep = slots[None, :] < size[:, None]
    hull = torch.where(keep[..., None], stack, torch.zeros_like(stack))[:, :k]
    return hull, size.clamp_max(k)


def convex_setup(points2d: torch.Tensor, depths: torch.Tensor, deltas: torch.Tensor, sigmas: torch.Tensor,
                 opacities: torch.Tensor, width: int, height: int):
    """The smooth-convex footprint's table for projected point sets ``points2d`` [N, K <= 8, 2].

    Returns ``(params [N, 27], means2d [N, 2], radii [N, 2] int32)``. The hull's edges give
    outward unit normals and offsets (n_k, c_k) (8 slots; unused ones have n = 0 and c =
    -1e20, which never wins the max and adds exp(-inf) = 0); then the sharpness pair scaled
    by the view depth z as the reference rasterizer does (``delta' = z delta``,
    ``sigma' = z sigma``) and the opacity. The window (3D Convex Splatting, arXiv:2411.14974)::

        phi(p) = log sum_k exp(delta' L_k(p)),   w(p) = sigmoid(-sigma' phi(p))

    The box: alpha >= 1/255 needs ``w >= a = (1/255) / o``, so ``phi <= -logit(a) / sigma'``;
    since phi >= delta' max_k L_k, every L_k <= M = -logit(a) / (sigma' delta'): the pixel is
    inside the hull pushed out by M, whose corners bound the box. Hulls with fewer than 3
    vertices are culled.
    """
    n, k, _ = points2d.shape
    if k > MAX_HULL:
        raise ValueError(f"convex_setup takes at most {MAX_HULL} points per convex, got {k}")
    hull, size = convex_hull(points2d)
    slots = torch.arange(MAX_HULL, device=points2d.device)
    pad = torch.zeros(n, MAX_HULL, 2, dtype=points2d.dtype, device=points2d.device)
    pad[:, :k] = hull
    idx_next = torch.where(slots[None, :] + 1 < size[:, None], slots[None, :] + 1, torch.zeros_like(slots)[None, :])
    start = pad
    end = torch.gather(pad, 1, idx_next[..., None].expand(n, MAX_HULL, 2))
    d = end - start
    length = d.norm(dim=-1).clamp_min(1e-12)
    normal = torch.stack([d[..., 1], -d[..., 0]], -1) / length[..., None]
    offset = -(normal * start).sum(-1)
    used = slots[None, :] < size[:, None]
    normal = torch.where(used[..., None], normal, torch.zeros_like(normal))
    offset = torch.where(used, offset, torch.full_like(offset, PAD_OFFSET))
    delta_z, sigma_z = deltas * depths, sigmas * depths
    params = torch.cat([torch.stack([normal[..., 0], normal[..., 1], offset], -1).reshape(n, 3 * MAX_HULL),
                        torch.stack([delta_z, sigma_z, opacities], -1)], -1)
    # the box: the corners of the hull pushed out by M (consecutive shifted edges meet there)
    a = (ALPHA_MIN / opacities.clamp_min(ALPHA_MIN)).clamp_max(1 - 1e-6)
    margin = (-torch.log(a / (1 - a)) / (sigma_z * delta_z).clamp_min(1e-12)).clamp_min(0.0)
    prev = torch.where(slots[None, :] == 0, size[:, None] - 1, slots[None, :] - 1).clamp_min(0)
    n_prev = torch.gather(normal, 1, prev[..., None].expand(n, MAX_HULL, 2))
    c_prev = torch.gather(offset, 1, prev)
    # solve n_prev . p = M - c_prev, n . p = M - c for the corner p
    r1, r2 = margin[:, None] - c_prev, margin[:, None] - offset
    det = n_prev[..., 0] * normal[..., 1] - n_prev[..., 1] * normal[..., 0]
    det = torch.where(det.abs() > 1e-12, det, torch.full_like(det, 1e-12))
    cx = (r1 * normal[..., 1] - r2 * n_prev[..., 1]) / det
    cy = (n_prev[..., 0] * r2 - normal[..., 0] * r1) / det
    corners = torch.stack([cx, cy], -1)
    big = torch.full_like(corners, float("inf"))
    lo = torch.where(used[..., None], corners, big).amin(1)
    hi = torch.where(used[..., None], corners, -big).amax(1)
    keep = (size >= 3) & (opacities >= ALPHA_MIN) & (depths > 0)
    lo = torch.where(keep[:, None], lo, torch.zeros_like(lo))
    hi = torch.where(keep[:, None], hi, torch.zeros_like(hi))
    means2d, radii = _box(lo, hi, keep, width, height)
    return params.contiguous(), means2d, radii


# ------------------------------------------------------------------ shading

def shade_pbr(gbuffer: torch.Tensor, alpha: torch.Tensor, light_dir: torch.Tensor, light_rgb: torch.Tensor,
              fx: float, fy: float, cx: float, cy: float) -> torch.Tensor:
    """Direct shading [H, W, 3] of a resolved G-buffer [H, W, 9] under one directional light.

    Channels (:data:`.constants.GBUFFER_CHANNELS`): depth, unit normal (camera space), albedo,
    roughness r, metallic m. ``light_dir`` [3] points towards the light (camera space),
    ``alpha`` [H, W] the coverage the result is multiplied by. Cook-Torrance with GGX, the
    metallic workflow GI-GS uses (arXiv:2410.02619) and the constants of Karis 2013::

        F0 = lerp(0.04, albedo, m)        F = F0 + (1 - F0)(1 - v.h)^5
        D = a^2 / (pi ((n.h)^2 (a^2 - 1) + 1)^2), a = r^2
        G = G1(n.l) G1(n.v), G1(x) = x / (x (1 - k) + k), k = (r + 1)^2 / 8
        colour = ((1 - F)(1 - m) albedo / pi + D F G / (4 n.l n.v)) * light * n.l

    The view vector v points from the pixel's surface point to the camera: the pixel's ray
    ``((x + 0.5 - cx) / fx, (y + 0.5 - cy) / fy, 1)`` reversed and normalised.
    """
    h, w = gbuffer.shape[:2]
    dtype, device = gbuffer.dtype, gbuffer.device
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=dtype), torch.arange(w, device=device, dtype=dtype),
                            indexing="ij")
    ray = torch.stack([(xs + 0.5 - cx) / fx, (ys + 0.5 - cy) / fy, torch.ones_like(xs)], -1)
    v = -ray / ray.norm(dim=-1, keepdim=True)
    n = gbuffer[..., 1:4]
    albedo = gbuffer[..., 4:7]
    rough = gbuffer[..., 7:8]
    metal = gbuffer[..., 8:9]
    l = (light_dir / light_dir.norm()).to(dtype)
    hv = v + l
    hv = hv / hv.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    n_l = (n * l).sum(-1, keepdim=True)
    n_v = (n * v).sum(-1, keepdim=True).clamp_min(1e-4)
    n_h = (n * hv).sum(-1, keepdim=True).clamp_min(0.0)
    v_h = (v * hv).sum(-1, keepdim=True).clamp_min(0.0)
    f0 = F0_DIELECTRIC + (albedo - F0_DIELECTRIC) * metal
    fresnel = f0 + (1.0 - f0) * (1.0 - v_h) ** 5
    a2 = rough ** 4
    denom = n_h * n_h * (a2 - 1.0) + 1.0
    ndf = a2 / (torch.pi * denom * denom)
    k = (rough + 1.0) ** 2 / 8.0
    n_l_pos = n_l.clamp_min(0.0)
    geometry = (n_l_pos / (n_l_pos * (1.0 - k) + k)) * (n_v / (n_v * (1.0 - k) + k))
    specular = ndf * fresnel * geometry / (4.0 * n_l_pos.clamp_min(1e-4) * n_v)
    diffuse = (1.0 - fresnel) * (1.0 - metal) * albedo / torch.pi
    colour = (diffuse + specular) * light_rgb.to(dtype) * n_l_pos
    return colour * alpha[..., None]


# ------------------------------------------------------------------ mesh-attached Gaussians

def triangle_frames(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Orthonormal frames [F, 3, 3] of a mesh's triangles: columns (e1, e2, n).

    ``e1`` along the first edge v0 -> v1, ``n`` the unit face normal (v1 - v0) x (v2 - v0),
    ``e2 = n x e1``. A rigid motion of the mesh rotates every frame with it.
    """
    v0, v1, v2 = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    e1 = v1 - v0
    e1 = e1 / e1.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    n = torch.linalg.cross(v1 - v0, v2 - v0)
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    e2 = torch.linalg.cross(n, e1)
    return torch.stack([e1, e2, n], -1)


def mesh_gaussians(verts: torch.Tensor, faces: torch.Tensor, tri_ids: torch.Tensor, barys: torch.Tensor,
                   offsets: torch.Tensor, local_rot: torch.Tensor, scales: torch.Tensor):
    """World means [N, 3] and covariances [N, 3, 3] of Gaussians attached to a (deformed) mesh.

    Each Gaussian (HRM²Avatar, arXiv:2510.13587, after GaussianAvatars) lives on triangle
    ``tri_ids[i]`` at barycentric coordinates ``barys[i]``, ``offsets[i]`` along its normal,
    with a rotation ``local_rot[i]`` [3, 3] and standard deviations ``scales[i]`` in the
    triangle's frame. Every frame it is rebuilt from the deformed triangle:
    ``mu = sum_k b_k v_k + offset n``, ``R = R_tri R_local``, ``Sigma = R S S^T R^T``.
    (The local scale is kept as it is; GaussianAvatars also scales it with the triangle.)
    """
    tri = faces[tri_ids.long()]
    corners = verts[tri]                                      # [N, 3 corners, 3]
    frames = triangle_frames(verts, faces)[tri_ids.long()]
    means = (barys[..., None] * corners).sum(1) + offsets[:, None] * frames[..., 2]
    m = (frames @ local_rot) * scales[..., None, :]
    return means, m @ m.transpose(-1, -2)


def twist(verts: torch.Tensor, angle: float) -> torch.Tensor:
    """A procedural deformation: each vertex turned about the z axis by ``angle * z`` (a twist)."""
    a = angle * verts[:, 2]
    c, s = torch.cos(a), torch.sin(a)
    return torch.stack([c * verts[:, 0] - s * verts[:, 1], s * verts[:, 0] + c * verts[:, 1], verts[:, 2]], -1)


# ------------------------------------------------------------------ relightable Gaussians

def fibonacci_hemisphere(normals: torch.Tensor, n_samples: int = 64) -> torch.Tensor:
    """[N, S, 3] incident directions on each normal's hemisphere (Relightable 3D Gaussians).

    The reference's ``fibonacci_sphere_sampling`` without its training-time random spin:
    ``z_k = max(sin 10 deg, 1 - 2k / (2S - 1))``, azimuth ``k * pi (3 - sqrt 5)`` (the golden
    angle), ``(sin, cos)`` of it times ``sqrt(1 - z^2)``, turned from +z to the normal by the
    rotation about ``z x n`` (``n = -z`` maps by -I). Each sample stands for 2 pi / S steradians.
    """
    dtype, device = normals.dtype, normals.device
    n = normals / normals.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    k = torch.arange(n_samples, dtype=dtype, device=device)
    z = (1 - 2 * k / (2 * n_samples - 1)).clamp_min(math.sin(math.radians(10.0)))
    rad = torch.sqrt(1 - z * z)
    theta = k * math.pi * (3.0 - math.sqrt(5.0))
    local = torch.stack([torch.sin(theta) * rad, torch.cos(theta) * rad, z], -1)       # [S, 3]
    rot = _rotation_from_z(n)
    return local @ rot.transpose(-1, -2)                                               # [N, S, 3]


def _rotation_from_z(n: torch.Tensor) -> torch.Tensor:
    """[N, 3, 3] rotations taking +z to the unit vectors ``n`` (Rodrigues about z x n)."""
    vx, vy = -n[:, 1], n[:, 0]                  # v = z x n (v_z = 0)
    c1 = (n[:, 2] + 1).clamp_min(1e-7)
    zero, one = torch.zeros_like(vx), torch.ones_like(vx)
    rot = torch.stack([one - vy * vy / c1, vx * vy / c1, vy,
                       vx * vy / c1, one - vx * vx / c1, -vx,
                       -vy, vx, one - (vx * vx + vy * vy) / c1], -1).reshape(-1, 3, 3)
    flip = -torch.eye(3, dtype=n.dtype, device=n.device).expand_as(rot)
    return torch.where((n[:, 2] + 1 > 0)[:, None, None], rot, flip)


def _sh9(d: torch.Tensor) -> torch.Tensor:
    """The 9 real SH basis functions of degree <= 2 at unit directions d [..., 3] (3DGS's order and signs)."""
    x, y, z = d.unbind(-1)
    return torch.stack([torch.full_like(x, SH_C0), -SH_C1 * y, SH_C1 * z, -SH_C1 * x,
                        SH_C2[0] * x * y, SH_C2[1] * y * z, SH_C2[2] * (2 * z * z - x * x - y * y),
                        SH_C2[3] * x * z, SH_C2[4] * (x * x - y * y)], -1)


def relight(normals: torch.Tensor, base_color: torch.Tensor, roughness: torch.Tensor, viewdirs: torch.Tensor,
            visibility: torch.Tensor, env_sh: torch.Tensor, local_sh: torch.Tensor) -> torch.Tensor:
    """Each Gaussian's outgoing colour [N, 3] under its hemisphere's light (Relightable 3D Gaussians).

    ``S = visibility.shape[1]`` Fibonacci directions per normal (64 in the paper). Light from
    sample k: ``L_k = max(0, local_sh(w_k)) + max(0, env_sh(w_k)) * visibility[:, k]`` (a global
    environment, degree-2 SH [9, 3], times the baked visibility, plus per-Gaussian local SH
    [N, 9, 3]). Then, as the reference's ``rendering_equation``::

        colour = mean_k (base / pi + f_s(w_k)) * L_k * 2 pi * max(0, n . w_k)

    ``f_s``: the reference's ``GGX_specular`` with F0 = 0.04: a = r^2, k = (a + 2r + 1) / 8
    (= (r + 1)^2 / 8), Fresnel ``F0 + (1 - F0) 2^((-5.55473 v.h - 6.98316) v.h)``, the cosines
    clamped to [1e-6, 1] with the normal turned towards the viewer, the denominator
    ``4 pi D' G1' G1'`` clamped to [1e-6, 4 pi].
    """
    n_samples = visibility.shape[1]
    dirs = fibonacci_hemisphere(normals, n_samples)                                    # [N, S, 3]
    basis = _sh9(dirs)                                                                  # [N, S, 9]
    env = (basis @ env_sh.to(basis.dtype)).clamp_min(0.0)                               # [N, S, 3]
    local = torch.einsum("nsk,nkc->nsc", basis, local_sh).clamp_min(0.0)
    light = local + env * visibility[..., None]
    n = normals / normals.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    v = viewdirs / viewdirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    cos_in = (n[:, None] * dirs).sum(-1, keepdim=True).clamp_min(0.0)                  # the transport's n.w
    n_v_raw = (n * v).sum(-1, keepdim=True)
    nf = n * torch.where(n_v_raw >= 0, torch.ones_like(n_v_raw), -torch.ones_like(n_v_raw))
    h = dirs + v[:, None]
    h = h / h.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    n_l = (nf[:, None] * dirs).sum(-1, keepdim=True).clamp(1e-6, 1.0)
    n_v = (nf * v).sum(-1, keepdim=True).clamp(1e-6, 1.0)[:, None]
    n_h = (nf[:, None] * h).sum(-1, keepdim=True).clamp(1e-6, 1.0)
    v_h = (v[:, None] * h).sum(-1, keepdim=True).clamp(1e-6, 1.0)
    r = roughness[:, None, None]
    a = r * r
    a2 = a * a
    k = (a + 2 * r + 1.0) / 8.0
    fresnel = 0.04 + 0.96 * torch.pow(2.0, (-5.55473 * v_h - 6.98316) * v_h)
    nom0 = n_h * n_h * (a2 - 1) + 1
    denom = (4 * math.pi * nom0 * nom0 * (n_v * (1 - k) + k) * (n_l * (1 - k) + k)).clamp(1e-6, 4 * math.pi)
    f_s = fresnel * a2 / denom
    f_d = base_color[:, None] / math.pi
    return ((f_d + f_s) * light * (2 * math.pi) * cos_in).mean(1)


# ------------------------------------------------------------------ GI-GS: screen-space indirect diffuse

def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    """CUDA's roundf: halves away from zero (torch.round sends them to the even neighbour)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def indirect_diffuse(pos: torch.Tensor, normal: torch.Tensor, rgb: torch.Tensor, albedo: torch.Tensor,
                     metallic: torch.Tensor, f0: torch.Tensor, fx: float, fy: float, radius: float = 0.8,
                     bias: float = 0.01, thick: float = 0.05, delta: float = 0.0625, steps: int = 16,
                     start: int = 8) -> torch.Tensor:
    """GI-GS's screen-space indirect diffuse [H, W, 3] from a G-buffer in view space.

    ``pos`` [H, W, 3] view-space points, ``normal`` [H, W, 3], ``rgb`` [H, W, 3] the direct
    pass, ``albedo`` [H, W, 3], ``metallic`` [H, W], ``f0`` [H, W, 3]. As the reference's
    ``SSRCUDA``: a hemisphere grid around the normal (tangent from the up vector (0, 1, 0)),
    phi in steps of ``delta * pi`` over [0, 2 pi), theta in steps of ``delta * pi / 2`` over
    [0, pi / 2]; along each direction, marching steps ``start .. steps - 1`` of length
    ``(1 + z / 100)^2 * radius / steps``, projected with the image centre as principal point
    and rounded; the first step whose buffer depth lies in [z - thick, z + bias] is a hit and
    adds that pixel's ``rgb * cos(theta) sin(theta)``; a step off screen ends the direction.
    Then ``pi * sum / n_directions * kD * albedo`` with ``kD = (1 - F)(1 - metallic)``,
    ``F = F0 + (1 - F0) (1 - n.v)^5``. (The reference steps theta by float accumulation; here
    the grid is by index, theta_i = i * delta * pi / 2 for i = 0 .. 1 / delta.)
    """
    h, w = pos.shape[:2]
    dtype, device = pos.dtype, pos.device
    n = normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=dtype, device=device)
    t = up - n * (n * up).sum(-1, keepdim=True)
    t = t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    b = torch.linalg.cross(n, t)
    b = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    v = -pos / pos.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    cos_v = (n * v).sum(-1, keepdim=True).clamp_min(1e-7)
    fresnel = f0 + (1 - f0) * (1 - cos_v).clamp(1e-6, 1.0) ** 5
    k_d = (1 - fresnel) * (1 - metallic[..., None])
    depth = pos[..., 2]
    scale = (1 + depth / 100) ** 2 * radius / steps                                    # [H, W]
    cx, cy = w / 2.0, h / 2.0
    total = torch.zeros(h, w, 3, dtype=dtype, device=device)
    n_phi = math.ceil(2.0 / delta - 1e-9)
    n_theta = int(round(0.5 / (delta * 0.5))) + 1
    count = 0
    for i in range(n_phi):
        phi = i * delta * math.pi
        for j in range(n_theta):
            theta = j * delta * 0.5 * math.pi
            local = (math.sin(theta) * math.cos(phi), math.sin(theta) * math.sin(phi), math.cos(theta))
            direction = local[0] * t + local[1] * b + local[2] * n                      # [H, W, 3]
            weight = math.cos(theta) * math.sin(theta)
            count += 1
            alive = torch.ones(h, w, dtype=torch.bool, device=device)                 # still marching
            for s in range(start, steps):
                p = pos + direction * (s * scale)[..., None]
                px = _round_half_away(p[..., 0] / (p[..., 2] + 1e-7) * fx + cx)
                py = _round_half_away(p[..., 1] / (p[..., 2] + 1e-7) * fy + cy)
                alive = alive & (px >= 0) & (px <= w - 1) & (py >= 0) & (py <= h - 1)
                ix = px.clamp(0, w - 1).long()
                iy = py.clamp(0, h - 1).long()
                sample_depth = depth[iy, ix]
                hit = alive & (sample_depth <= p[..., 2] + bias) & (sample_depth >= p[..., 2] - thick)
                total = total + torch.where(hit[..., None], rgb[iy, ix] * weight, torch.zeros_like(total))
                alive = alive & ~hit
    return math.pi * total / count * k_d * albedo


# ------------------------------------------------------------------ Gabor primitives

def _ewa_map(means_cam: torch.Tensor, view_rot: torch.Tensor, fx: float, fy: float, lim_x: float, lim_y: float):
    """T = J W [N, 2, 3]: the local affine map from world offsets to pixel offsets (chapter 06's EWA)."""
    x, y, z = means_cam.unbind(-1)
    tx = (x / z).clamp(-lim_x, lim_x) * z
    ty = (y / z).clamp(-lim_y, lim_y) * z
    zero = torch.zeros_like(z)
    jac = torch.stack([fx / z, zero, -fx * tx / (z * z), zero, fy / z, -fy * ty / (z * z)], -1).reshape(-1, 2, 3)
    return jac @ view_rot


def project_frequencies(cov3: torch.Tensor, affine: torch.Tensor, freqs: torch.Tensor):
    """Screen frequencies [N, K, 2] and attenuations [N, K] of world frequencies ``freqs`` [N, K, 3].

    For x ~ N(0, Sigma) and u = T x (T the local affine map), integrating
    ``N(x) cos(2 pi f . x)`` along the ray (the line of x with T x = u) gives the 2D Gaussian
    times ``a cos(2 pi f2 . u)``, with the conditional mean E[x | u] = Sigma T^T S2^-1 u
    (S2 = T Sigma T^T) and the conditional covariance C = Sigma - Sigma T^T S2^-1 T Sigma::

        f2 = S2^-1 T Sigma f,        a = exp(-2 pi^2 f^T C f)
    """
    s2 = affine @ cov3 @ affine.transpose(-1, -2)
    gain = cov3 @ affine.transpose(-1, -2) @ torch.linalg.inv(s2)                 # [N, 3, 2]
    f2 = freqs @ gain                                                               # [N, K, 2]
    cond = cov3 - gain @ affine @ cov3
    quad = torch.einsum("nki,nij,nkj->nk", freqs, cond, freqs)
    return f2, torch.exp(-2 * math.pi ** 2 * quad.clamp_min(0.0))


def gabor_setup(means: torch.Tensor, cov3: torch.Tensor, freqs: torch.Tensor, weights: torch.Tensor,
                opacities: torch.Tensor, camera):
    """The Gabor footprint's table [N, 12] (:data:`.footprints.GABOR`) and chapter 06's projection.

    A Gabor primitive is a 3D Gaussian envelope times ``1 - sum_k w_k + sum_k w_k cos(2 pi f_k . (x - mu))``
    (2 world frequencies ``freqs`` [N, 2, 3], weights ``weights`` [N, 2] in [0, 1], their sum at
    most 1): this chapter's form of 3DGabSplat's Gaussian-times-cosines kernels (arXiv:2508.05343),
    chosen so that zero frequencies give back the Gaussian. Each frequency is projected through
    the covariance's local affine map (:func:`project_frequencies`). Returns (params, Projection).
    """
    view = camera.viewmat.to(device=means.device, dtype=means.dtype)
    proj = project_covariances(means, cov3, camera)
    cam = means @ view[:3, :3].T + view[:3, 3]
    z = cam[:, 2]
    cam = torch.stack([cam[:, 0], cam[:, 1], torch.where(z > camera.near, z, torch.ones_like(z))], -1)
    affine = _ewa_map(cam, view[:3, :3], camera.fx, camera.fy, FOV_CLAMP * camera.tan_fovx,
                      FOV_CLAMP * camera.tan_fovy)
    f2, atten = project_frequencies(cov3, affine, freqs)
    alive = (proj.radii > 0)[:, None]
    cols = [proj.means2d, proj.conics, opacities[:, None]]
    for k in range(freqs.shape[1]):
        cols += [f2[:, k], (weights[:, k] * atten[:, k])[:, None]]
    params = torch.cat(cols, -1)
    return torch.where(alive, params, torch.zeros_like(params)).contiguous(), proj
