"""A small MoE language model trained on synthetic text, to record real routing traces.

Cache policies only mean something on routing that a trained model produces: experts
specialise, and consecutive tokens of one "topic" keep choosing the same ones. The data
here is a hidden Markov source: a topic that switches rarely, tokens drawn mostly from
the topic's own part of the vocabulary. A model of ``layers`` blocks (each a residual
MoE FFN with a top-k router, a causal mean of earlier tokens as the cheapest possible
"attention") learns next-token prediction on it in a few seconds on a CPU.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .mixlora import one_cpu_thread
from .offload import RoutingTrace
from .torch_impl import load_balancing_loss

__all__ = ["topic_text", "TinyMoELM", "train_lm", "record_trace"]


def topic_text(batch: int, length: int, vocab: int = 64, topics: int = 8, switch: float = 0.03,
               purity: float = 0.9, generator: torch.Generator | None = None) -> torch.Tensor:
    """(batch, length) token ids from a topic Markov source (topic kept with prob 1 - switch)."""
    g = generator or torch.Generator().manual_seed(0)
    per_topic = vocab // topics
    topic = torch.randint(0, topics, (batch,), generator=g)
    out = torch.empty(batch, length, dtype=torch.long)
    for i in range(length):
        change = torch.rand(batch, generator=g) < switch
        topic = torch.where(change, torch.randint(0, topics, (batch,), generator=g), topic)
        own = topic * per_topic + torch.randint(0, per_topic, (batch,), generator=g)
        anywhere = torch.randint(0, vocab, (batch,), generator=g)
        out[:, i] = torch.where(torch.rand(batch, generator=g) < purity, own, anywhere)
    return out


class MoEBlock(nn.Module):
    def __init__(self, dim, ffn, experts, k):
        super().__init__()
        self.k = k
        self.norm = nn.LayerNorm(dim)
        self.router = nn.Linear(dim, experts, bias=False)
        self.w1 = nn.Parameter(torch.randn(experts, dim, ffn) / dim**0.5)
        self.w2 = nn.Parameter(torch.randn(experts, ffn, dim) / ffn**0.5)

    def forward(self, x):                           # x: (N, dim)
        h = self.norm(x)
        probs = torch.softmax(self.router(h), -1)
        top_p, top_i = torch.topk(probs, self.k, -1)
        w = top_p / top_p.sum(-1, keepdim=True)
        out = torch.zeros_like(x)
        for e in range(self.w1.shape[0]):
            tok, j = torch.nonzero(top_i == e, as_tuple=True)
            if tok.numel():
                y = F.silu(h[tok] @ self.w1[e]) @ self.w2[e]
                out = out.index_add(0, tok, y * w[tok, j, None])
        counts = torch.bincount(top_i.flatten(), minlength=self.w1.shape[0])
        return x + out, probs, top_i, load_balancing_loss(probs, counts)


class TinyMoELM(nn.Module):
    """Embedding, ``layers`` x (causal mean mixing + MoE block), linear head."""

    def __init__(self, vocab=64, dim=32, ffn=64, layers=4, experts=8, k=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))
        self.blocks = nn.ModuleList(MoEBlock(dim, ffn, experts, k) for _ in range(layers))
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens):                      # tokens: (B, S)
        B, S = tokens.shape
        x = self.embed(tokens)
        steps = torch.arange(1, S + 1, dtype=x.dtype).view(1, S, 1)
        routing, aux = [], 0.0
        for mix, block in zip(self.mix, self.blocks):
            context = x.cumsum(1) / steps           # mean of the tokens so far (causal)
            x = x + torch.tanh(mix(context))
            flat, probs, top_i, a = block(x.reshape(B * S, -1))
            x = flat.view(B, S, -1)
            routing.append((probs.view(B, S, -1), top_i.view(B, S, -1)))
            aux = aux + a
        return self.head(x), routing, aux


def train_lm(model: TinyMoELM, steps: int = 60, batch: int = 16, length: int = 48, lr: float = 3e-3,
             aux_coef: float = 0.01, seed: int = 0, progress: bool = False, **text_kw):
    """Next-token training on :func:`topic_text`; returns the loss per step."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    it = range(steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="training the tiny MoE")
    vocab = model.head.out_features
    with one_cpu_thread():                          # a toy model: threads only get in the way
        for _ in it:
            tokens = topic_text(batch, length + 1, vocab=vocab, generator=g, **text_kw)
            logits, _, aux = model(tokens[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1))
            opt.zero_grad()
            (loss + aux_coef * aux).backward()
            opt.step()
            losses.append(loss.item())
    return losses


@torch.no_grad()
def record_trace(model: TinyMoELM, tokens: torch.Tensor, tokens_per_step: int = 1) -> RoutingTrace:
    """Routing of one sequence ``tokens`` (S,), as steps of ``tokens_per_step`` tokens.

    ``tokens_per_step = 1`` is decoding (one token through all layers, then the next);
    larger values are prefill chunks.
    """
    _, routing, _ = model(tokens.view(1, -1))
    S = tokens.numel() // tokens_per_step * tokens_per_step
    probs = torch.stack([p[0, :S] for p, _ in routing])          # (L, S, E)
    topk = torch.stack([t[0, :S] for _, t in routing])           # (L, S, k)
    L, _, E = probs.shape
    k = topk.shape[2]
    probs = probs.view(L, -1, tokens_per_step, E).permute(1, 0, 2, 3).contiguous()
    topk = topk.view(L, -1, tokens_per_step, k).permute(1, 0, 2, 3).contiguous()
    return RoutingTrace(topk, probs)
