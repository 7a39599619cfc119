"""Whole frames of chapter 07's primitives: setup (this chapter) + chapter 06's back half.

    out = render_4d(scene4d, camera, t)                        # a dynamic scene at time t
    out = render_triangles(verts, colours, sigmas, opacities, camera)
    out = render_convexes(points, colours, deltas, sigmas, opacities, camera)
    gbuf, alpha = resolve_gbuffer(*render_gbuffer(scene, camera, albedo, roughness, metallic)[:2])
    rgb = backend.shade_pbr(gbuf, alpha, light_dir, light_rgb, camera.fx, camera.fy, camera.cx, camera.cy)

``backend`` is "torch" (the specification, differentiable), "numba" (the kernels) or "auto"
(numba on a GPU). Only the setup differs per primitive; binning, sorting and compositing are
:func:`gpulab.splat.rasterize` with the primitive's :class:`~gpulab.splat.Footprint`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import kernels as ch06_kernels
from .. import torch_impl as ch06_torch
from ..footprints import GAUSSIAN, gaussian_params
from ..render import Gaussians, backend_module, rasterize
from ..render import render as render_3dgs
from ..torch_impl import quat_to_rotmat
from . import kernels, torch_impl
from .footprints import CONVEX, GABOR, TRIANGLE

__all__ = ["Gaussians4D", "Frame", "stages_for", "project_points", "render_4d", "render_triangles",
           "render_convexes", "gbuffer_features", "render_gbuffer", "resolve_gbuffer", "MeshGaussians", "toy_cylinder",
           "attach_random", "render_mesh_gaussians", "gaussian_normals", "relit_colours", "corner_gbuffer",
           "render_gabors"]


@dataclass
class Gaussians4D:
    """N space-time Gaussians: means (x, y, z, t) [N, 4], covariances [N, 4, 4], opacities [N], colours [N, C]."""
    means4: torch.Tensor
    cov4: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor

    def __post_init__(self):
        n = self.means4.shape[0] if self.means4.dim() == 2 else -1
        for name, want in (("means4", (n, 4)), ("cov4", (n, 4, 4)), ("opacities", (n,))):
            got = tuple(getattr(self, name).shape)
            if got != want:
                raise ValueError(f"Gaussians4D.{name} must have shape {want}, got {got}")
        if self.colors.dim() != 2 or self.colors.shape[0] != n:
            raise ValueError(f"Gaussians4D.colors must have shape [N, C], got {tuple(self.colors.shape)}")

    def __len__(self) -> int:
        return self.means4.shape[0]


@dataclass
class Frame:
    """What a render returns: the image [H, W, C], the transmittance [H, W] and the table used."""
    image: torch.Tensor
    transmittance: torch.Tensor
    params: torch.Tensor
    means2d: torch.Tensor
    radii: torch.Tensor
    ranges: torch.Tensor
    backend: str


def stages_for(backend: str):
    """(this chapter's setup module, the backend name rasterize gets) for ``backend``."""
    module = backend_module(backend)                        # validates the name
    if module is ch06_kernels:
        return kernels, "numba"
    return torch_impl, "torch"


def _refuse_grad_on_numba(name: str, what: str, *tensors) -> None:
    """The numba setup kernels have no backward pass: say so instead of dropping the gradient."""
    if name == "numba" and torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad
                                                           for t in tensors):
        raise RuntimeError(f"{what}: the numba setup kernels have no backward pass; train on backend='torch', "
                           "or render under torch.no_grad()")


def project_points(points: torch.Tensor, camera):
    """Pixel coordinates [..., 2] and view depths [...] of world points [..., 3] (pinhole)."""
    view = camera.viewmat.to(device=points.device, dtype=points.dtype)
    p = points @ view[:3, :3].T + view[:3, 3]
    z = p[..., 2]
    z_safe = torch.where(z > 1e-6, z, torch.ones_like(z))
    xy = torch.stack([camera.fx * p[..., 0] / z_safe + camera.cx, camera.fy * p[..., 1] / z_safe + camera.cy], -1)
    return xy, z


def _frame(params, features, means2d, radii, depths, camera, footprint, name, background):
    image, trans, (_, _, ranges) = rasterize(params, features, means2d, radii, depths, camera.width, camera.height,
                                             background, footprint, name)
    return Frame(image, trans, params, means2d, radii, ranges, name)


