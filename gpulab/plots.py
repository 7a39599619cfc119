"""Pictures for the lectures, all in one place: plotly figures and source listings."""
from __future__ import annotations

import inspect
import textwrap

import numpy as np

__all__ = ["show_source", "thread_grid_figure", "timing_figure", "roofline_figure"]


def show_source(obj) -> None:
    """Display the source of a function, class or gpulab kernel, syntax-highlighted.

    A string is shown as it is (for generated code, such as a fused kernel's source).
    """
    from IPython.display import HTML, display
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    if isinstance(obj, str):
        source = obj
    else:
        source = textwrap.dedent(inspect.getsource(getattr(obj, "py_func", obj)))
    formatter = HtmlFormatter(noclasses=True, style="friendly")
    display(HTML(highlight(source, PythonLexer(), formatter)))


def thread_grid_figure(n: int, block: int, title: str | None = None):
    """Which block and thread handles each of ``n`` elements, for a 1-D launch.

    Elements past ``n`` in the last block are the threads the bounds check stops.
    """
    import plotly.graph_objects as go

    blocks = -(-n // block)
    idx = np.arange(blocks * block)
    block_id, thread_id = idx // block, idx % block
    in_range = idx < n
    fig = go.Figure()
    for inside, name, symbol in ((True, "writes out[i]", "square"), (False, "i >= n: returns", "x")):
        sel = in_range == inside
        fig.add_trace(go.Scatter(
            x=thread_id[sel], y=block_id[sel], mode="markers", name=name,
            marker=dict(symbol=symbol, size=14, color=block_id[sel] if inside else "lightgray",
                        colorscale="Viridis", line=dict(width=1, color="white")),
            text=[f"i = {i}" for i in idx[sel]],
            hovertemplate="block %{y}, thread %{x}<br>%{text}<extra></extra>"))
    fig.update_layout(
        title=title or f"{n} elements, blocks of {block} threads: i = blockIdx.x * blockDim.x + threadIdx.x",
        xaxis_title="threadIdx.x", yaxis_title="blockIdx.x", yaxis_autorange="reversed",
        height=180 + 40 * blocks, legend=dict(orientation="h", y=-0.25))
    return fig


def timing_figure(x, series: dict[str, list[float]], xlabel: str, ylabel: str = "time (ms)",
                  title: str = "", log_x: bool = True, log_y: bool = True):
    """Lines of measured values (one per implementation) against a problem parameter."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, ys in series.items():
        fig.add_trace(go.Scatter(x=list(x), y=list(ys), mode="lines+markers", name=name))
    fig.update_layout(title=title, xaxis_title=xlabel, yaxis_title=ylabel, height=420)
    if log_x:
        fig.update_xaxes(type="log")
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def roofline_figure(peaks, points: dict[str, tuple[float, float]], title: str = ""):
    """A roofline: attainable GFLOP/s against arithmetic intensity, with measured points.

    ``points`` maps a label to ``(intensity in FLOP/byte, achieved GFLOP/s)``.
    """
    import plotly.graph_objects as go

    lo = min([0.01] + [p[0] / 4 for p in points.values() if p[0] > 0])
    hi = max([peaks.ridge * 8] + [p[0] * 4 for p in points.values()])
    xs = np.logspace(np.log10(lo), np.log10(hi), 200)
    roof = np.minimum(peaks.fp32_gflops, xs * peaks.copy_gbps)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=xs, y=roof, mode="lines", name="roofline", line=dict(color="black")))
    for label, (ai, gflops) in points.items():
        fig.add_trace(go.Scatter(x=[ai], y=[gflops], mode="markers+text", name=label, text=[label],
                                 textposition="top center", marker=dict(size=12)))
    fig.update_layout(
        title=title or f"Roofline of {peaks.device}: {peaks.copy_gbps:.0f} GB/s, "
                       f"{peaks.fp32_gflops:.0f} GFLOP/s FP32 ({peaks.clock})",
        xaxis_title="arithmetic intensity (FLOP/byte)", yaxis_title="GFLOP/s", height=450)
    fig.update_xaxes(type="log")
    fig.update_yaxes(type="log")
    return fig
