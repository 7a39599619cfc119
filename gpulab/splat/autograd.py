"""``torch.autograd.Function`` s around the numba stages, so the numba path trains.

    out = render(model.gaussians(), camera, backend="numba")   # builds a graph when inputs need grad
    loss = ((out.image - target) ** 2).mean(); loss.backward()

Two functions, the two differentiable stages of :func:`~gpulab.splat.render.render`:

* :class:`ProjectGaussians`: (means, quats, scales) -> (means2d, depths, conics, radii); its
  backward is :func:`~gpulab.splat.backward.project_gaussians_backward`.
* :class:`RasterizeGaussians`: (params [N, 6], features [N, C], background [C]) -> (image,
  transmittance), over the sorted tile lists of the forward pass; its backward is
  :func:`~gpulab.splat.backward.rasterize_tiles_backward`. The background's gradient is
  ``sum over pixels of T_final * dL/dcolour``, one torch reduction.

Binning, sorting and the tile ranges have no gradient (they only choose what is composited).
The colour stage (spherical harmonics) runs in torch when a gradient is needed: it is one
elementwise pass per Gaussian, and torch's autograd differentiates it.
"""
from __future__ import annotations

import torch

from . import backward as B
from . import kernels as K
from .footprints import GAUSSIAN
from .torch_impl import Projection

__all__ = ["ProjectGaussians", "RasterizeGaussians", "project_gaussians", "rasterize_tiles", "needs_grad"]


def needs_grad(*tensors) -> bool:
    """True when autograd is on and any of ``tensors`` requires a gradient."""
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


class ProjectGaussians(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, camera):
        proj = K.project_gaussians(means.detach(), quats.detach(), scales.detach(), camera)
        ctx.camera = camera
        ctx.save_for_backward(means, quats, scales, proj.radii)
        ctx.mark_non_differentiable(proj.radii)
        return proj.means2d, proj.depths, proj.conics, proj.radii

    @staticmethod
    def backward(ctx, v_means2d, v_depths, v_conics, _v_radii):
        means, quats, scales, radii = ctx.saved_tensors
        v_means2d = _or_zeros(v_means2d, (len(means), 2), means)
        v_depths = _or_zeros(v_depths, (len(means),), means)
        v_conics = _or_zeros(v_conics, (len(means), 3), means)
        v_means, v_quats, v_scales = B.project_gaussians_backward(
            means.detach(), quats.detach(), scales.detach(), ctx.camera, radii, v_means2d, v_depths, v_conics)
        return v_means, v_quats, v_scales, None


class RasterizeGaussians(torch.autograd.Function):
    @staticmethod
    def forward(ctx, params, features, background, ranges, gaussian_ids, width, height):
        image, trans, last_ids = K._launch_raster(params.detach(), features.detach(), background.detach(),
                                                  ranges, gaussian_ids, width, height, GAUSSIAN)
        ctx.save_for_backward(params, features, background, ranges, gaussian_ids, trans, last_ids)
        return image, trans

    @staticmethod
    def backward(ctx, v_image, v_trans):
        params, features, background, ranges, gaussian_ids, trans, last_ids = ctx.saved_tensors
        h, w = trans.shape
        v_image = _or_zeros(v_image, (h, w, features.shape[1]), trans)
        v_trans = _or_zeros(v_trans, (h, w), trans)
        v_params, v_features = B.rasterize_tiles_backward(
            params.detach(), features.detach(), background.detach(), ranges, gaussian_ids, trans, last_ids,
            v_image.float(), v_trans.float())
        v_background = None
        if ctx.needs_input_grad[2]:
            v_background = (v_image * trans[..., None]).sum((0, 1))
        return v_params, v_features, v_background, None, None, None, None


def _or_zeros(grad, shape, like):
    """autograd passes None for an output nobody used: a zero gradient of the right shape."""
    if grad is None:
        return torch.zeros(shape, dtype=torch.float32, device=like.device)
    return grad.contiguous()


def project_gaussians(means, quats, scales, camera) -> Projection:
    """Differentiable twin of :func:`kernels.project_gaussians` (same result, float32)."""
    means2d, depths, conics, radii = ProjectGaussians.apply(means, quats, scales, camera)
    return Projection(means2d, depths, conics, radii)


def rasterize_tiles(params, features, background, ranges, gaussian_ids, width: int, height: int,
                    footprint=GAUSSIAN):
    """Differentiable twin of :func:`kernels.rasterize_tiles` for the Gaussian footprint."""
    if footprint.name != GAUSSIAN.name or footprint.device_fn is not GAUSSIAN.device_fn:
        raise NotImplementedError(
            f"the numba backward pass exists for the Gaussian footprint only, not {footprint.name!r}: "
            "train other footprints on backend='torch', or run the numba path under torch.no_grad()")
    return RasterizeGaussians.apply(params, features, background, ranges, gaussian_ids, width, height)
