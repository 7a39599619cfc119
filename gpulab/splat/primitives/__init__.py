"""Chapter 07: splatting primitives and shading, on chapter 06's rasterizer.

* 4D Gaussians sliced in time (4D Rotor Gaussian Splatting, arXiv:2402.03307; the
  two-quaternion 4DGS of arXiv:2310.10642): :func:`slice_4d` -> a 3D Gaussian + temporal opacity;
* triangles with Triangle Splatting's window (arXiv:2505.19175): :data:`TRIANGLE`;
* smooth convexes (3D Convex Splatting, arXiv:2411.14974): :data:`CONVEX`;
* Gabor primitives (after 3DGabSplat, arXiv:2508.05343): :data:`GABOR`, :func:`render_gabors`;
* a G-buffer composited as channels, direct PBR shading and the screen-space indirect diffuse pass
  (GI-GS, arXiv:2410.02619);
* relightable Gaussians (arXiv:2311.16043): 64 Fibonacci directions per normal, :func:`relit_colours`;
* Gaussians attached to a deforming mesh (HRM²Avatar, arXiv:2510.13587): :func:`render_mesh_gaussians`.

:mod:`.torch_impl` is the specification, :mod:`.kernels` its numba twin (same names and
signatures), :mod:`.footprints` the two new footprints, :mod:`.render` whole frames.
"""
from . import constants, fitting, footprints, kernels, render, torch_impl
from .footprints import (CONVEX, GABOR, TRIANGLE, convex_alpha, convex_alpha_device, gabor_alpha, triangle_alpha,
                         triangle_alpha_device)
from .render import (Frame, Gaussians4D, MeshGaussians, attach_random, corner_gbuffer, gaussian_normals,
                     gbuffer_features,
                     project_points, relit_colours, render_4d, render_gabors, render_convexes, render_gbuffer,
                     render_mesh_gaussians,
                     render_triangles, resolve_gbuffer, stages_for, toy_cylinder)
from .torch_impl import convex_hull, covariance_4d, plane_rotation_4d, rotation_4d, triangle_frames, twist

__all__ = ["constants", "fitting", "footprints", "kernels", "render", "torch_impl", "CONVEX", "TRIANGLE",
           "convex_alpha", "convex_alpha_device", "triangle_alpha", "triangle_alpha_device", "Frame", "Gaussians4D",
           "gbuffer_features", "project_points", "render_4d", "render_convexes", "render_gbuffer",
           "render_triangles", "resolve_gbuffer", "stages_for", "convex_hull", "covariance_4d",
           "plane_rotation_4d", "rotation_4d", "MeshGaussians", "attach_random", "render_mesh_gaussians",
           "toy_cylinder", "triangle_frames", "twist", "gaussian_normals", "relit_colours", "corner_gbuffer",
           "GABOR", "gabor_alpha", "render_gabors"]
