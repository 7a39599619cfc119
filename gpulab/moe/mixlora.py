"""MixLoRA (arXiv 2404.15159): a mixture of LoRA experts on one frozen feed-forward layer.

A dense pretrained FFN ``y = W_down silu(W_up x)`` is frozen. Each of ``E`` experts is a
pair of LoRA adapters on it: expert ``e`` computes

    h_e = silu(W_up x + B_up[e] A_up[e] x)          y_e = W_down h_e + B_down[e] A_down[e] h_e

A top-k router (softmax, top-k, weights renormalised) mixes ``k`` experts per token and
the Switch-style auxiliary loss ``E * sum_i f_i P_i`` (MixLoRA's "load balance loss"; the
reference code's default ``router_aux_loss_coef`` is 0.001, in ``mixlora/config.py``, and
:func:`train` takes ``aux_coef``) keeps the experts in use. Only the router and the
adapters train: ``E * 2 * r * (H + F)`` parameters against ``2 H F`` frozen ones.

The base projection ``W_up x`` is the same for every expert, so it is computed once for
all tokens and only its low-rank corrections run per expert (MixLoRA's implementation
does the same for LLaMA's ``gate(x)`` and ``up(x)``); the frozen down projection acts on a
different ``h_e`` per expert, so it runs once per expert, as in MixLoRA.

Simplified: MixLoRA's reference (github.com/TUDB-Labs/MixLoRA, ``mixlora/model.py``) adapts
LLaMA's SwiGLU FFN ``down(silu(gate(x)) * up(x))`` and can multiply the input by jitter
noise uniform in ``[1 - j, 1 + j]`` in training (``jitter_noise``, 0 by default); this one
is a plain SiLU FFN (up and down) without noise.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .torch_impl import route

__all__ = ["LoRA", "MixLoRAFFN", "make_multitask_data", "train", "one_cpu_thread"]


@contextlib.contextmanager
def one_cpu_thread():
    """Run torch's CPU work on one thread inside the block (the setting is put back after).

    The chapter's toy models multiply matrices of a few dozen rows: many threads gain
    nothing there, and where several processes share a machine (a test run with one worker
    per core, each with a thread per core) their threads' spin-waits slow each step down
    many times over (the H200 machine's test run of 2026-12-01, 14 workers: 277 s for the
    lecture's MixLoRA cell, which takes about 5 s on a 2-core machine running it alone).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class LoRA(nn.Module):
    """``x -> (alpha / r) * B A x`` with ``B`` zero at the start (the adapter begins as a no-op)."""

    def __init__(self, d_in: int, d_out: int, rank: int, alpha: float):
        super().__init__()
        self.A = nn.Parameter(torch.randn(rank, d_in) / math.sqrt(d_in))
        self.B = nn.Parameter(torch.zeros(d_out, rank))
        self.scale = alpha / rank

    def forward(self, x):
        return (x @ self.A.t()) @ self.B.t() * self.scale


class MixLoRAFFN(nn.Module):
    """A frozen FFN plus ``num_experts`` LoRA experts and a top-``k`` router.

    ``forward(x)`` returns ``(y, aux_loss, routing)`` for ``x`` of shape (T, H).
    """

    def __init__(self, w_up: torch.Tensor, w_down: torch.Tensor, num_experts: int = 4, k: int = 2,
                 rank: int = 4, alpha: float = 8.0):
        super().__init__()
        F_, H = w_up.shape
        if w_down.shape != (H, F_):
            raise ValueError(f"w_down must have shape (H, F) = {(H, F_)}, got {tuple(w_down.shape)}")
        if not 1 <= k <= num_experts:
            raise ValueError(f"k must be between 1 and num_experts={num_experts}, got {k}")
        self.register_buffer("w_up", w_up.clone())       # frozen: buffers get no gradient
        self.register_buffer("w_down", w_down.clone())
        self.k = k
        self.router = nn.Linear(H, num_experts, bias=False)
        nn.init.normal_(self.router.weight, std=0.02)
        self.up = nn.ModuleList(LoRA(H, F_, rank, alpha) for _ in range(num_experts))
        self.down = nn.ModuleList(LoRA(F_, H, rank, alpha) for _ in range(num_experts))

    @property
    def num_experts(self) -> int:
        return len(self.up)

    def forward(self, x: torch.Tensor):
        routing = route(self.router(x), self.k)
        base_up = x @ self.w_up.t()                      # shared by every expert: once
        out = torch.zeros_like(x)
        for e in range(self.num_experts):
            tok, j = torch.nonzero(routing.topk_idx == e, as_tuple=True)
            if tok.numel() == 0:
                continue
            xe = x[tok]
            h = F.silu(base_up[tok] + self.up[e](xe))
            ye = h @ self.w_down.t() + self.down[e](h)
            out = out.index_add(0, tok, ye * routing.topk_weight[tok, j].unsqueeze(1))
        return out, routing.aux_loss, routing


def make_multitask_data(n_tasks: int = 4, hidden: int = 16, ffn: int = 32, n: int = 512,
                        rank: int = 2, seed: int = 0):
    """A synthetic multi-task problem a single low-rank adapter cannot solve well.

    A random "pretrained" FFN is shared; task ``c`` changes it by its own random low-rank
    update. Inputs of task ``c`` sit around their own centre, so a router can tell the
    tasks apart. Returns ``(w_up, w_down, x, y, task)``.
    """
    g = torch.Generator().manual_seed(seed)
    w_up = torch.randn(ffn, hidden, generator=g) / math.sqrt(hidden)
    w_down = torch.randn(hidden, ffn, generator=g) / math.sqrt(ffn)
    centres = 2.0 * torch.randn(n_tasks, hidden, generator=g)
    task = torch.randint(0, n_tasks, (n,), generator=g)
    x = centres[task] + 0.5 * torch.randn(n, hidden, generator=g)
    y = torch.empty(n, hidden)
    for c in range(n_tasks):
        du = torch.randn(ffn, rank, generator=g) @ torch.randn(rank, hidden, generator=g) / hidden
        dd = torch.randn(hidden, rank, generator=g) @ torch.randn(rank, ffn, generator=g) / ffn
        sel = task == c
        y[sel] = F.silu(x[sel] @ (w_up + du).t()) @ (w_down + dd).t()
    return w_up, w_down, x, y, task


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 150, lr: float = 1e-2,
          aux_coef: float = 0.01, batch: int = 128, seed: int = 0, progress: bool = False):
    """Adam on the mean squared error plus ``aux_coef`` times the auxiliary loss.

    ``model(x)`` returns ``(y, aux_loss, ...)`` (a MixLoRAFFN) or just ``y``. Returns the
    list of (task loss, aux loss) per step.
    """
    g = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    history = []
    steps_iter = range(steps)
    if progress:
        from tqdm.auto import tqdm

        steps_iter = tqdm(steps_iter, desc="training")
    with one_cpu_thread():
        for _ in steps_iter:
            idx = torch.randint(0, x.shape[0], (batch,), generator=g)
            out = model(x[idx])
            pred, aux = (out[0], out[1]) if isinstance(out, tuple) else (out, torch.zeros(()))
            loss = F.mse_loss(pred, y[idx])
            opt.zero_grad()
            (loss + aux_coef * aux).backward()
            opt.step()
            history.append((loss.item(), aux.item()))
    return history
