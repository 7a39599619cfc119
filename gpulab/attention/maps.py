"""Tile maps for the lecture: which tiles a kernel skips, masks or computes whole, and SLA's
critical / marginal / negligible blocks, as matrices and plotly heatmaps."""
from __future__ import annotations

import math

import torch

from .torch_impl import _check_causal

__all__ = ["SKIPPED", "MASKED", "FULL", "causal_tile_map", "tile_map_figure", "sla_map_figure", "attention_bytes"]

SKIPPED, MASKED, FULL = 0, 1, 2


def causal_tile_map(nq: int, nk: int, blk_q: int, blk_k: int, causal="bottom_right") -> torch.Tensor:
    """``[ceil(nq/blk_q), ceil(nk/blk_k)]``: SKIPPED (0) for tiles wholly above the diagonal
    (never loaded), MASKED (1) for tiles the diagonal or the ragged end crosses (a mask from
    indices), FULL (2) for tiles every query of which sees every key (no mask at all); the
    rule the flash kernel applies."""
    _check_causal(causal)
    offset = 0 if causal in (None, "top_left") else nk - nq
    out = torch.empty(math.ceil(nq / blk_q), math.ceil(nk / blk_k), dtype=torch.int64)
    for i in range(out.shape[0]):
        r0, r1 = i * blk_q, min(nq, (i + 1) * blk_q) - 1
        for j in range(out.shape[1]):
            c0, c1 = j * blk_k, (j + 1) * blk_k - 1
            if causal is None:
                out[i, j] = FULL if c1 < nk else MASKED
            elif c0 > r1 + offset:
                out[i, j] = SKIPPED
            elif c1 <= r0 + offset and c1 < nk:
                out[i, j] = FULL
            else:
                out[i, j] = MASKED
    return out


def _heatmap(z, names, colors, title):
    import plotly.graph_objects as go

    n = len(names)
    scale = []
    for k, c in enumerate(colors):
        scale += [[k / n, c], [(k + 1) / n, c]]
    fig = go.Figure(go.Heatmap(z=z.tolist(), zmin=-0.5, zmax=n - 0.5, colorscale=scale, xgap=1, ygap=1,
                               colorbar=dict(tickvals=list(range(n)), ticktext=names)))
    fig.update_layout(title=title, xaxis_title="key tile", yaxis_title="query tile", height=320, width=520,
                      yaxis_autorange="reversed")
    return fig


def tile_map_figure(nq, nk, blk_q, blk_k, causal="bottom_right"):
    m = causal_tile_map(nq, nk, blk_q, blk_k, causal)
    return _heatmap(m, ["skipped", "masked (diagonal or end)", "full"], ["#eeeeee", "#f4a261", "#2a9d8f"],
                    f"{causal or 'no'} causal mask: Nq = {nq}, Nk = {nk}, tiles {blk_q} x {blk_k}")


def sla_map_figure(labels, title="SLA block map"):
    """labels [Mb, Nb] with 0 negligible, 1 marginal, 2 critical."""
    return _heatmap(labels.to(torch.int64), ["negligible (skipped)", "marginal (linear)", "critical (exact)"],
                    ["#eeeeee", "#e9c46a", "#e76f51"], title)


def attention_bytes(b, h, n, d, bytes_per=4) -> dict:
    """HBM bytes a forward pass needs: q, k, v, O read or written once (+ LSE) for the fused
    kernel, and the N x N score and probability matrices on top for an unfused one."""
    io = 4 * b * h * n * d * bytes_per + b * h * n * 4
    return {"fused": io, "unfused": io + 2 * b * h * n * n * bytes_per}
