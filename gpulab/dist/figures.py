"""Pictures for the lecture: pipeline timelines and who holds what (plotly)."""
from __future__ import annotations

__all__ = ["timeline_figure", "holdings", "holdings_figure"]


def timeline_figure(schedules, title: str = "", forward: float = 1.0, backward: float = 2.0):
    """A Gantt chart of a pipeline schedule: one row per stage, forwards light, backwards
    dark, each box labelled with its micro-batch; the white gaps are the bubble."""
    import plotly.graph_objects as go

    from .pipeline import simulate_timeline

    times = simulate_timeline(schedules, forward, backward)
    if isinstance(times, str):
        raise ValueError(f"this schedule cannot run: {times}")
    fig = go.Figure()
    for kind, colour in (("F", "#8ecae6"), ("B", "#fb8500")):
        items = [(s, j, a, b) for (s, k, j), (a, b) in times.items() if k == kind]
        fig.add_bar(y=[f"stage {s}" for s, *_ in items], x=[b - a for *_, a, b in items],
                    base=[a for *_, a, _ in items], orientation="h", marker_color=colour,
                    text=[str(j) for _, j, *_ in items], textposition="inside",
                    name="forward" if kind == "F" else "backward")
    fig.update_layout(barmode="overlay", title=title, xaxis_title="time (forward = 1)",
                      yaxis=dict(autorange="reversed"), height=120 + 40 * len(schedules))
    return fig


def holdings(num_params: int, world: int, activations_gib: float = 0.0) -> dict:
    """GiB of model state (bf16 parameter and gradient, fp32 master, Adam m and v: 16 bytes a
    parameter) one rank holds under each parallelism of ``world`` ranks, split by kind.
    DDP replicates everything; ZeRO-3 shards all of it; TP and PP split the parameters
    (and so everything else) N ways but keep a full copy of what they hold."""
    g = num_params / 2**30
    full = {"parameters (bf16)": 2 * g, "gradients (bf16)": 2 * g, "fp32 master + Adam m, v": 12 * g}
    split = {k: v / world for k, v in full.items()}
    return {"DDP": full, "FSDP / ZeRO-3": split, "tensor parallel": split, "pipeline": split,
            "ZeRO-1 (optimizer only)": {**{k: full[k] for k in list(full)[:2]},
                                        "fp32 master + Adam m, v": full["fp32 master + Adam m, v"] / world}}


def holdings_figure(num_params: int, world: int, title: str = ""):
    """Stacked bars of :func:`holdings`."""
    import plotly.graph_objects as go

    data = holdings(num_params, world)
    kinds = list(next(iter(data.values())))
    fig = go.Figure([go.Bar(name=k, x=list(data), y=[data[s][k] for s in data]) for k in kinds])
    fig.update_layout(barmode="stack", title=title, yaxis_title="GiB per rank (model state)", height=380)
    return fig
