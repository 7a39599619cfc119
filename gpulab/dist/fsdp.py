"""ZeRO-3 / FSDP: every rank holds 1/N of every parameter, gradient and optimizer state.

By hand (:class:`ShardedUnit`): each unit (a transformer block, and the root: embedding,
final norm, output) flattens its parameters into one vector, pads it to a multiple of N
and keeps only this rank's chunk. Before the unit runs, its chunks are all-gathered into
the full parameters; after, the full copy is dropped. The backward pass needs them again:
the block runs under activation checkpointing, so its recomputation all-gathers the
parameters a second time (FSDP's "extra all-gather" in backward); the all-gather's
backward is a reduce-scatter, so each rank receives the sum of every rank's gradient for
*its* chunk, divided by N to make the mean. AdamW then updates the chunk alone.

Native: ``torch.distributed.fsdp.fully_shard`` on each block and then on the root (the
TorchTitan recipe), with ``MixedPrecisionPolicy(param_dtype=torch.bfloat16,
reduce_dtype=torch.float32)`` to gather bf16 parameters and reduce fp32 gradients.

Traffic per step per rank: all-gather in forward, all-gather again in backward, and a
reduce-scatter of gradients, each ``(N-1)/N`` of the parameter bytes: about 3x the
parameters, against DDP's 2x.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from .comm import Comm, gather_from_parallel
from .ddp import batch_slice
from .groups import member
from .model import ModelConfig, Transformer, build_model, loss_fn, synthetic_batch

__all__ = ["ShardedUnit", "ShardedTransformer", "padded_size", "fsdp_by_hand", "fsdp_native",
           "fsdp_memory_bytes"]


def padded_size(numel: int, world_size: int) -> int:
    """``numel`` rounded up to a multiple of the world size (each chunk equally long)."""
    return -(-numel // world_size) * world_size


class ShardedUnit(nn.Module):
    """The parameters of ``module`` kept as this rank's chunk of one flat vector.

    ``forward(*args)`` all-gathers the full parameters and runs ``module`` on them
    (``functional_call``); ``module`` itself keeps only shapes (its parameters move to the
    meta device) and its buffers."""

    def __init__(self, module: nn.Module, comm: Comm, recompute: bool = True):
        super().__init__()
        self.comm, self.recompute = comm, recompute
        self.names = [n for n, _ in module.named_parameters()]
        self.shapes = [p.shape for _, p in module.named_parameters()]
        self.numel = sum(p.numel() for _, p in module.named_parameters())
        flat = torch.cat([p.detach().reshape(-1) for _, p in module.named_parameters()])
        flat = torch.nn.functional.pad(flat, (0, padded_size(self.numel, comm.world_size) - self.numel))
        self.shard = nn.Parameter(flat.chunk(comm.world_size)[comm.rank].clone())
        self.buffers_ = dict(module.named_buffers())
        self.module = [module.to("meta")]      # a list: not a submodule, so not sharded again
        # (the buffers were captured before; functional_call is given them)

    def full_parameters(self) -> dict[str, torch.Tensor]:
        """All-gather the chunks into ``{name: tensor}`` (differentiable: the gradient of
        the gathered vector is reduce-scattered back onto this rank's chunk)."""
        flat = gather_from_parallel(self.shard, self.comm, dim=0)[: self.numel]
        out, offset = {}, 0
        for name, shape in zip(self.names, self.shapes):
            n = shape.numel()
            out[name] = flat[offset:offset + n].view(shape)
            offset += n
        return out

    def _run(self, *args):
        return functional_call(self.module[0], {**self.full_parameters(), **self.buffers_}, args)

    def forward(self, *args):
        if self.recompute and torch.is_grad_enabled():
            # the gathered parameters are not kept for backward: recomputation gathers again
            return checkpoint(self._run, *args, use_reentrant=False)
        return self._run(*args)


class ShardedTransformer(nn.Module):
    """The model as sharded units: the root (embedding, norm, output) gathered once per
    step, every block gathered before it runs and again for its backward."""

    def __init__(self, model: Transformer, comm: Comm):
        super().__init__()
        self.comm = comm
        self.blocks = nn.ModuleList(ShardedUnit(b, comm) for b in model.layers.values())
        root = nn.ModuleDict({"tok_embeddings": model.tok_embeddings, "norm": model.norm, "output": model.output})
        self.root = ShardedUnit(root, comm, recompute=False)
        self.root_template = root

    def forward(self, tokens):
        p = self.root.full_parameters()
        h = nn.functional.embedding(tokens, p["tok_embeddings.weight"])
        for block in self.blocks:
            h = block(h)
        norm = self.root_template["norm"]
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.eps) * p["norm.weight"]
        return h @ p["output.weight"].t()

    def units(self):
        return [*self.blocks, self.root]

    def mean_gradients(self) -> None:
        """The reduce-scatter summed the gradients; the mean loss wants them / N (once)."""
        for unit in self.units():
            unit.shard.grad /= self.comm.world_size

    def gathered_grads(self) -> dict[str, torch.Tensor]:
        """Full gradients by name (an all-gather; for checking against one process)."""
        out = {}
        for prefix, unit in [*((f"layers.{i}.", b) for i, b in enumerate(self.blocks)), ("", self.root)]:
            flat = self.comm.all_gather(unit.shard.grad, dim=0)[: unit.numel]
            offset = 0
            for name, shape in zip(unit.names, unit.shapes):
                out[prefix + name] = flat[offset:offset + shape.numel()].view(shape).cpu().clone()
                offset += shape.numel()
        return out

    def gathered_params(self) -> dict[str, torch.Tensor]:
        out = {}
        for prefix, unit in [*((f"layers.{i}.", b) for i, b in enumerate(self.blocks)), ("", self.root)]:
            with torch.no_grad():
                for name, value in unit.full_parameters().items():
                    out[prefix + name] = value.cpu().clone()
        return out


