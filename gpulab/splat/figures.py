"""Plotly pictures of the splatting pipeline (the lecture's figures)."""
from __future__ import annotations

import math

import numpy as np
import torch

from .constants import TILE
from .torch_impl import tile_grid, tile_rects

__all__ = ["image_figure", "images_figure", "ellipse_figure", "tiles_heatmap", "keys_figure",
           "pixel_trace_figure", "backward_trace", "backward_trace_figure", "stage_times_figure", "to_uint8"]


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[H, W, 3] float image in [0, 1] -> uint8 array for go.Image."""
    return (image.detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)


def image_figure(image: torch.Tensor, title: str = "", height: int = 320):
    import plotly.graph_objects as go

    fig = go.Figure(go.Image(z=to_uint8(image)))
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def images_figure(images, titles, height: int = 300):
    """A row of images with titles."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(images), subplot_titles=list(titles))
    for i, img in enumerate(images):
        fig.add_trace(go.Image(z=to_uint8(img)), 1, i + 1)
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def ellipse_figure(mean2d, conic, radius: int, width: int, height: int, title: str = ""):
    """One splat on the tile grid: its 1, 2 and 3 sigma ellipses, the square of half-side
    ``radius`` that binning uses, and the tiles that square touches (shaded)."""
    import plotly.graph_objects as go

    mean2d = torch.as_tensor(mean2d, dtype=torch.float64)
    a, b, c = (float(v) for v in conic)
    inv = torch.linalg.inv(torch.tensor([[a, b], [b, c]], dtype=torch.float64))   # the 2D covariance
    evals, evecs = torch.linalg.eigh(inv)
    t = torch.linspace(0, 2 * math.pi, 100, dtype=torch.float64)
    circle = torch.stack([torch.cos(t), torch.sin(t)])
    fig = go.Figure()
    x0, y0, x1, y1 = (int(v) for v in tile_rects(mean2d[None], torch.tensor([radius]), width, height))
    for ty in range(y0, y1):
        for tx in range(x0, x1):
            fig.add_shape(type="rect", x0=tx * TILE, x1=(tx + 1) * TILE, y0=ty * TILE, y1=(ty + 1) * TILE,
                          fillcolor="rgba(255,165,0,0.25)", line=dict(width=0))
    tiles_x, tiles_y = tile_grid(width, height)
    for i in range(tiles_x + 1):
        fig.add_shape(type="line", x0=i * TILE, x1=i * TILE, y0=0, y1=tiles_y * TILE, line=dict(color="gray", width=1))
    for j in range(tiles_y + 1):
        fig.add_shape(type="line", x0=0, x1=tiles_x * TILE, y0=j * TILE, y1=j * TILE, line=dict(color="gray", width=1))
    for k in (1, 2, 3):
        pts = mean2d[:, None] + evecs @ (k * torch.sqrt(evals)[:, None] * circle)
        fig.add_trace(go.Scatter(x=pts[0], y=pts[1], mode="lines", name=f"{k} sigma"))
    mx, my = float(mean2d[0]), float(mean2d[1])
    fig.add_shape(type="rect", x0=mx - radius, x1=mx + radius, y0=my - radius, y1=my + radius,
                  line=dict(color="red", dash="dash"))
    fig.add_trace(go.Scatter(x=[mx], y=[my], mode="markers", name="mean", marker=dict(color="black")))
    fig.update_layout(title=title or f"radius {radius} px: touches {(x1 - x0) * (y1 - y0)} tiles (shaded)",
                      height=420, xaxis=dict(range=[0, tiles_x * TILE], scaleanchor="y"),
                      yaxis=dict(range=[tiles_y * TILE, 0]))
    return fig


def tiles_heatmap(ranges: torch.Tensor, width: int, height: int, title: str = "Gaussians per tile"):
    import plotly.graph_objects as go

    tiles_x, tiles_y = tile_grid(width, height)
    counts = (ranges[:, 1] - ranges[:, 0]).reshape(tiles_y, tiles_x).cpu().numpy()
    fig = go.Figure(go.Heatmap(z=counts, colorscale="Viridis", colorbar=dict(title="count")))
    fig.update_layout(title=f"{title} (max {counts.max()}, mean {counts.mean():.1f})", height=360,
                      yaxis=dict(autorange="reversed", scaleanchor="x"), xaxis_title="tile x", yaxis_title="tile y")
    return fig