def render_4d(scene: Gaussians4D, camera, t: float, backend: str = "auto", background=None) -> Frame:
    """Slice the space-time Gaussians at time ``t``, project, bin and composite (Gaussian footprint)."""
    if not isinstance(scene, Gaussians4D):
        raise TypeError(f"render_4d takes a Gaussians4D scene, got {type(scene).__name__}")
    stages, name = stages_for(backend)
    _refuse_grad_on_numba(name, "render_4d", scene.means4, scene.cov4, scene.opacities, scene.colors)
    means3, cov3, opacities_t = stages.slice_4d(scene.means4, scene.cov4, scene.opacities, t)
    proj = stages.project_covariances(means3, cov3, camera)
    ch06 = ch06_kernels if name == "numba" else ch06_torch
    extents = ch06.tile_extents(proj.conics.detach(), opacities_t.detach(), proj.radii)
    params = gaussian_params(proj.means2d, proj.conics, opacities_t)
    return _frame(params, scene.colors, proj.means2d, extents, proj.depths, camera, GAUSSIAN, name, background)


def render_gabors(means: torch.Tensor, cov3: torch.Tensor, freqs: torch.Tensor, weights: torch.Tensor,
                  opacities: torch.Tensor, colors: torch.Tensor, camera, backend: str = "auto",
                  background=None) -> Frame:
    """Render Gabor primitives (a 3D Gaussian envelope times weighted cosines; torch_impl.gabor_setup)."""
    stages, name = stages_for(backend)
    _refuse_grad_on_numba(name, "render_gabors", means, cov3, freqs, weights, opacities, colors)
    params, proj = stages.gabor_setup(means, cov3, freqs, weights, opacities, camera)
    ch06 = ch06_kernels if name == "numba" else ch06_torch
    extents = ch06.tile_extents(proj.conics.detach(), opacities.detach(), proj.radii)
    return _frame(params, colors, proj.means2d, extents, proj.depths, camera, GABOR, name, background)


def _visible_depths(z: torch.Tensor, camera):
    """Each primitive's sort depth (the mean of its points') and whether all its points are in front."""
    return z.mean(-1), (z > camera.near).all(-1)


def render_triangles(verts: torch.Tensor, colors: torch.Tensor, sigmas: torch.Tensor, opacities: torch.Tensor,
                     camera, backend: str = "auto", background=None) -> Frame:
    """Render world-space triangles ``verts`` [N, 3, 3] with Triangle Splatting's window."""
    if verts.dim() != 3 or verts.shape[1:] != (3, 3):
        raise ValueError(f"render_triangles: verts must have shape [N, 3, 3], got {list(verts.shape)}")
    stages, name = stages_for(backend)
    _refuse_grad_on_numba(name, "render_triangles", verts, colors, sigmas, opacities)
    xy, z = project_points(verts, camera)
    depths, in_front = _visible_depths(z, camera)
    params, means2d, radii = stages.triangle_setup(xy.contiguous(), sigmas, opacities, camera.width, camera.height)
    radii = torch.where(in_front[:, None], radii, torch.zeros_like(radii))
    return _frame(params, colors, means2d, radii, depths, camera, TRIANGLE, name, background)


def render_convexes(points: torch.Tensor, colors: torch.Tensor, deltas: torch.Tensor, sigmas: torch.Tensor,
                    opacities: torch.Tensor, camera, backend: str = "auto", background=None) -> Frame:
    """Render world-space smooth convexes (``points`` [N, K <= 8, 3]) with 3D Convex Splatting's window."""
    if points.dim() != 3 or points.shape[2] != 3:
        raise ValueError(f"render_convexes: points must have shape [N, K, 3], got {list(points.shape)}")
    stages, name = stages_for(backend)
    _refuse_grad_on_numba(name, "render_convexes", points, colors, deltas, sigmas, opacities)
    xy, z = project_points(points, camera)
    centre_xy, centre_z = project_points(points.mean(1), camera)
    _, in_front = _visible_depths(z, camera)
    params, means2d, radii = stages.convex_setup(xy.contiguous(), centre_z.contiguous(), deltas, sigmas, opacities,
                                                 camera.width, camera.height)
    radii = torch.where(in_front[:, None], radii, torch.zeros_like(radii))
    return _frame(params, colors, means2d, radii, centre_z, camera, CONVEX, name, background)


# ------------------------------------------------------------------ G-buffer

def gbuffer_features(depths, normals, albedo, roughness, metallic) -> torch.Tensor:
    """Per-primitive G-buffer channels [N, 9]: depth, normal (3), albedo (3), roughness, metallic."""
    return torch.cat([depths[:, None], normals, albedo, roughness[:, None], metallic[:, None]], -1).contiguous()


