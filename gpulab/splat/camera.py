"""Pinhole cameras for the splatting chapter (OpenCV convention: x right, y down, z forward).

A camera is a world-to-camera matrix ``viewmat`` (4x4: rotation rows ``[right, down,
forward]`` and translation) plus intrinsics: focal lengths ``fx, fy`` and principal point
``cx, cy`` in pixels. A point ``p`` lands at pixel ``(fx * x / z + cx, fy * y / z + cy)``
where ``(x, y, z) = viewmat @ [p, 1]``; pixel ``(i, j)`` covers ``[i, i+1) x [j, j+1)``, so
its centre is ``(i + 0.5, j + 0.5)`` (gsplat's convention).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from .. import runtime

__all__ = ["Camera", "look_at", "orbit_camera"]


@dataclass(frozen=True)
class Camera:
    viewmat: torch.Tensor      # [4, 4] float32, world -> camera
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    near: float = 0.2          # Gaussians with view-space z <= near are culled (3DGS: 0.2)

    def __post_init__(self):
        if not isinstance(self.viewmat, torch.Tensor) or self.viewmat.shape != (4, 4):
            raise ValueError("Camera.viewmat must be a 4x4 torch.Tensor (world -> camera)")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"focal lengths must be positive, got fx={self.fx}, fy={self.fy}")

    @property
    def tan_fovx(self) -> float:
        """tan of half the horizontal field of view (3DGS clamps x/z to 1.3 times this)."""
        return 0.5 * self.width / self.fx

    @property
    def tan_fovy(self) -> float:
        return 0.5 * self.height / self.fy

    @property
    def position(self) -> torch.Tensor:
        """The camera centre in world coordinates: -R^T t."""
        rot, t = self.viewmat[:3, :3], self.viewmat[:3, 3]
        return -(rot.T @ t)

    def to(self, device) -> "Camera":
        return replace(self, viewmat=self.viewmat.to(device))

    def resized(self, width: int, height: int) -> "Camera":
        """The same view at another resolution (focal lengths scale with the width)."""
        s = width / self.width
        return replace(self, fx=self.fx * s, fy=self.fy * s, cx=self.cx * s,
                       cy=self.cy * height / self.height, width=width, height=height)


def look_at(eye, target, up=(0.0, 0.0, 1.0), device=None) -> torch.Tensor:
    """World-to-camera matrix of a camera at ``eye`` looking at ``target``.

    Rows of the rotation: right = forward x up, down = forward x right, forward.
    """
    device = device or runtime.device
    eye = torch.as_tensor(eye, dtype=torch.float64)
    target = torch.as_tensor(target, dtype=torch.float64)
    up = torch.as_tensor(up, dtype=torch.float64)
    forward = target - eye
    forward = forward / forward.norm()
    right = torch.linalg.cross(forward, up)
    if right.norm() < 1e-9:   # looking straight along `up`: any perpendicular will do
        right = torch.linalg.cross(forward, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    right = right / right.norm()
    down = torch.linalg.cross(forward, right)
    rot = torch.stack([right, down, forward])
    view = torch.eye(4, dtype=torch.float64)
    view[:3, :3] = rot
    view[:3, 3] = -rot @ eye
    return view.to(device=device, dtype=torch.float32)


def orbit_camera(azimuth_deg: float, elevation_deg: float, distance: float, width: int, height: int,
                 fov_deg: float = 60.0, target=(0.0, 0.0, 0.0), near: float = 0.2, device=None) -> Camera:
    """A camera on a sphere around ``target`` (z is up), with a horizontal field of view."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    eye = (target[0] + distance * math.cos(el) * math.cos(az),
           target[1] + distance * math.cos(el) * math.sin(az),
           target[2] + distance * math.sin(el))
    fx = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    return Camera(look_at(eye, target, device=device), fx, fx, width / 2, height / 2, width, height, near)