def keys_figure(sorted_keys: torch.Tensor, n: int = 300):
    """The first ``n`` sorted keys: the tile id (high 32 bits) steps up, the depth (low 32
    bits, shown as the float it encodes) rises within each tile's run."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    k = sorted_keys[:n].cpu()
    tiles = (k >> 32).numpy()
    depth = (k & 0xFFFFFFFF).to(torch.int32).view(torch.float32).numpy()
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, subplot_titles=("tile id = key >> 32", "depth = low 32 bits as float32"))
    fig.add_trace(go.Scatter(y=tiles, mode="lines+markers", marker=dict(size=3), name="tile"), 1, 1)
    fig.add_trace(go.Scatter(y=depth, mode="markers", marker=dict(size=3, color=tiles, colorscale="Turbo"), name="depth"), 2, 1)
    fig.update_layout(height=420, showlegend=False, xaxis2_title="position in the sorted list")
    return fig


def pixel_trace_figure(trace: dict, title: str = ""):
    """What one thread sees along its tile's list: alpha, transmittance before, weight."""
    import plotly.graph_objects as go

    x = list(range(len(trace["ids"])))
    colors = {"used": "seagreen", "skipped: alpha < 1/255": "lightgray",
              "stop: T would fall below 1e-4": "crimson", "after stop": "gainsboro"}
    fig = go.Figure()
    fig.add_trace(go.Bar(x=x, y=trace["alpha"], name="alpha", marker_color=[colors[s] for s in trace["status"]],
                         hovertext=[f"Gaussian {g}: {s}" for g, s in zip(trace["ids"], trace["status"])]))
    fig.add_trace(go.Scatter(x=x, y=trace["T_before"], name="T before", mode="lines+markers"))
    fig.add_trace(go.Scatter(x=x, y=trace["weight"], name="weight alpha*T", mode="markers"))
    fig.update_layout(title=title or "one pixel, front to back (green: used, grey: skipped, red: stop)",
                      xaxis_title="position in the tile's list", height=380)
    return fig


def backward_trace(trace: dict, colors) -> dict:
    """The backward pass of one pixel, from a forward :func:`~gpulab.splat.torch_impl.trace_pixel`
    and the listed Gaussians' grey levels ``colors[id]`` (dL/dC = 1, black background).

    Walks the list back to front from the last Gaussian used, as the kernel does: ``T`` is
    divided back, ``T_before = T_after / (1 - alpha)``, and ``behind`` is the colour the
    Gaussians behind added. Returns per list position: ``T_recovered`` (None where skipped),
    ``behind`` and ``dC_dalpha = c T_before - behind / (1 - alpha)``; and ``last`` (the position of
    the last contributor, -1 if none), where the walk starts.
    """
    n = len(trace["ids"])
    used = [s == "used" for s in trace["status"]]
    last = max((k for k in range(n) if used[k]), default=-1)
    T, behind = trace["T_final"], 0.0
    out = {"T_recovered": [None] * n, "behind": [None] * n, "dC_dalpha": [None] * n, "last": last}
    for k in range(last, -1, -1):
        if not used[k]:
            continue
        a, c = trace["alpha"][k], float(colors[trace["ids"][k]])
        T = T / (1.0 - a)
        out["T_recovered"][k], out["behind"][k] = T, behind
        out["dC_dalpha"][k] = c * T - behind / (1.0 - a)
        behind += c * a * T
    return out


def backward_trace_figure(trace: dict, colors, title: str = ""):
    """Forward (front to back) and backward (back to front from the last contributor) along
    one pixel's list: the transmittance the forward pass had, the one the backward pass
    recovers by division, and the gradient of the pixel's colour with respect to each alpha."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    back = backward_trace(trace, colors)
    x = list(range(len(trace["ids"])))
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12, subplot_titles=(
        "forward: T before each Gaussian, front to back (the pass stores only T_final and the last position)",
        "backward: from the last contributor back to the front, T = T_after / (1 - alpha)"))
    fig.add_trace(go.Scatter(x=x, y=trace["T_before"], mode="lines+markers", name="T (forward)"), 1, 1)
    used_x = [k for k in x if back["T_recovered"][k] is not None]
    fig.add_trace(go.Scatter(x=used_x, y=[back["T_recovered"][k] for k in used_x], mode="markers",
                             marker=dict(symbol="x", size=9), name="T recovered (backward)"), 1, 1)
    fig.add_trace(go.Bar(x=used_x, y=[back["dC_dalpha"][k] for k in used_x], name="dC/d alpha"), 2, 1)
    fig.add_trace(go.Scatter(x=used_x, y=[back["behind"][k] for k in used_x], mode="lines+markers",
                             name="colour behind"), 2, 1)
    if back["last"] >= 0:
        for row in (1, 2):
            fig.add_vline(x=back["last"], line=dict(color="crimson", dash="dash"), row=row, col=1)
        fig.add_annotation(x=back["last"], y=1.0, xref="x", yref="y", text="last contributor: the backward starts here",
                           showarrow=True, ax=-120, ay=-20)
        fig.add_annotation(x=0, y=0, xref="x2", yref="y2", ax=back["last"], ay=0, axref="x2", ayref="y2",
                           showarrow=True, arrowhead=3, text="")
    fig.update_layout(title=title or "one pixel's list, forward and backward", height=520,
                      xaxis2_title="position in the tile's list")
    return fig


def stage_times_figure(rows: dict[str, dict[str, float]], title: str = "time per stage (ms)"):
    """Stacked bars: ``rows[label][stage] = ms``."""
    import plotly.graph_objects as go

    stages = list(next(iter(rows.values())).keys())
    fig = go.Figure()
    for s in stages:
        fig.add_trace(go.Bar(name=s, x=list(rows), y=[rows[r][s] for r in rows]))
    fig.update_layout(barmode="stack", title=title, yaxis_title="ms", height=380)
    return fig
