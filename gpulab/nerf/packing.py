"""Packed rays, as nerfacc stores them: every sample of every ray in one flat array.

A batch of rays with different sample counts is stored as flat per-sample arrays
(``t_starts``, ``t_ends``, ``sigmas``, ...) plus, per ray, ``packed_info[r] = (start,
count)``: ray r owns samples ``start .. start + count - 1``. ``ray_indices[i]`` is the ray of
sample i (the other half of nerfacc's two layouts). An empty ray has ``count = 0``.

    >>> info = pack_info(torch.tensor([1, 0, 4]))
    >>> info.tolist()
    [[0, 1], [1, 0], [1, 4]]
    >>> ray_indices(info).tolist()
    [0, 2, 2, 2, 2]
"""
from __future__ import annotations

import torch

__all__ = ["pack_info", "ray_indices", "pack_dense", "check_packed_info", "segment_view"]


def pack_info(counts: torch.Tensor) -> torch.Tensor:
    """``[n_rays, 2]`` int64 (start, count) from per-ray sample counts (an exclusive scan)."""
    if counts.dim() != 1:
        raise ValueError(f"counts must be 1-D [n_rays], got shape {list(counts.shape)}")
    counts = counts.to(torch.int64)
    if bool((counts < 0).any()):
        raise ValueError("sample counts must be >= 0")
    starts = torch.cumsum(counts, 0) - counts
    return torch.stack([starts, counts], dim=1)


def ray_indices(packed_info: torch.Tensor) -> torch.Tensor:
    """The ray of every sample, ``[n_samples]`` int64."""
    counts = packed_info[:, 1]
    return torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)


def pack_dense(n_rays: int, n_samples: int, device=None) -> torch.Tensor:
    """``packed_info`` of ``n_rays`` rays of ``n_samples`` samples each (a dense batch, flattened)."""
    return pack_info(torch.full((n_rays,), n_samples, dtype=torch.int64, device=device))


def check_packed_info(packed_info, n_samples: int, who: str) -> None:
    """Raise a clear error unless ``packed_info`` is [n_rays, 2] integer and covers ``n_samples``."""
    if not isinstance(packed_info, torch.Tensor):
        raise TypeError(f"{who}: packed_info must be a torch.Tensor [n_rays, 2], got {type(packed_info).__name__}")
    if packed_info.dim() != 2 or packed_info.shape[1] != 2:
        raise ValueError(f"{who}: packed_info must have shape [n_rays, 2] (start, count), got {list(packed_info.shape)}")
    if packed_info.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{who}: packed_info must be int32 or int64, got {packed_info.dtype}")
    if len(packed_info) and int((packed_info[:, 0] + packed_info[:, 1]).max()) > n_samples:
        raise ValueError(f"{who}: packed_info points past the {n_samples} samples given")
    if len(packed_info) and bool((packed_info < 0).any()):
        raise ValueError(f"{who}: packed_info has a negative start or count")


def segment_view(values: torch.Tensor, packed_info: torch.Tensor, fill: float):
    """Packed ``values`` as a dense ``[n_rays, max_count]`` tensor padded with ``fill``, and
    the boolean mask of the real entries: the torch spec scans each row, then reads back the
    masked entries (``dense[mask]`` is in packed order)."""
    starts, counts = packed_info[:, 0], packed_info[:, 1]
    width = int(counts.max()) if len(counts) else 0
    cols = torch.arange(width, device=values.device)
    mask = cols[None, :] < counts[:, None]
    index = (starts[:, None] + cols[None, :]).clamp(max=max(values.shape[0] - 1, 0))
    dense = torch.full((len(counts), width), fill, dtype=values.dtype, device=values.device)
    if values.numel():
        dense = torch.where(mask, values[index], dense)
    return dense, mask
