"""Meshes in the volume (Dynamic Mesh-Aware Radiance Fields): the field is marched only up to
the surface, a mirror continues the ray with beta updated, a diffuse surface gets its shadow
ray's light, refraction follows Snell's law, sRGB only at the end."""
import math

import torch

import gpulab  # noqa: F401
from gpulab.nerf import fields, mesh_volume as MV

BLOB = fields.BlobScene((fields.GaussianBlob((0.0, 0.0, -1.0), 0.2, 3.0, (2.0, 0.5, 0.1)),
                         fields.GaussianBlob((0.0, 0.0, 1.0), 0.2, 3.0, (0.1, 0.5, 2.0))))
EMPTY = fields.BlobScene((fields.GaussianBlob((9.0, 9.0, 9.0), 0.01, 0.0),))


def test_without_a_mesh_it_is_the_volume_render_and_a_surface_stops_the_march():
    o = torch.tensor([[0.0, 0.0, -3.0], [0.05, 0.0, -3.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    plain, _ = MV.render_bounces(BLOB, None, o, d, bounces=2)
    direct, _ = MV.march_segment(BLOB, o, d, torch.full((2,), math.inf), 0.01, 6.0)
    torch.testing.assert_close(plain, direct)
    assert plain[:, 2].min() > 0.3                                     # the blue blob behind counts
    wall = MV.Mesh(MV.quad((-1, -1, 0.0), (2, 0, 0), (0, 2, 0)), "diffuse", albedo=(0.0, 0.0, 0.0))
    stopped, beta = MV.render_bounces(BLOB, wall, o, d, bounces=0)
    front, _ = MV.march_segment(BLOB, o, d, torch.full((2,), 3.0), 0.01, 6.0)
    torch.testing.assert_close(stopped, front)                         # only the red blob, in front of the wall
    assert stopped[:, 2].max() < 0.1 and (beta == 0).all()


def test_a_perfect_mirror_continues_the_ray():
    mirror = MV.Mesh(MV.quad((-1, 1, 0.0), (2, 0, 0), (0, -2, 0)), "mirror", reflectance=1.0)   # the plane z = 0
    o = torch.tensor([[0.0, 0.0, -3.0]])
    d = torch.tensor([[0.0, 0.0, 1.0]])
    seen, _ = MV.render_bounces(BLOB, mirror, o, d, bounces=1)
    first, t_first = MV.march_segment(BLOB, o, d, torch.tensor([3.0]), 0.01, 6.0)
    back, _ = MV.march_segment(BLOB, torch.tensor([[0.0, 0.0, -1e-3]]), -d, torch.tensor([math.inf]), 0.01, 6.0)
    torch.testing.assert_close(seen, first + t_first[:, None] * back, atol=2e-2, rtol=0)
    half = MV.Mesh(mirror.triangles, "mirror", reflectance=0.5)
    seen_half, _ = MV.render_bounces(BLOB, half, o, d, bounces=1)
    torch.testing.assert_close(seen_half - first, 0.5 * (seen - first), atol=1e-2, rtol=0)


def test_diffuse_surface_gets_its_shadow_ray():
    floor = MV.Mesh(MV.quad((-2, 0.0, -2), (0, 0, 4), (4, 0, 0)), "diffuse", albedo=(0.5, 0.5, 0.5))   # y = 0
    light = MV._Light(position=(0.0, 2.0, 0.0), intensity=4.0)
    o, d = torch.tensor([[0.0, 1.0, -1.0]]), torch.nn.functional.normalize(torch.tensor([[0.0, -1.0, 1.0]]), dim=1)
    lit, _ = MV.render_bounces(EMPTY, floor, o, d, bounces=1, light=light)
    # the hit is (0, 0, 0), straight under the light: albedo / pi * cos 0 * I / r^2
    torch.testing.assert_close(lit, torch.full((1, 3), 0.5 / math.pi * 4.0 / 4.0), atol=1e-4, rtol=0)
    blocker = MV.Mesh(torch.cat([floor.triangles, MV.quad((-0.5, 1.0, -0.5), (1, 0, 0), (0, 0, 1))]), "diffuse",
                      albedo=(0.5, 0.5, 0.5))
    dark, _ = MV.render_bounces(EMPTY, blocker, o, d, bounces=1, light=light)
    assert dark.abs().max() < 1e-6                                       # in the shadow
    foggy, _ = MV.render_bounces(fields.BlobScene((fields.GaussianBlob((0.0, 1.0, 0.0), 0.2, 10.0, (0.0, 0.0, 0.0)),)),
                                 floor, o, d, bounces=1, light=light)
    assert 0 < foggy[0, 0] < lit[0, 0]                                   # the field dims the shadow ray


def test_refraction_follows_snell_and_srgb_is_last():
    d = torch.nn.functional.normalize(torch.tensor([[math.sin(0.5), 0.0, -math.cos(0.5)]]), dim=1)
    n = torch.tensor([[0.0, 0.0, 1.0]])
    out = MV._refract(d, n, 1.5)
    assert abs(math.sin(0.5) / float(out[0, 0]) - 1.5) < 1e-4            # sin i = 1.5 sin r
    grazing = torch.nn.functional.normalize(torch.tensor([[0.9, 0.0, 0.3]]), dim=1)   # inside, past the critical angle
    torch.testing.assert_close(MV._refract(grazing, n, 1.5), MV._reflect(grazing, -n))
    x = torch.tensor([0.0, 0.0031308, 0.5, 1.0, 3.0])
    torch.testing.assert_close(MV.linear_to_srgb(x), torch.tensor([0.0, 0.040449936, 0.735357, 1.0, 1.0]), atol=1e-5, rtol=0)
