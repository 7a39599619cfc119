"""Synthetic scenes (nothing is downloaded) and fitting a scene to images by gradient descent."""
from __future__ import annotations

import math

import torch

from .. import runtime
from .camera import Camera, look_at, orbit_camera
from .constants import SH_C0
from .render import Gaussians, render

__all__ = ["random_gaussians", "benchmark_camera", "toy_object", "orbit_views", "psnr",
           "TrainableGaussians", "fit"]


def random_gaussians(n: int, generator: torch.Generator | None = None, device=None, sh_degree: int = 0,
                     depth=(2.0, 8.0), spread: float = 0.55, log_scale=(-4.0, 0.5),
                     opacity=(0.2, 1.0)) -> Gaussians:
    """``n`` random Gaussians in front of :func:`benchmark_camera` (which sits at the origin
    looking down +z): depths uniform in ``depth``, x and y within ``spread * z`` (about the
    60 degree view), log-scales normal(mean, std) = ``log_scale``, random rotations and colours.
    """
    device = device or runtime.device
    g = generator or torch.Generator().manual_seed(0)
    z = torch.empty(n).uniform_(*depth, generator=g)
    xy = (torch.rand(n, 2, generator=g) * 2 - 1) * spread * z[:, None]
    means = torch.cat([xy, z[:, None]], 1)
    quats = torch.randn(n, 4, generator=g)
    scales = torch.exp(log_scale[0] + log_scale[1] * torch.randn(n, 3, generator=g))
    opacities = torch.empty(n).uniform_(*opacity, generator=g)
    k = (sh_degree + 1) ** 2
    sh = torch.randn(n, k, 3, generator=g) * 0.3
    sh[:, 0] = (torch.rand(n, 3, generator=g) - 0.5) / SH_C0      # colours in [0, 1] at degree 0
    return Gaussians(means, quats, scales, opacities, sh).to(device)


def benchmark_camera(width: int, height: int, fov_deg: float = 60.0, device=None) -> Camera:
    """A pinhole camera at the origin looking down +z with a horizontal field of view."""
    fx = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    view = look_at((0.0, 0.0, 0.0), (0.0, 0.0, 1.0), up=(0.0, -1.0, 0.0), device=device)
    return Camera(view, fx, fx, width / 2, height / 2, width, height)


def toy_object(n: int = 400, generator: torch.Generator | None = None, device=None) -> Gaussians:
    """A small colourful object: a ring of warm colours around a ball coloured by direction."""
    device = device or runtime.device
    g = generator or torch.Generator().manual_seed(1)
    n_ball = n // 2
    d = torch.randn(n_ball, 3, generator=g)
    d = d / d.norm(dim=1, keepdim=True)
    ball = 0.45 * d
    ball_rgb = 0.5 + 0.5 * d
    t = torch.rand(n - n_ball, generator=g) * 2 * math.pi
    ring = torch.stack([0.85 * torch.cos(t), 0.85 * torch.sin(t), 0.08 * torch.randn(n - n_ball, generator=g)], 1)
    ring_rgb = torch.stack([0.9 + 0.1 * torch.cos(t), 0.5 + 0.4 * torch.sin(3 * t), 0.1 + 0.1 * torch.cos(t)], 1)
    means = torch.cat([ball, ring])
    rgb = torch.cat([ball_rgb, ring_rgb]).clamp(0, 1)
    scales = torch.full((n, 3), 0.06) * torch.exp(0.2 * torch.randn(n, 3, generator=g))
    quats = torch.randn(n, 4, generator=g)
    opacities = torch.full((n,), 0.9)
    sh = ((rgb - 0.5) / SH_C0)[:, None, :]
    return Gaussians(means, quats, scales, opacities, sh).to(device)


def orbit_views(n_views: int, width: int, height: int, distance: float = 3.0, device=None) -> list[Camera]:
    """Cameras evenly spaced around the z axis, alternating between two elevations."""
    return [orbit_camera(360.0 * i / n_views, 20.0 if i % 2 else 40.0, distance, width, height, device=device)
            for i in range(n_views)]


def psnr(image: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1]."""
    mse = torch.mean((image.detach().clamp(0, 1) - target) ** 2).item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


class TrainableGaussians(torch.nn.Module):
    """Raw parameters with the usual 3DGS activations: exp(scales), sigmoid(opacities)."""

    def __init__(self, n: int, extent: float = 1.0, generator: torch.Generator | None = None, device=None):
        super().__init__()
        device = device or runtime.device
        g = generator or torch.Generator().manual_seed(2)
        self.means = torch.nn.Parameter(((torch.rand(n, 3, generator=g) * 2 - 1) * extent).to(device))
        self.log_scales = torch.nn.Parameter(torch.full((n, 3), math.log(0.1)).to(device))
        self.quats = torch.nn.Parameter(torch.tensor([1.0, 0, 0, 0]).repeat(n, 1).to(device))
        self.opacity_logits = torch.nn.Parameter(torch.full((n,), 0.0).to(device))
        self.sh_dc = torch.nn.Parameter(torch.zeros(n, 1, 3).to(device))

    def gaussians(self) -> Gaussians:
        return Gaussians(self.means, self.quats, torch.exp(self.log_scales),
                         torch.sigmoid(self.opacity_logits), self.sh_dc)


def fit(model: TrainableGaussians, cameras: list[Camera], targets: list[torch.Tensor], steps: int = 200,
        lr: float = 0.01, background: torch.Tensor | None = None, progress: bool = True, seed: int = 0,
        backend: str = "torch"):
    """Adam on the photometric L2 loss, one random view per step.

    ``backend="numba"`` trains through the numba kernels and their backward pass (a GPU's
    path); ``"torch"`` differentiates the torch specification. Returns the PSNR history
    (dB, over the views seen at each step).
    """
    from tqdm.auto import tqdm

    opt = torch.optim.Adam([
        {"params": [model.means], "lr": lr},
        {"params": [model.log_scales], "lr": 5 * lr},
        {"params": [model.quats], "lr": lr},
        {"params": [model.opacity_logits], "lr": 5 * lr},
        {"params": [model.sh_dc], "lr": 2.5 * lr},
    ])
    g = torch.Generator().manual_seed(seed)
    history = []
    bar = tqdm(range(steps), disable=not progress, desc="fitting")
    for _ in bar:
        v = int(torch.randint(len(cameras), (1,), generator=g))
        out = render(model.gaussians(), cameras[v], background, backend=backend)
        loss = torch.mean((out.image - targets[v]) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(10 * math.log10(1.0 / max(loss.item(), 1e-12)))
        bar.set_postfix(psnr=f"{history[-1]:.1f} dB")
    return history
