"""Chapter 08: NeRF sampling and volume rendering (RT-NeRF, Dynamic Mesh-Aware Radiance
Fields, KiloNeuS).

    from gpulab.nerf import torch_impl, kernels   # the rendering steps on packed rays, torch and numba
    from gpulab.nerf import packing               # packed_info / ray_indices
    from gpulab.nerf import fields                # analytic fields: boxes, Gaussian blobs, SDF spheres
    from gpulab.nerf import occgrid               # instant-ngp / nerfacc occupancy grid and grid marching
    from gpulab.nerf import neus                  # NeuS SDF-to-opacity and up-sampling (as KiloNeuS renders)
    from gpulab.nerf import rtnerf                # RT-NeRF cube-ordered rendering, bitmap vs coordinates
    from gpulab.nerf import mesh_volume           # meshes in the field, path traced (Dynamic Mesh-Aware Radiance Fields)

``torch_impl`` is the readable specification (nerfacc's ``volrend.py`` style: one public
function per step); ``kernels`` has the same functions as numba.cuda kernels. Chapter 09
plugs its neural fields into these samplers.
"""
from . import fields, kernels, mesh_volume, neus, occgrid, packing, rtnerf, torch_impl
from .packing import pack_dense, pack_info, ray_indices

__all__ = ["fields", "kernels", "mesh_volume", "neus", "occgrid", "packing", "rtnerf", "torch_impl",
           "pack_dense", "pack_info", "ray_indices"]