ADAMW = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)


def fsdp_by_hand(cfg: ModelConfig, batch: int, size: int, seed: int = 0, optimizer_step: bool = False):
    """One ZeRO-3 step by hand on the pool's first ``size`` ranks: ``(mean loss, full
    grads[, full params after one sharded AdamW step])``, None off the sub-world."""
    setup = member(size)
    if setup is None:
        return None
    tokens, labels = synthetic_batch(cfg, batch, seed=seed, device=setup.device)
    model = ShardedTransformer(build_model(cfg, device=setup.device), setup.comm)
    loss = loss_fn(model(batch_slice(tokens, setup.rank, size)), batch_slice(labels, setup.rank, size))
    loss.backward()
    model.mean_gradients()
    mean_loss = float(setup.comm.all_reduce(loss.detach()) / size)
    grads = model.gathered_grads()
    if not optimizer_step:
        return mean_loss, grads
    # sharded AdamW: each rank updates (and keeps the moments of) only its chunk
    opt = torch.optim.AdamW([u.shard for u in model.units()], **ADAMW)
    opt.step()
    return mean_loss, grads, model.gathered_params()


def fsdp_native(cfg: ModelConfig, batch: int, size: int, seed: int = 0, bf16: bool = False):
    """The same step with ``fully_shard`` per block and root (bf16 parameters and fp32
    gradient reduction with ``bf16=True``)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    setup = member(size)
    if setup is None:
        return None
    tokens, labels = synthetic_batch(cfg, batch, seed=seed, device=setup.device)
    model = build_model(cfg, device=setup.device)
    kw = {"mesh": setup.mesh}
    if bf16:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in model.layers.values():
        fully_shard(block, **kw)
    fully_shard(model, **kw)
    loss = loss_fn(model(batch_slice(tokens, setup.rank, size)), batch_slice(labels, setup.rank, size))
    loss.backward()
    mean_loss = float(setup.comm.all_reduce(loss.detach().float()) / size)
    return mean_loss, {n: p.grad.full_tensor().cpu().clone() for n, p in model.named_parameters()}


def fsdp_memory_bytes(num_params: int, shard_degree: int, largest_unit_params: int,
                      bytes_per_param: int = 16, gathered_bytes_per_param: int = 2) -> int:
    """Model-state bytes on one rank under ZeRO-3 with mixed-precision AdamW.

    ``bytes_per_param`` = 16: bf16 parameter (2) + bf16 gradient (2) + fp32 master
    weight, momentum and variance (4 + 4 + 4), all divided by the sharding degree; plus
    the unsharded bf16 copy of the largest unit while it runs (twice: the one in use and
    the next one prefetched). Activations come on top."""
    if shard_degree < 1 or num_params < 0 or largest_unit_params < 0:
        raise ValueError("fsdp_memory_bytes: counts must be non-negative and shard_degree positive")
    sharded = -(-num_params * bytes_per_param // shard_degree)
    return sharded + 2 * largest_unit_params * gathered_bytes_per_param
