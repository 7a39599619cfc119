"""A small Llama-style model on synthetic tokens: the thing every parallelism trains.

Llama 3's block, as TorchTitan's ``torchtitan/models/llama3/model.py`` writes it, at toy
size: RMSNorm before attention and before the MLP, rotary position embedding (RoPE) on
queries and keys, grouped-query attention (GQA: ``n_kv_heads`` key/value heads shared by
``n_heads // n_kv_heads`` query heads each) with a causal mask, and the SwiGLU MLP
``w2(silu(w1 x) * w3 x)``. Module names follow TorchTitan's (``tok_embeddings``,
``layers.<i>.attention.wq``, ``feed_forward.w1``, ``norm``, ``output``), so its tensor
parallel plan applies unchanged; ``layers`` is a ``ModuleDict`` so a pipeline stage can
delete the blocks it does not own and keep the others' names.

    cfg = ModelConfig()                         # dim 64, 4 layers, 8 heads, 4 kv heads
    model = Transformer(cfg)                    # seeded: every rank builds the same weights
    tokens, labels = synthetic_batch(cfg, batch=8, seed=0)
    loss, grads = reference_step(cfg, tokens, labels)   # one process: what all must equal
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ModelConfig", "RMSNorm", "Attention", "FeedForward", "TransformerBlock", "Transformer",
           "rope_tables", "apply_rope", "synthetic_batch", "build_model", "reference_step", "loss_fn",
           "param_count", "LLAMA3_8B"]


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 96
    dim: int = 64
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int = 4
    ffn_dim: int = 96          # hidden width of SwiGLU (Llama 3 8B: 14336 for dim 4096)
    max_seq_len: int = 16
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0   # Llama 3 uses 500000
    seed: int = 0

    def __post_init__(self):
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} must be a multiple of n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} must be a multiple of n_kv_heads {self.n_kv_heads}")
        if (self.dim // self.n_heads) % 2:
            raise ValueError("the head dimension must be even (RoPE rotates pairs)")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


#: Llama 3.1 8B's shapes (TorchTitan's "8B" llama3 flavour): dim 4096, 32 layers, 32 heads,
#: 8 kv heads, SwiGLU width 14336, vocabulary 128256, rope theta 500000
LLAMA3_8B = ModelConfig(vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336,
                        max_seq_len=8192, rope_theta=500000.0)


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dimension."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(head_dim: int, seq_len: int, theta: float, dtype=torch.float32):
    """cos and sin, each ``[seq_len, head_dim // 2]``: angle ``pos * theta^(-2i/head_dim)``."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x, cos, sin):
    """Rotate each pair (x[2i], x[2i+1]) of ``x [batch, seq, heads, head_dim]`` by its angle
    (the interleaved pairing of Llama's complex-number form)."""
    seq = x.shape[1]
    cos, sin = cos[:seq, None, :].to(x.dtype), sin[:seq, None, :].to(x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


class Attention(nn.Module):
    """Causal GQA with RoPE. The number of heads is read from the weights' shape
    (``view(..., -1, head_dim)``), so a tensor-parallel shard of wq/wk/wv runs its own
    heads unchanged."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.head_dim, self.n_rep = cfg.head_dim, cfg.n_heads // cfg.n_kv_heads
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, x):
        b, s, _ = x.shape
        q = self.wq(x).view(b, s, -1, self.head_dim)
        k = self.wk(x).view(b, s, -1, self.head_dim)
        v = self.wv(x).view(b, s, -1, self.head_dim)
        q, k = apply_rope(q, self.rope_cos, self.rope_sin), apply_rope(k, self.rope_cos, self.rope_sin)
        # each key/value head serves n_rep query heads
        k, v = k.repeat_interleave(self.n_rep, dim=2), v.repeat_interleave(self.n_rep, dim=2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             is_causal=True)
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))


class FeedForward(nn.Module):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.w2 = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x):
        h = x + self.attention(self.attention_norm(x))
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """Embedding, ``n_layers`` blocks, final norm, output projection to logits.

    A pipeline stage is this module with some parts set to None (``tok_embeddings`` on all
    stages but the first, ``norm``/``output`` on all but the last, foreign blocks deleted):
    ``forward`` skips what is missing, as TorchTitan's does."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleDict({str(i): TransformerBlock(cfg) for i in range(cfg.n_layers)})
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)

    def forward(self, tokens):
        h = self.tok_embeddings(tokens) if self.tok_embeddings is not None else tokens
        for block in self.layers.values():
            h = block(h)
        h = self.norm(h) if self.norm is not None else h
        return self.output(h) if self.output is not None else h


def _init_weights(model: Transformer, seed: int) -> None:
    """Deterministic init from ``seed`` (the same on every rank): normal(0, 0.02) for
    matrices and the embedding, ones for norms, output layer scaled by 1/sqrt(dim)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        with torch.no_grad():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                std = 0.02 if not name.startswith("output") else 1 / math.sqrt(model.cfg.dim)
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).mul(std).to(p.dtype))


def build_model(cfg: ModelConfig, dtype=torch.float32, device="cpu") -> Transformer:
    """The model with the deterministic weights of ``cfg.seed``: every rank that builds it
    holds the same numbers, so no broadcast is needed."""
    model = Transformer(cfg)
    _init_weights(model, cfg.seed)
    return model.to(dtype=dtype, device=device)


def synthetic_batch(cfg: ModelConfig, batch: int, seq_len: int | None = None, seed: int = 0,
                    device="cpu"):
    """Random tokens ``[batch, seq]`` and next-token labels (the tokens shifted by one)."""
    seq_len = cfg.max_seq_len if seq_len is None else seq_len
    if not 1 <= seq_len <= cfg.max_seq_len:
        raise ValueError(f"seq_len must be in 1..{cfg.max_seq_len}, got {seq_len}")
    if batch < 1:
        raise ValueError(f"batch must be positive, got {batch}")
    gen = torch.Generator().manual_seed(seed)
    stream = torch.randint(0, cfg.vocab_size, (batch, seq_len + 1), generator=gen)
    # contiguous copies: torch.distributed.pipelining checks the strides of stage inputs
    return stream[:, :-1].contiguous().to(device), stream[:, 1:].contiguous().to(device)


def loss_fn(logits, labels):
    """Mean cross-entropy over every token of the batch."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(0, 1))


def reference_step(cfg: ModelConfig, tokens, labels, dtype=torch.float32):
    """One process, whole batch: ``(loss, {name: grad})``. Every parallelism must give the
    same loss and gradients (to float32 rounding)."""
    model = build_model(cfg, dtype=dtype)
    loss = loss_fn(model(tokens), labels)
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def param_count(cfg: ModelConfig) -> int:
    """Parameters of the model (embedding and output counted separately, as Llama does)."""
    kv = cfg.n_kv_heads * cfg.head_dim
    block = 2 * cfg.dim + cfg.dim * (2 * cfg.dim + 2 * kv) + 3 * cfg.dim * cfg.ffn_dim
    return cfg.n_layers * block + 2 * cfg.vocab_size * cfg.dim + cfg.dim
