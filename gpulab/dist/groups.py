"""Sub-worlds of a running pool: run a 2-rank experiment on a 4-process pool.

Starting processes costs seconds, so the tests and notebooks keep one pool of 4 and run
2-rank experiments on its first two ranks. Every rank of the pool must call
:func:`member` (creating a group is itself a collective); those outside get None.

    setup = member(2)          # on every rank of the pool
    if setup is None:
        return None            # ranks 2 and 3 sit this one out
    setup.comm.all_reduce(x)   # a Comm (gpulab.dist.comm) over ranks 0 and 1
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .comm import TorchComm

__all__ = ["Setup", "member", "mesh_of"]

_CACHE: dict = {}


@dataclass
class Setup:
    rank: int
    size: int
    group: object
    comm: TorchComm
    mesh: object                  # a 1-D DeviceMesh over the same ranks
    device: torch.device


def _device_type() -> str:
    import torch.distributed as dist

    return "cuda" if dist.get_backend() == "nccl" else "cpu"


def member(size: int) -> Setup | None:
    """This rank's view of the sub-world of the pool's first ``size`` ranks (cached)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import DeviceMesh

    world = dist.get_world_size()
    if not 1 <= size <= world:
        raise ValueError(f"a sub-world of {size} ranks does not fit a pool of {world}")
    if size not in _CACHE:
        ranks = list(range(size))
        group = dist.new_group(ranks) if size < world else dist.group.WORLD
        mesh = DeviceMesh(_device_type(), ranks) if size < world else DeviceMesh(_device_type(), list(range(world)))
        _CACHE[size] = (group, mesh)
    group, mesh = _CACHE[size]
    rank = dist.get_rank()
    if rank >= size:
        return None
    device = torch.device("cuda", torch.cuda.current_device()) if _device_type() == "cuda" else torch.device("cpu")
    return Setup(rank, size, group, TorchComm(group), mesh, device)


def mesh_of(shape: tuple[int, ...], names: tuple[str, ...]):
    """A named n-D DeviceMesh over the pool's first prod(shape) ranks (cached); None on
    the ranks outside it. Every rank of the pool must call it."""
    import math

    import torch.distributed as dist
    from torch.distributed.device_mesh import DeviceMesh

    key = (tuple(shape), tuple(names))
    n = math.prod(shape)
    if n > dist.get_world_size():
        raise ValueError(f"a mesh of {shape} needs {n} ranks, the pool has {dist.get_world_size()}")
    if key not in _CACHE:
        ranks = torch.arange(n).reshape(shape)
        _CACHE[key] = DeviceMesh(_device_type(), ranks, mesh_dim_names=tuple(names))
    return _CACHE[key] if dist.get_rank() < n else None
