"""Meshes inside a radiance field, path traced (Dynamic Mesh-Aware Radiance Fields, Qiao et
al., ICCV 2023, arXiv:2309.04581), in torch with a brute-force mesh intersection (chapter
10's BVH would replace it).

Per bounce of every ray (its throughput beta starts at 1, its radiance L at 0):

1. intersect the mesh: the nearest hit t_hit (or none);
2. march the field only up to t_hit (or the far plane), with the chapter's packed-ray steps:
   ``L += beta * sum_i w_i c_i`` and ``beta *= T(t_hit)``, the field's transmittance up to
   the surface;
3. no hit: stop (the field was the last thing the ray saw). A hit: the surface's material
   decides: ``mirror`` reflects (beta *= reflectance); ``glass`` refracts by Snell's law
   with the index of refraction (total internal reflection reflects); ``diffuse`` adds the
   light it receives directly, a shadow ray to a point light whose transmittance through the
   field (and the mesh: blocked or not) scales it, ``L += beta * albedo / pi * cos * I / r^2 * T_shadow``,
   then scatters into a cosine-distributed direction with beta *= albedo.

The field's colours are LINEAR radiance (the paper trains its NeRF on HDR images for this):
the path tracer adds and multiplies light, and :func:`linear_to_srgb` is applied only to the
final image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from . import torch_impl as T
from .packing import pack_info

__all__ = ["Mesh", "icosphere", "quad", "intersect", "march_segment", "linear_to_srgb", "render_bounces",
           "MATERIALS"]

MATERIALS = ("mirror", "glass", "diffuse")
_EPS = 1e-4


@dataclass
class Mesh:
    """Triangles ``[F, 3, 3]`` (counter-clockwise seen from outside) and one material for all."""
    triangles: torch.Tensor
    material: str = "mirror"
    reflectance: float = 0.9        # mirror
    ior: float = 1.5                # glass
    albedo: tuple = (0.8, 0.8, 0.8)  # diffuse

    def __post_init__(self):
        if self.material not in MATERIALS:
            raise ValueError(f"material must be one of {MATERIALS}, got {self.material!r}")
        if self.triangles.dim() != 3 or self.triangles.shape[1:] != (3, 3):
            raise ValueError(f"triangles must be [F, 3, 3], got {list(self.triangles.shape)}")


def icosphere(subdivisions: int = 1, centre=(0.0, 0.0, 0.0), radius: float = 0.3, device=None) -> torch.Tensor:
    """Triangles of a sphere: an icosahedron, each face split in 4 ``subdivisions`` times."""
    p = (1 + math.sqrt(5)) / 2
    v = torch.tensor([[-1, p, 0], [1, p, 0], [-1, -p, 0], [1, -p, 0], [0, -1, p], [0, 1, p], [0, -1, -p], [0, 1, -p],
                      [p, 0, -1], [p, 0, 1], [-p, 0, -1], [-p, 0, 1]], dtype=torch.float32)
    f = [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2], [10, 7, 6],
         [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7],
         [9, 8, 1]]
    tris = torch.nn.functional.normalize(v, dim=1)[torch.tensor(f)]
    for _ in range(subdivisions):
        a, b, c = tris[:, 0], tris[:, 1], tris[:, 2]
        ab, bc, ca = (torch.nn.functional.normalize(x, dim=1) for x in ((a + b) / 2, (b + c) / 2, (c + a) / 2))
        tris = torch.cat([torch.stack(t, 1) for t in ((a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca))])
    return (tris * radius + torch.tensor(centre, dtype=torch.float32)).to(device or "cpu")


def quad(corner, edge_u, edge_v, device=None) -> torch.Tensor:
    """Two triangles of the parallelogram corner + [0, 1] edge_u + [0, 1] edge_v."""
    c, u, v = (torch.tensor(x, dtype=torch.float32) for x in (corner, edge_u, edge_v))
    return torch.stack([torch.stack([c, c + u, c + u + v]), torch.stack([c, c + u + v, c + v])]).to(device or "cpu")


def intersect(origins: torch.Tensor, dirs: torch.Tensor, triangles: torch.Tensor):
    """Nearest hit of every ray with every triangle (Möller-Trumbore, brute force [N, F]).
    Returns ``(t, normal)``: t = inf where nothing is hit; the geometric normal (e1 x e2, unit)."""
    n = origins.shape[0]
    if triangles.shape[0] == 0:
        return torch.full((n,), math.inf, device=origins.device), torch.zeros(n, 3, device=origins.device)
    v0, e1, e2 = triangles[:, 0], triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0]
    p = torch.cross(dirs[:, None, :].expand(n, len(triangles), 3), e2[None].expand(n, -1, 3), dim=-1)
    det = (e1[None] * p).sum(-1)
    inv = 1.0 / torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
    s = origins[:, None, :] - v0[None]
    u = (s * p).sum(-1) * inv
    q = torch.cross(s, e1[None].expand(n, -1, 3), dim=-1)
    v = (dirs[:, None, :] * q).sum(-1) * inv
    t = (e2[None] * q).sum(-1) * inv
    hit = (det.abs() > 1e-12) & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > _EPS)
    t = torch.where(hit, t, torch.full_like(t, math.inf))
    t_best, which = t.min(dim=1)
    normals = torch.nn.functional.normalize(torch.cross(e1, e2, dim=-1), dim=-1)[which]
    return t_best, normals


def march_segment(field, origins, dirs, t_end, step: float, far: float):
    """The field between t = 0 and min(t_end, far) on unit-direction rays, uniform midpoint
    samples, the chapter's packed steps: returns ``(radiance [N, 3], transmittance [N])``."""
    length = torch.minimum(t_end, torch.full_like(t_end, far)).clamp(min=0)
    counts = torch.ceil(length / step).long()
    info = pack_info(counts)
    ray = torch.repeat_interleave(torch.arange(len(counts), device=origins.device), counts)
    k = torch.arange(int(counts.sum()), device=origins.device) - (info[:, 0])[ray]
    t0 = k.float() * step
    t1 = torch.minimum(t0 + step, length[ray])
    pts = origins[ray] + ((t0 + t1) / 2)[:, None] * dirs[ray]
    weights, trans, alphas = T.render_weight_from_density(t0, t1, field.density(pts), info)
    radiance = T.accumulate_along_rays(weights, field.rgb(pts), info)
    opacity = T.accumulate_along_rays(weights, torch.ones_like(weights)[:, None], info)[:, 0]
    return radiance, 1.0 - opacity


