"""Tensor parallelism (Megatron-LM, arXiv 1909.08053): split each block's matrices.

Column-parallel layers (q, k, v, w1, w3) keep a slice of output features per rank: each
rank computes its own heads of attention and its own slice of the SwiGLU hidden layer with
no communication. Row-parallel layers (o, w2) keep the matching slice of input features:
each rank's product is a *partial sum* of the output, so one all-reduce finishes the
half-block. The autograd mirror (Megatron's ``f`` and ``g``): the block's input is an
identity forward and an all-reduce of its gradient backward. One all-reduce each way per
half-block: 4 per block and step.

Sequence parallel (Korthikanti et al., arXiv 2205.05198): between the half-blocks the
activations are split along the sequence instead of replicated, so the norms (and the
residual stream) run on 1/N of the tokens; the all-reduce becomes a reduce-scatter after
the row layer and an all-gather before the column layers (the same bytes). Parameters
outside the split matrices then see only their tokens, and their gradients are summed
over ranks.

Native: ``parallelize_module`` with TorchTitan's plan (:func:`torchtitan_plan`):
``ColwiseParallel`` for wq/wk/wv/w1/w3, ``RowwiseParallel(output_layouts=Shard(1))`` for
wo/w2, ``SequenceParallel`` for the norms, the embedding row-wise with a sequence-sharded
output, the output layer column-wise with vocabulary-sharded logits, and ``loss_parallel``
computing the cross-entropy on those shards.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .comm import (Comm, chunk_of, copy_to_parallel, gather_from_parallel, reduce_from_parallel,
                   scatter_to_parallel)
from .groups import member
from .model import ModelConfig, Transformer, build_model, loss_fn, synthetic_batch

__all__ = ["COLUMN", "ROW", "shard_linear", "TPBlock", "TPTransformer", "tp_mlp", "tp_by_hand", "tp_native", "apply_tp", "fsdp_tp_2d",
           "torchtitan_plan", "full_grads_from_shards"]

#: linear layers split by output features (dim 0 of the weight) and by input features (dim 1)
COLUMN = ("attention.wq", "attention.wk", "attention.wv", "feed_forward.w1", "feed_forward.w3")
ROW = ("attention.wo", "feed_forward.w2")


def shard_linear(linear: nn.Linear, comm: Comm, dim: int) -> nn.Linear:
    """A copy of ``linear`` holding this rank's chunk of the weight along ``dim``
    (0: column-parallel, output features; 1: row-parallel, input features)."""
    weight = chunk_of(linear.weight.detach(), comm.rank, comm.world_size, dim)
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
    return out


def tp_mlp(x, w1, w3, w2, comm: Comm):
    """The SwiGLU MLP with column-parallel w1/w3 (``[ffn/N, dim]``) and row-parallel w2
    (``[dim, ffn/N]``): ``g(w2_r (silu(w1_r f(x)) * w3_r f(x)))``, f and g as above."""
    x = copy_to_parallel(x, comm)                 # backward: sum the input gradients
    hidden = F.silu(x @ w1.t()) * (x @ w3.t())    # this rank's slice of the hidden layer
    return reduce_from_parallel(hidden @ w2.t(), comm)   # partial sums -> the output


class TPBlock(nn.Module):
    """One transformer block with its matrices split over ``comm``'s ranks."""

    def __init__(self, block: nn.Module, comm: Comm, sequence_parallel: bool = False):
        super().__init__()
        self.comm, self.sp = comm, sequence_parallel
        self.block = copy.deepcopy(block)
        for name in COLUMN + ROW:
            parent, leaf = name.split(".")
            sub = getattr(self.block, parent)
            setattr(sub, leaf, shard_linear(getattr(sub, leaf), comm, 0 if name in COLUMN else 1))

    def _enter(self, x):     # replicated (or sequence-sharded) -> replicated for the column layers
        return gather_from_parallel(x, self.comm, dim=1) if self.sp else copy_to_parallel(x, self.comm)

    def _leave(self, y):     # partial sums -> replicated (or sequence-sharded)
        return scatter_to_parallel(y, self.comm, dim=1) if self.sp else reduce_from_parallel(y, self.comm)

    def forward(self, x):
        b = self.block
        h = x + self._leave(b.attention(self._enter(b.attention_norm(x))))
        return h + self._leave(b.feed_forward(self._enter(b.ffn_norm(h))))


class TPTransformer(nn.Module):
    """The model with every block tensor-parallel; embedding, final norm and output are
    replicated (with ``sequence_parallel``, each rank runs them on its own tokens)."""

    def __init__(self, model: Transformer, comm: Comm, sequence_parallel: bool = False):
        super().__init__()
        self.comm, self.sp = comm, sequence_parallel
        self.tok_embeddings, self.norm, self.output = model.tok_embeddings, model.norm, model.output
        self.layers = nn.ModuleDict({k: TPBlock(b, comm, sequence_parallel) for k, b in model.layers.items()})

    def loss(self, tokens, labels):
        """Mean cross-entropy over all tokens. Sequence parallel: each rank's tokens are
        1/N of the sequence; their summed losses are all-reduced (and the gradients of the
        replicated parameters too, in :meth:`sync_replicated_grads`)."""
        if self.sp:
            tokens = chunk_of(tokens, self.comm.rank, self.comm.world_size, dim=1)
            labels = chunk_of(labels, self.comm.rank, self.comm.world_size, dim=1)
        h = self.tok_embeddings(tokens)
        for block in self.layers.values():
            h = block(h)
        logits = self.output(self.norm(h))
        if not self.sp:
            return loss_fn(logits, labels)
        local_sum = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(0, 1), reduction="sum")
        return local_sum / (labels.numel() * self.comm.world_size)   # this rank's share of the mean

    def sync_replicated_grads(self) -> None:
        """Sequence parallel: parameters outside the split matrices saw 1/N of the tokens:
        sum their gradients over ranks. (Without it their gradients are already whole.)"""
        if not self.sp:
            return
        for name, p in self.named_parameters():
            if not _is_split(name) and p.grad is not None:
                p.grad.copy_(self.comm.all_reduce(p.grad))