def corner_gbuffer(height: int, width: int, focal: float, generator: torch.Generator | None = None):
    """A view-space G-buffer of a floor meeting a back wall (where indirect light bounces):
    (pos [H, W, 3], normal [H, W, 3], albedo [H, W, 3], metallic [H, W]); y points down."""
    g = generator or torch.Generator().manual_seed(0)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    ray = torch.stack([(xs - width / 2) / focal, (ys - height / 2) / focal, torch.ones_like(xs)], -1)
    wall_t = 2.0 / ray[..., 2]
    floor_t = torch.where(ray[..., 1] > 1e-6, 0.5 / ray[..., 1].clamp_min(1e-6), torch.full_like(xs, 1e9))
    on_floor = floor_t < wall_t
    pos = ray * torch.where(on_floor, floor_t, wall_t)[..., None]
    normal = torch.where(on_floor[..., None], torch.tensor([0.0, -1.0, 0.0]), torch.tensor([0.0, 0.0, -1.0]))
    albedo = torch.where(on_floor[..., None], torch.tensor([0.8, 0.8, 0.75]), torch.tensor([0.9, 0.25, 0.2]))
    albedo = (albedo * (0.9 + 0.1 * torch.rand(height, width, 1, generator=g))).contiguous()
    return pos.contiguous(), normal.contiguous(), albedo, torch.zeros(height, width)


def gaussian_normals(scene: Gaussians) -> torch.Tensor:
    """[N, 3] world normals: each Gaussian's shortest axis (the rotation's column of its smallest scale)."""
    rot = quat_to_rotmat(scene.quats)
    axis = torch.argmin(scene.scales, -1)
    return torch.gather(rot, 2, axis[:, None, None].expand(-1, 3, 1))[..., 0]


def relit_colours(scene: Gaussians, camera, base_color: torch.Tensor, roughness: torch.Tensor, env_sh: torch.Tensor,
                  visibility: torch.Tensor | None = None, local_sh: torch.Tensor | None = None, n_samples: int = 64,
                  backend: str = "auto") -> torch.Tensor:
    """Per-Gaussian colours [N, 3] under an environment (Relightable 3D Gaussians' rendering equation).

    Normals face the camera; visibility defaults to 1 (chapter 10 bakes it by ray casting),
    the local light to 0.
    """
    stages, name = stages_for(backend)
    _refuse_grad_on_numba(name, "relit_colours", scene.means, scene.quats, scene.scales, base_color, roughness, env_sh,
                          visibility, local_sh)
    n = len(scene)
    normal = gaussian_normals(scene)
    to_cam = camera.position.to(scene.means) - scene.means
    normal = torch.where(((normal * to_cam).sum(-1) < 0)[:, None], -normal, normal).contiguous()
    if visibility is None:
        visibility = torch.ones(n, n_samples, dtype=scene.means.dtype, device=scene.means.device)
    if local_sh is None:
        local_sh = torch.zeros(n, 9, 3, dtype=scene.means.dtype, device=scene.means.device)
    return stages.relight(normal, base_color.contiguous(), roughness.contiguous(), to_cam.contiguous(),
                          visibility.contiguous(), env_sh.contiguous(), local_sh.contiguous())


def render_gbuffer(scene: Gaussians, camera, albedo: torch.Tensor, roughness: torch.Tensor, metallic: torch.Tensor,
                   backend: str = "auto"):
    """Composite a Gaussian scene's G-buffer (GI-GS's deferred pass): (channels [H, W, 9], transmittance).

    Each Gaussian's normal is its shortest axis (the rotation's column of the smallest scale),
    turned to face the camera, in camera space; its depth is its view-space z.
    """
    normal = gaussian_normals(scene)
    view = camera.viewmat.to(device=scene.means.device, dtype=scene.means.dtype)
    normal_cam = normal @ view[:3, :3].T
    cam_pos = scene.means @ view[:3, :3].T + view[:3, 3]
    facing = torch.where(((normal_cam * cam_pos).sum(-1) > 0)[:, None], -normal_cam, normal_cam)
    features = gbuffer_features(cam_pos[:, 2], facing, albedo, roughness, metallic)
    out = render_3dgs(scene, camera, backend=backend, features=features)
    return out.image, out.transmittance