def linear_to_srgb(linear: torch.Tensor) -> torch.Tensor:
    """The sRGB transfer function (IEC 61966-2-1), on values clamped to [0, 1]."""
    x = linear.clamp(0.0, 1.0)
    return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp(min=0.0031308) ** (1 / 2.4) - 0.055)


def _reflect(d, n):
    return d - 2 * (d * n).sum(-1, keepdim=True) * n


def _refract(d, n, ior):
    """Snell's law at a surface with geometric normal n: entering when d . n < 0.
    Total internal reflection gives the reflected direction."""
    cos_i = (d * n).sum(-1, keepdim=True)
    entering = cos_i < 0
    eta = torch.where(entering, torch.full_like(cos_i, 1.0 / ior), torch.full_like(cos_i, ior))
    nn = torch.where(entering, n, -n)
    c = -(d * nn).sum(-1, keepdim=True)
    k = 1 - eta ** 2 * (1 - c ** 2)
    refracted = eta * d + (eta * c - torch.sqrt(k.clamp(min=0))) * nn
    return torch.where(k < 0, _reflect(d, nn), torch.nn.functional.normalize(refracted, dim=-1))


def _cosine_direction(n, gen):
    """A direction about normal n with pdf cos / pi."""
    u1, u2 = torch.rand(n.shape[0], generator=gen).to(n.device), torch.rand(n.shape[0], generator=gen).to(n.device)
    r, phi = torch.sqrt(u1), 2 * math.pi * u2
    helper = torch.where(n[:, :1].abs() < 0.9, torch.tensor([1.0, 0, 0], device=n.device), torch.tensor([0, 1.0, 0], device=n.device))
    a = torch.nn.functional.normalize(torch.cross(helper, n, dim=-1), dim=-1)
    b = torch.cross(n, a, dim=-1)
    return torch.nn.functional.normalize(a * (r * torch.cos(phi))[:, None] + b * (r * torch.sin(phi))[:, None]
                                         + n * torch.sqrt(1 - u1)[:, None], dim=-1)