def _is_split(name: str) -> bool:
    return any(f".{leaf}." in name for leaf in COLUMN + ROW)


def full_grads_from_shards(model: TPTransformer) -> dict[str, torch.Tensor]:
    """Gradients under the one-process names, split ones all-gathered along their split."""
    out = {}
    for name, p in model.named_parameters():
        plain = name.replace(".block.", ".")
        grad = p.grad.detach()
        for leaf in COLUMN + ROW:
            if f".{leaf}." in plain:
                grad = model.comm.all_gather(grad.contiguous(), dim=0 if leaf in COLUMN else 1)
        out[plain] = grad.cpu().clone()
    return out


def tp_by_hand(cfg: ModelConfig, batch: int, size: int, seed: int = 0, sequence_parallel: bool = False):
    """One tensor-parallel step by hand on the pool's first ``size`` ranks (every rank sees
    the whole batch): ``(loss, full grads)``."""
    setup = member(size)
    if setup is None:
        return None
    tokens, labels = synthetic_batch(cfg, batch, seed=seed, device=setup.device)
    model = TPTransformer(build_model(cfg, device=setup.device), setup.comm, sequence_parallel)
    loss = model.loss(tokens, labels)
    loss.backward()
    model.sync_replicated_grads()
    total = setup.comm.all_reduce(loss.detach()) if sequence_parallel else loss.detach()
    return float(total), full_grads_from_shards(model)


def torchtitan_plan(loss_parallel: bool = True):
    """TorchTitan's tensor/sequence-parallel plan for Llama (``apply_tp`` in its
    ``parallelize.py``): the root's and one block's. Imports torch.distributed.tensor."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput, RowwiseParallel,
                                                   SequenceParallel)

    root = {
        "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
        "norm": SequenceParallel(),
        "output": ColwiseParallel(input_layouts=Shard(1),
                                  output_layouts=Shard(-1) if loss_parallel else Replicate(),
                                  use_local_output=not loss_parallel),
    }
    block = {
        "attention_norm": SequenceParallel(),
        "attention": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
        "attention.wq": ColwiseParallel(),
        "attention.wk": ColwiseParallel(),
        "attention.wv": ColwiseParallel(),
        "attention.wo": RowwiseParallel(output_layouts=Shard(1)),
        "ffn_norm": SequenceParallel(),
        "feed_forward": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
        "feed_forward.w1": ColwiseParallel(),
        "feed_forward.w2": RowwiseParallel(output_layouts=Shard(1)),
        "feed_forward.w3": ColwiseParallel(),
    }
    return root, block


def apply_tp(model: Transformer, mesh) -> Transformer:
    """``parallelize_module`` with :func:`torchtitan_plan` on every block and the root."""
    from torch.distributed.tensor.parallel import parallelize_module

    root, block_plan = torchtitan_plan(loss_parallel=True)
    parallelize_module(model, mesh, root)
    for block in model.layers.values():
        parallelize_module(block, mesh, block_plan)
    return model


def tp_native(cfg: ModelConfig, batch: int, size: int, seed: int = 0):
    """The same step with ``parallelize_module`` (TorchTitan's plan) and ``loss_parallel``."""
    from torch.distributed.tensor.parallel import loss_parallel

    setup = member(size)
    if setup is None:
        return None
    tokens, labels = synthetic_batch(cfg, batch, seed=seed, device=setup.device)
    model = apply_tp(build_model(cfg, device=setup.device), setup.mesh)
    with loss_parallel():
        logits = model(tokens)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(0, 1))
        loss.backward()
    return float(loss.detach().full_tensor()), {n: p.grad.full_tensor().cpu().clone() for n, p in model.named_parameters()}


def fsdp_tp_2d(cfg: ModelConfig, batch: int, dp: int = 2, tp_degree: int = 2, seed: int = 0):
    """A 2D step on a ``("dp", "tp")`` mesh of the pool's first ``dp * tp`` ranks, as
    TorchTitan composes them: TorchTitan's tensor-parallel plan over ``tp``, then
    ``fully_shard`` of each block and the root over ``dp``; each dp group sees its slice of
    the batch. Returns ``(mean loss, full grads)``, None off the mesh."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import loss_parallel

    from .groups import mesh_of

    mesh = mesh_of((dp, tp_degree), ("dp", "tp"))
    if mesh is None:
        return None
    device = torch.device("cuda", torch.cuda.current_device()) if mesh.device_type == "cuda" else torch.device("cpu")
    tokens, labels = synthetic_batch(cfg, batch, seed=seed, device=device)
    d = mesh["dp"].get_local_rank()
    model = apply_tp(build_model(cfg, device=device), mesh["tp"])
    for block in model.layers.values():
        fully_shard(block, mesh=mesh["dp"])
    fully_shard(model, mesh=mesh["dp"])
    with loss_parallel():
        logits = model(tokens.chunk(dp)[d])
        loss = F.cross_entropy(logits.flatten(0, 1), labels.chunk(dp)[d].flatten(0, 1))
        loss.backward()
    local = loss.detach().full_tensor()
    dist.all_reduce(local, group=mesh["dp"].get_group())
    return float(local / dp), {n: p.grad.full_tensor().cpu().clone() for n, p in model.named_parameters()}
