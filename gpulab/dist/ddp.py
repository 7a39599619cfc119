"""Data parallelism (DDP): every rank holds the whole model and a slice of the batch.

After the backward pass each rank has the gradient of *its* loss; the gradient of the
mean loss over the whole batch is the mean of those. By hand that is one all-reduce of
all gradients (flattened into one bucket, as DDP buckets them) and a division by the world
size; ``torch.nn.parallel.DistributedDataParallel`` does the same in buckets of about 25
MiB, overlapped with the backward pass (it starts a bucket's all-reduce as soon as its
gradients are ready).

Traffic per step: a ring all-reduce sends and receives ``2 (N-1)/N`` times the gradient
bytes per rank, about 2x the parameters.
"""
from __future__ import annotations

import torch

from .comm import Comm
from .groups import member
from .model import ModelConfig, build_model, loss_fn, synthetic_batch

__all__ = ["average_gradients", "batch_slice", "ddp_by_hand", "ddp_native"]


def batch_slice(x: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's equal share of the batch (dimension 0)."""
    if x.shape[0] % world_size:
        raise ValueError(f"batch {x.shape[0]} is not a multiple of the world size {world_size}")
    return x.chunk(world_size, dim=0)[rank]


def average_gradients(params, comm: Comm) -> None:
    """Replace each ``p.grad`` by its mean over ranks: one all-reduce of one flat bucket."""
    params = [p for p in params if p.grad is not None]
    bucket = torch.cat([p.grad.reshape(-1) for p in params])
    bucket = comm.all_reduce(bucket) / comm.world_size   # sum, then mean: divided once
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(bucket[offset:offset + n].view_as(p.grad))
        offset += n


def _result(loss, model):
    return float(loss), {n: p.grad.detach().cpu().clone() for n, p in model.named_parameters()}


def ddp_by_hand(cfg: ModelConfig, batch: int, size: int, seed: int = 0):
    """One DDP step by hand on the pool's first ``size`` ranks: ``(mean loss, grads)`` on
    every member (None elsewhere)."""
    setup = member(size)
    if setup is None:
        return None
    tokens, labels = synthetic_batch(cfg, batch, seed=seed, device=setup.device)
    model = build_model(cfg, device=setup.device)
    loss = loss_fn(model(batch_slice(tokens, setup.rank, size)), batch_slice(labels, setup.rank, size))
    loss.backward()
    average_gradients(model.parameters(), setup.comm)
    mean_loss = setup.comm.all_reduce(loss.detach()) / size
    return _result(mean_loss, model)


def ddp_native(cfg: ModelConfig, batch: int, size: int, seed: int = 0):
    """The same step with ``torch.nn.parallel.DistributedDataParallel``."""
    from torch.nn.parallel import DistributedDataParallel

    setup = member(size)
    if setup is None:
        return None
    tokens, labels = synthetic_batch(cfg, batch, seed=seed, device=setup.device)
    model = build_model(cfg, device=setup.device)
    ddp = DistributedDataParallel(model, process_group=setup.group,
                                  device_ids=[setup.device] if setup.device.type == "cuda" else None)
    loss = loss_fn(ddp(batch_slice(tokens, setup.rank, size)), batch_slice(labels, setup.rank, size))
    loss.backward()
    mean_loss = setup.comm.all_reduce(loss.detach()) / size
    return _result(mean_loss, model)