@dataclass
class _Light:
    position: tuple = (1.5, 2.0, -1.0)
    intensity: float = 6.0


def render_bounces(field, mesh: Mesh | None, origins: torch.Tensor, dirs: torch.Tensor, bounces: int = 2,
                   step: float = 0.01, far: float = 6.0, light: _Light | None = None,
                   gen: torch.Generator | None = None):
    """Linear HDR radiance ``[N, 3]`` of unit-direction rays after up to ``bounces`` mesh
    bounces (0: the field up to the first surface, which is then black). Also returns the
    per-ray throughput left at the end."""
    light = light or _Light()
    gen = gen or torch.Generator().manual_seed(0)
    triangles = mesh.triangles.to(origins.device) if mesh is not None else torch.zeros(0, 3, 3, device=origins.device)
    o, d = origins.clone(), torch.nn.functional.normalize(dirs, dim=-1)
    beta = torch.ones(len(o), 3, device=o.device)
    radiance = torch.zeros(len(o), 3, device=o.device)
    alive = torch.ones(len(o), dtype=torch.bool, device=o.device)
    for bounce in range(bounces + 1):
        t_hit, normal = intersect(o, d, triangles)
        seg_radiance, seg_trans = march_segment(field, o, d, t_hit, step, far)
        radiance += torch.where(alive[:, None], beta * seg_radiance, torch.zeros_like(radiance))
        beta = beta * seg_trans[:, None]
        hit = alive & torch.isfinite(t_hit)
        alive = hit & (bounce < bounces)
        if not bool(alive.any()):
            beta = torch.where(hit[:, None], torch.zeros_like(beta), beta)   # surfaces not followed are black
            break
        p = o + torch.where(hit, t_hit, torch.zeros_like(t_hit))[:, None] * d
        if mesh.material == "mirror":
            new_d = _reflect(d, normal)
            beta = beta * mesh.reflectance
        elif mesh.material == "glass":
            new_d = _refract(d, normal, mesh.ior)
        else:
            n_facing = torch.where(((d * normal).sum(-1, keepdim=True) < 0), normal, -normal)
            albedo = torch.tensor(mesh.albedo, device=o.device)
            to_light = torch.tensor(light.position, device=o.device) - p
            dist = to_light.norm(dim=-1)
            l_dir = to_light / dist[:, None]
            shadow_o = p + n_facing * _EPS * 10
            blocked = intersect(shadow_o, l_dir, triangles)[0] < dist
            _, shadow_t = march_segment(field, shadow_o, l_dir, dist, step, far)
            cos = (n_facing * l_dir).sum(-1).clamp(min=0)
            direct = albedo / math.pi * (cos * light.intensity / dist ** 2 * shadow_t * (~blocked).float())[:, None]
            radiance += torch.where(alive[:, None], beta * direct, torch.zeros_like(radiance))
            new_d = _cosine_direction(n_facing, gen)
            beta = beta * albedo          # cosine sampling: the cos / pi of the BRDF and the pdf cancel
        o = torch.where(alive[:, None], p + new_d * _EPS * 10, o)
        d = torch.where(alive[:, None], new_d, d)
        beta = torch.where((hit & ~alive)[:, None], torch.zeros_like(beta), beta)
    return radiance, beta