def resolve_gbuffer(channels: torch.Tensor, transmittance: torch.Tensor, eps: float = 1e-4):
    """Un-premultiply the composited channels and renormalise the normal: (gbuffer [H, W, 9], alpha [H, W]).

    Compositing sums ``weight * value``; dividing by the coverage ``alpha = 1 - T`` gives the
    weighted mean (pixels with alpha < eps get zeros and alpha 0).
    """
    alpha = 1.0 - transmittance
    covered = alpha > eps
    mean = channels / torch.where(covered, alpha, torch.ones_like(alpha))[..., None]
    normal = mean[..., 1:4]
    normal = normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    gbuf = torch.cat([mean[..., :1], normal, mean[..., 4:]], -1)
    gbuf = torch.where(covered[..., None], gbuf, torch.zeros_like(gbuf))
    return gbuf.contiguous(), torch.where(covered, alpha, torch.zeros_like(alpha)).contiguous()


# ------------------------------------------------------------------ mesh-attached Gaussians

@dataclass
class MeshGaussians:
    """N Gaussians attached to a mesh's triangles (HRM²Avatar's binding; see torch_impl.mesh_gaussians)."""
    tri_ids: torch.Tensor      # [N] int32
    barys: torch.Tensor        # [N, 3] barycentric coordinates (sum 1)
    offsets: torch.Tensor      # [N] along the triangle's normal
    local_rot: torch.Tensor    # [N, 3, 3] rotation in the triangle's frame
    scales: torch.Tensor       # [N, 3] standard deviations in that frame
    opacities: torch.Tensor    # [N]
    colors: torch.Tensor       # [N, C]

    def to(self, device) -> "MeshGaussians":
        return MeshGaussians(*(getattr(self, f).to(device) for f in
                               ("tri_ids", "barys", "offsets", "local_rot", "scales", "opacities", "colors")))


def toy_cylinder(rings: int = 6, segments: int = 10, radius: float = 0.35, height: float = 1.4):
    """A closed-side cylinder mesh along z (centred at 0): (verts [V, 3], faces [F, 3] int32)."""
    z = torch.linspace(-height / 2, height / 2, rings)
    a = torch.arange(segments) * (2 * torch.pi / segments)
    verts = torch.stack([radius * torch.cos(a)[None].expand(rings, -1), radius * torch.sin(a)[None].expand(rings, -1),
                         z[:, None].expand(-1, segments)], -1).reshape(-1, 3)
    faces = []
    for r in range(rings - 1):
        for s in range(segments):
            p, q = r * segments + s, r * segments + (s + 1) % segments
            faces += [[p, q, q + segments], [p, q + segments, p + segments]]
    return verts, torch.tensor(faces, dtype=torch.int32)


def attach_random(faces: torch.Tensor, n: int, generator: torch.Generator, scale: float = 0.05) -> MeshGaussians:
    """``n`` Gaussians at random places of random triangles, flat along the normal, coloured by triangle."""
    tri = torch.randint(0, faces.shape[0], (n,), generator=generator, dtype=torch.int32)
    b = torch.rand(n, 3, generator=generator)
    b = b / b.sum(-1, keepdim=True)
    rot = quat_to_rotmat(torch.cat([torch.ones(n, 1), torch.zeros(n, 2), 0.3 * torch.randn(n, 1, generator=generator)],
                                   -1))
    scales = torch.stack([torch.full((n,), scale), torch.full((n,), scale), torch.full((n,), scale * 0.2)], -1)
    hue = tri.float() / faces.shape[0]
    colours = torch.stack([0.5 + 0.5 * torch.cos(6.28 * hue), 0.5 + 0.5 * torch.cos(6.28 * (hue + 0.33)),
                           0.5 + 0.5 * torch.cos(6.28 * (hue + 0.66))], -1)
    return MeshGaussians(tri, b, torch.zeros(n), rot, scales, torch.full((n,), 0.9), colours)


def render_mesh_gaussians(verts: torch.Tensor, faces: torch.Tensor, attached: MeshGaussians, camera,
                          backend: str = "auto", background=None) -> Frame:
    """Rebuild the attached Gaussians from the (deformed) mesh ``verts`` and render them."""
    stages, name = stages_for(backend)
    _refuse_grad_on_numba(name, "render_mesh_gaussians", verts, attached.barys, attached.offsets, attached.local_rot,
                          attached.scales, attached.opacities, attached.colors)
    means, cov3 = stages.mesh_gaussians(verts, faces, attached.tri_ids, attached.barys, attached.offsets,
                                        attached.local_rot, attached.scales)
    proj = stages.project_covariances(means, cov3, camera)
    ch06 = ch06_kernels if name == "numba" else ch06_torch
    extents = ch06.tile_extents(proj.conics.detach(), attached.opacities, proj.radii)
    params = gaussian_params(proj.means2d, proj.conics, attached.opacities)
    return _frame(params, attached.colors, proj.means2d, extents, proj.depths, camera, GAUSSIAN, name, background)
