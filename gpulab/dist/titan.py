"""TorchTitan's recipe on the course's model: FSDP2, selective checkpointing, compile, float8.

What ``torchtitan/models/llama3/infra/parallelize.py`` does to a Llama, in order, written
out for one process group (world size 1 on one GPU in the benchmark, N ranks elsewhere):

1. float8 (optional): every block's linear layers become :class:`~gpulab.dist.float8.Float8Linear`
   (the output projection stays in bf16 here);
2. selective activation checkpointing, "op" mode: inside each block the outputs of the
   attention kernel are saved and those of every second matrix product; everything else
   (norms, activations, the other products) is recomputed in backward;
3. ``torch.compile`` of each block (identical blocks share one compiled graph);
4. ``fully_shard`` of each block, then of the root, with bf16 parameters and fp32
   gradient reduction (``MixedPrecisionPolicy``);
5. AdamW on the (sharded, fp32) parameters, one parameter at a time.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time

import torch
from torch import nn

from .float8 import convert_to_float8
from .model import LLAMA3_8B, ModelConfig, Transformer, loss_fn, rope_tables

__all__ = ["selective_checkpoint_policy", "SelectiveCheckpoint", "build_titan_model", "titan_step",
           "time_steps", "init_weights_on_device", "empty_block", "SAVE_OPS"]


def _save_ops():
    aten = torch.ops.aten
    ops = {aten.mm.default, aten._scaled_dot_product_flash_attention.default,
           aten._scaled_dot_product_efficient_attention.default, aten.max.default}
    for name in ("_scaled_dot_product_cudnn_attention", "_scaled_mm"):
        if hasattr(aten, name):
            ops.add(getattr(aten, name).default)
    return ops


#: the ops whose outputs selective checkpointing keeps (TorchTitan's ``_save_list``, abridged)
SAVE_OPS = _save_ops()


def selective_checkpoint_policy():
    """A fresh policy for one block's forward: save the ops of ``SAVE_OPS``, but only every
    second ``mm`` (counted separately in the forward and in the recompute, so both agree)."""
    from torch.utils.checkpoint import CheckpointPolicy

    counts = {"forward": 0, "recompute": 0}

    def policy(ctx, func, *args, **kwargs):
        mode = "recompute" if ctx.is_recompute else "forward"
        if func == torch.ops.aten.mm.default:
            counts[mode] += 1
            if counts[mode] % 2 == 0:
                return CheckpointPolicy.PREFER_RECOMPUTE
        return CheckpointPolicy.MUST_SAVE if func in SAVE_OPS else CheckpointPolicy.PREFER_RECOMPUTE

    return policy


class SelectiveCheckpoint(nn.Module):
    """A block run under selective activation checkpointing, with a fresh policy (fresh mm
    counters) for every forward. A policy kept across steps goes wrong: the recompute stops
    early once it has what backward needs (``torch.utils.checkpoint``'s early stop), so it
    counts fewer products than the forward did, and from the next step on the two disagree
    on which product is saved."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts

        context = functools.partial(create_selective_checkpoint_contexts, selective_checkpoint_policy())
        return checkpoint(self.block, x, use_reentrant=False, context_fn=context)


def empty_block(cfg: ModelConfig, device="cuda", dtype=torch.bfloat16):
    """One transformer block of ``cfg`` built directly on ``device`` (random weights)."""
    from .model import TransformerBlock

    with torch.device("meta"):
        block = TransformerBlock(cfg)
    block.to_empty(device=device)
    with torch.no_grad():
        for name, p in block.named_parameters():
            p.fill_(1.0) if name.endswith("norm.weight") else p.normal_(0.0, 0.02)
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        block.attention.rope_cos.copy_(cos)
        block.attention.rope_sin.copy_(sin)
    return block.to(dtype)


def init_weights_on_device(model: Transformer, std: float = 0.02, seed: int = 0) -> None:
    """Random init where the parameters live (an 8B model is not built on the CPU)."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, std if not name.startswith("output") else 1 / math.sqrt(model.cfg.dim),
                          generator=gen)
        for module in model.modules():
            if hasattr(module, "rope_cos"):
                cos, sin = rope_tables(model.cfg.head_dim, model.cfg.max_seq_len, model.cfg.rope_theta)
                module.rope_cos.copy_(cos)
                module.rope_sin.copy_(sin)


def build_titan_model(n_layers: int, *, compile: bool = False, float8: bool = False, mesh=None,
                      cfg: ModelConfig = LLAMA3_8B, device="cuda", seq_len: int | None = None):
    """Llama-3.1-8B-shaped model with ``n_layers`` blocks, set up as TorchTitan does (see the
    module docstring). Returns ``(model, optimizer)``."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    cfg = dataclasses.replace(cfg, n_layers=n_layers, max_seq_len=seq_len or cfg.max_seq_len)
    with torch.device("meta"):
        model = Transformer(cfg)
    model.to_empty(device=device)
    init_weights_on_device(model)
    if float8:
        convert_to_float8(model)
    for key in list(model.layers.keys()):
        block = SelectiveCheckpoint(model.layers[key])
        if compile:
            block.compile()           # in place: the module stays itself, so fully_shard applies
        model.layers[key] = block
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in model.layers.values():
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    # foreach=False: parameter by parameter. The multi-tensor (foreach) version allocates fp32
    # temporaries the size of the whole model, which one GPU holding everything cannot spare
    # (8 GPUs hold 1/8 each); the loop works on the DTensors of fully_shard as they are.
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                  foreach=False)
    return model, optimizer


def titan_step(model, optimizer, tokens, labels) -> float:
    """Forward, backward, AdamW step; returns the loss (a host sync)."""
    loss = loss_fn(model(tokens), labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def time_steps(model, optimizer, tokens, labels, warmup: int = 2, steps: int = 4) -> dict:
    """Median step time (ms, wall clock around synchronized steps), tokens/s and the peak
    memory allocated (GiB) over the timed steps."""
    for _ in range(warmup):
        titan_step(model, optimizer, tokens, labels)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        losses.append(titan_step(model, optimizer, tokens, labels))
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    ms = times[len(times) // 2]
    return {"step_ms": ms, "step_ms_all": times, "tokens_per_s": tokens.numel() / (ms / 1e3),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "reserved_gib": torch.cuda.max_memory_reserved() / 2**30, "losses": losses}
