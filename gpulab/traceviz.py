"""Pictures of a trace (:func:`gpulab.trace`): who touched which element, and how warps did.

    with gpulab.trace() as t:
        kernel[grid, block](x, out)
    traceviz.access_figure(t).show()          # each array: which thread wrote each element
    traceviz.phase_figure(t, "cache").show()  # a shared array, barrier phase by phase
    traceviz.warp_figure(t).show()            # sectors and bank wavefronts per warp access
    traceviz.explore(t)                       # the same, with a picker for launch, block, thread

Every figure is a plotly figure; hovering a cell says which thread of which block touched
the element, at which step, barrier phase and kernel line, and the value. Core layer: it
knows :mod:`gpulab.simtrace` and no chapter.
"""
from __future__ import annotations

import math

import numpy as np

from .simtrace import Recording, _element, _fmt, _linear, _warp_accesses

__all__ = ["access_figure", "phase_figure", "warp_figure", "explore"]

_COLOR_BY = ("thread", "block", "phase", "step")


def _require_trace(rec) -> None:
    if not isinstance(rec, Recording):
        raise TypeError(f"pass the trace that `with gpulab.trace() as t:` gives, got {type(rec).__name__}")
    if not rec.enabled:
        raise ValueError("this trace is empty: on a GPU kernels run as machine code that Python cannot "
                         "watch; run the notebook with GPULAB_MODE=sim to see traces")
    if not rec.launches:
        raise ValueError("this trace saw no kernel launch: launch the kernel inside the `with` block")


def _as_grid(shape: tuple, wrap: int) -> tuple[int, int]:
    """Rows and columns a picture of an array of ``shape`` has: 1-D arrays wrap, 3-D and
    more keep the first index as the row (an image's [H, W, C] is H rows of W * C)."""
    if len(shape) == 1:
        cols = min(shape[0], wrap)
        return max(1, math.ceil(shape[0] / cols)), cols
    return shape[0], int(np.prod(shape[1:]))


def _cell(index: tuple, shape: tuple, wrap: int) -> tuple[int, int]:
    if len(shape) == 1:
        cols = min(shape[0], wrap)
        return divmod(index[0], cols)
    if len(shape) == 2:
        return index[0], index[1]
    return index[0], int(np.ravel_multi_index(index[1:], shape[1:]))


def _key(row, launch, color: str) -> int:
    if color == "thread":
        return _linear(row.thread, launch.block)
    if color == "block":
        return _linear(row.block, launch.grid)
    if color == "phase":
        return row.phase
    return row.step


def _describe(row) -> str:
    verb = "read" if row.kind == "read" else "written"
    value = "" if row.value is None else f" = {_short(row.value)}"
    atomic = " (atomic)" if row.atomic else ""
    return (f"{verb}{value} by thread {_fmt(row.thread)} of block {_fmt(row.block)}{atomic}, "
            f"step {row.step}, phase {row.phase}, line {row.line}")


def _short(value) -> str:
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return str(value)


def _pick(rows, launch, kind, block, thread, phase):
    picked = []
    for r in rows:
        if kind is not None and r.kind != kind:
            continue
        if block is not None and _linear(r.block, launch.grid) != block:
            continue
        if thread is not None and _linear(r.thread, launch.block) != thread:
            continue
        if phase is not None and r.phase != phase:
            continue
        picked.append(r)
    return picked


def access_figure(rec: Recording, launch: int = 0, kind: str = "write", color: str = "thread",
                  block: int | None = None, thread: int | None = None, phase: int | None = None,
                  wrap: int = 32, arrays: list | None = None):
    """One heatmap per array of launch ``launch``: each element coloured by the thread (or
    block, barrier phase, step: ``color``) that made its last ``kind`` access ("read" or
    "write"). ``block``, ``thread`` (linear indices, x fastest) and ``phase`` keep only
    those accesses. Elements several threads wrote are crossed (a race unless atomic or
    ordered by a barrier), orange rings mark elements of uncoalesced or bank-conflicted warp
    accesses (:meth:`Recording.uncoalesced`, :meth:`Recording.bank_conflicts`), and blank
    ones were never touched. 1-D arrays wrap every ``wrap`` elements, so with ``wrap=32`` a row is what one warp of a 1-D block touches; an array of
    three or more dimensions shows its first index as the row. ``arrays`` names the arrays
    to draw (by default every one the launch made a ``kind`` access to).
    Shared arrays are shown for ``block`` (block 0 when none is picked): each block has its own."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    _require_trace(rec)
    if color not in _COLOR_BY:
        raise ValueError(f"color must be one of {_COLOR_BY}, got {color!r}")
    if kind not in ("read", "write"):
        raise ValueError(f"kind must be 'read' or 'write', got {kind!r}")
    trace = rec.launches[launch]
    arrays_named = None if arrays is None else set(arrays)
    shared_block = block if block is not None else 0
    rows = rec.accesses(launch)
    shared_arrays = {a.name: a for a in reversed(list(trace.shared.values()))}  # one per name (per block)
    arrays = [(a, "global") for a in trace.arrays] + [(a, "shared") for a in shared_arrays.values()]
    arrays = [(a, sp) for a, sp in arrays if (arrays_named is None or a.name in arrays_named)
              and any(r.array == a.name and r.space == sp and r.kind == kind for r in rows)]
    if not arrays:
        raise ValueError(f"launch {launch} ({trace.kernel}) made no {kind} of an array")
    costly = _costly_elements(trace, kind, block, thread, phase)
    titles = []
    pictures = []
    for arr, space in arrays:
        keep_block = shared_block if space == "shared" else block
        picked = [r for r in _pick(rows, trace, kind, keep_block, thread, phase)
                  if r.array == arr.name and r.space == space and r.index is not None]
        n_rows, n_cols = _as_grid(arr.shape, wrap)
        z = np.full((n_rows, n_cols), np.nan)
        text = [["" for _ in range(n_cols)] for _ in range(n_rows)]
        touched_by: dict = {}
        for r in picked:
            i, j = _cell(r.index, arr.shape, wrap)
            z[i, j] = _key(r, trace, color)
            touched_by.setdefault((i, j), set()).add((r.block, r.thread))
            lines = text[i][j].count("<br>")
            if lines < 3:
                text[i][j] += ("<br>" if text[i][j] else f"{_element(arr.name, r.index)}<br>") + _describe(r)
            elif lines == 3:
                text[i][j] += "<br>..."
        for i in range(n_rows):
            for j in range(n_cols):
                if not text[i][j]:
                    text[i][j] = "never " + ("read" if kind == "read" else "written")
        # several readers of one element is a broadcast; several writers, a race unless ordered
        crowded = [(i, j) for (i, j), who in touched_by.items() if len(who) > 1] if kind == "write" else []
        slow = sorted({_cell(index, arr.shape, wrap) for (sp, name, index, blk) in costly
                       if sp == space and name == arr.name and (space == "global" or blk == shared_block)})
        untouched = int(np.isnan(z).sum()) - (n_rows * n_cols - int(np.prod(arr.shape)))
        where = f", block {shared_block}" if space == "shared" else ""
        titles.append(f"{arr.name} ({space}{where}): {len(picked)} {kind}s, {untouched} elements never "
                      f"{'read' if kind == 'read' else 'written'}")
        if len(arr.shape) == 1:
            axes = (f"element mod {n_cols}", f"element // {n_cols}")
        else:
            axes = ("column" if len(arr.shape) == 2 else "column (later indices flattened)", "row")
        pictures.append((z, text, crowded, axes, slow, space))
    fig = make_subplots(rows=len(pictures), cols=1, subplot_titles=titles, vertical_spacing=0.12 / len(pictures))
    colorbar_title = {"thread": "thread (linear)", "block": "block (linear)", "phase": "barrier phase",
                      "step": "thread's step"}[color]
    legend_shown = set()
    for k, (z, text, crowded, axes, slow, space) in enumerate(pictures, start=1):
        fig.add_trace(go.Heatmap(z=z, text=text, hovertemplate="%{text}<extra></extra>", colorscale="Viridis",
                                 showscale=(k == 1), colorbar=dict(title=colorbar_title), xgap=1, ygap=1),
                      row=k, col=1)
        if crowded:
            fig.add_trace(go.Scatter(x=[j for _, j in crowded], y=[i for i, _ in crowded], mode="markers",
                                     marker=dict(symbol="x", size=10, color="red"),
                                     name="written by several threads", showlegend="x" not in legend_shown,
                                     hoverinfo="skip"), row=k, col=1)
            legend_shown.add("x")
        if slow:
            label = "in a bank-conflicted warp access" if space == "shared" else "in an uncoalesced warp access"
            fig.add_trace(go.Scatter(x=[j for _, j in slow], y=[i for i, _ in slow], mode="markers",
                                     marker=dict(symbol="circle-open", size=7, color="orange", line=dict(width=2)),
                                     name=label, showlegend=label not in legend_shown, hoverinfo="skip"),
                          row=k, col=1)
            legend_shown.add(label)
        fig.update_xaxes(title_text=axes[0], row=k, col=1)
        fig.update_yaxes(title_text=axes[1], autorange="reversed", row=k, col=1,
                         dtick=1 if z.shape[0] <= 12 else None)
    heights = sum(max(80, 22 * picture[0].shape[0]) for picture in pictures)
    picked_text = "".join([f", block {block}" if block is not None else "",
                           f", thread {thread}" if thread is not None else "",
                           f", phase {phase}" if phase is not None else ""])
    fig.update_layout(title=f"{trace.kernel}: who {'read' if kind == 'read' else 'wrote'} each element "
                            f"(colour: {colorbar_title}{picked_text})",
                      height=140 + heights + 60 * len(pictures), legend=dict(orientation="h", y=-0.05))
    return fig


def _costly_elements(trace, kind, block, thread, phase) -> set:
    """(space, array, index, linear block) of the elements that warp accesses with more
    sectors or bank wavefronts than their bytes need touched, among the picked accesses."""
    found = set()
    for w in _warp_accesses(trace, None):
        if w.ok or w.kind != kind:
            continue
        if block is not None and _linear(w.block, trace.grid) != block:
            continue
        if phase is not None and w.phase != phase:
            continue
        for t, index in zip(w.threads, w.indices):
            if index is not None and (thread is None or _linear(t, trace.block) == thread):
                found.add((w.space, w.array, index, _linear(w.block, trace.grid)))
    return found


def phase_figure(rec: Recording, array: str, launch: int = 0, block: int = 0, wrap: int = 64):
    """A shared (or global) array, one row per barrier phase: which thread wrote each element
    in that phase (colour), and dots where it was read. A tree reduction shows its halving
    steps; a missing barrier shows a write and a read of one element in one phase."""
    import plotly.graph_objects as go

    _require_trace(rec)
    trace = rec.launches[launch]
    arr = trace.array(array)
    rows = [r for r in rec.accesses(launch) if r.array == array and r.index is not None
            and _linear(r.block, trace.grid) == block]
    if not rows:
        raise ValueError(f"no thread of block {block} touched {array} in launch {launch} ({trace.kernel})")
    size = int(np.prod(arr.shape))
    flat = {r.index: int(np.ravel_multi_index(r.index, arr.shape)) for r in rows}
    phases = max(r.phase for r in rows) + 1
    z = np.full((phases, size), np.nan)
    text = [[f"{array}[{j}], phase {p}" for j in range(size)] for p in range(phases)]
    read_x, read_y, read_text = [], [], []
    for r in rows:
        j = flat[r.index]
        if r.kind == "write":
            z[r.phase, j] = _linear(r.thread, trace.block)
        else:
            read_x.append(j)
            read_y.append(r.phase)
            read_text.append(f"{_element(array, r.index)}: {_describe(r)}")
        text[r.phase][j] += "<br>" + _describe(r)
    fig = go.Figure(go.Heatmap(z=z, text=text, hovertemplate="%{text}<extra></extra>", colorscale="Viridis",
                               colorbar=dict(title="writer thread"), xgap=1, ygap=1, name="written"))
    fig.add_trace(go.Scatter(x=read_x, y=read_y, mode="markers", marker=dict(size=4, color="white",
                             line=dict(width=1, color="black")), text=read_text,
                             hovertemplate="%{text}<extra></extra>", name="read"))
    fig.update_layout(title=f"{trace.kernel}: {array} in block {block}, barrier phase by phase "
                            "(colour: the thread that wrote; dots: reads)",
                      xaxis_title=f"element of {array}", yaxis_title="barrier phase (syncthreads passed)",
                      yaxis_autorange="reversed", height=160 + 40 * phases,
                      xaxis_range=[-0.5, min(size, wrap) - 0.5] if size > wrap else None,
                      legend=dict(orientation="h", y=-0.3))
    return fig


def warp_figure(rec: Recording, launch: int | None = None):
    """Per kernel line and array: the average 32-byte sectors (global) or bank wavefronts
    (shared) one warp access needs, beside the fewest its bytes need. Red bars are
    uncoalesced accesses and bank conflicts."""
    import plotly.graph_objects as go

    _require_trace(rec)
    picked = rec.launches if launch is None else [rec.launches[launch]]
    sites: dict = {}
    for n, trace in enumerate(rec.launches):
        if trace not in picked:
            continue
        for w in _warp_accesses(trace, None):
            s = sites.setdefault((trace.kernel, w.line, w.kind, w.array, w.space), [0, 0, 0, 0])
            s[0] += w.cost
            s[1] += w.ideal
            s[2] += 1
            s[3] += not w.ok
    if not sites:
        raise ValueError("the trace has no array access to group into warp accesses")
    labels, cost, ideal, colors, hover = [], [], [], [], []
    for (kernel, line, kind, array, space), (c, i, count, bad) in sorted(sites.items(), key=lambda kv: kv[0][1]):
        labels.append(f"line {line}: {kind} {array} ({space})")
        cost.append(c / count)
        ideal.append(i / count)
        colors.append("crimson" if bad else "seagreen")
        unit = "wavefronts" if space == "shared" else "sectors"
        hover.append(f"{kernel}, line {line}: {count} warp accesses, {c / count:.2f} {unit} each on average "
                     f"(the fewest: {i / count:.2f}); {bad} of them " +
                     ("with bank conflicts" if space == "shared" else "uncoalesced"))
    fig = go.Figure(go.Bar(x=labels, y=cost, marker_color=colors, text=[f"{c:.1f}" for c in cost],
                           hovertext=hover, hoverinfo="text", name="per warp access"))
    fig.add_trace(go.Scatter(x=labels, y=ideal, mode="markers", marker=dict(symbol="line-ew-open", size=40,
                             color="black", line=dict(width=3, color="black")), name="the fewest possible"))
    fig.update_layout(title="Per warp access: 32-byte sectors (global) or bank wavefronts (shared); red: "
                            "more than the bytes need", yaxis_title="sectors or wavefronts per warp access",
                      height=420, legend=dict(orientation="h", y=-0.35))
    return fig


def explore(rec: Recording):
    """A picker over a trace: launch, read or write, colour, and one block, thread or
    barrier phase (-1 for all); or, as "warps", the launch's :func:`warp_figure`. Returns the
    widget: a notebook cell that ends with it shows it."""
    import ipywidgets as widgets

    _require_trace(rec)
    launches = [(f"{n}: {t.kernel}", n) for n, t in enumerate(rec.launches)]
    pick_launch = widgets.Dropdown(options=launches, value=0, description="launch")
    pick_view = widgets.ToggleButtons(options=["elements", "warps"], value="elements", description="view")
    pick_kind = widgets.ToggleButtons(options=["write", "read"], value="write", description="accesses")
    pick_color = widgets.Dropdown(options=list(_COLOR_BY), value="thread", description="colour by")
    pick_block = widgets.IntSlider(value=-1, min=-1, max=0, description="block")
    pick_thread = widgets.IntSlider(value=-1, min=-1, max=0, description="thread")
    pick_phase = widgets.IntSlider(value=-1, min=-1, max=0, description="phase")
    out = widgets.Output()

    def limits(*_):
        trace = rec.launches[pick_launch.value]
        pick_block.max = int(np.prod(trace.grid)) - 1
        pick_thread.max = trace.threads_per_block - 1
        pick_phase.max = max((p for (_, p) in trace.barriers), default=-1) + 1

    def draw(*_):
        out.clear_output(wait=True)
        with out:
            try:
                if pick_view.value == "warps":
                    fig = warp_figure(rec, pick_launch.value)
                else:
                    fig = access_figure(rec, pick_launch.value, pick_kind.value, pick_color.value,
                                        block=None if pick_block.value < 0 else pick_block.value,
                                        thread=None if pick_thread.value < 0 else pick_thread.value,
                                        phase=None if pick_phase.value < 0 else pick_phase.value)
            except ValueError as exc:  # a pick with nothing to draw (a thread that wrote nothing)
                print(exc)
                return
            fig.show()

    limits()
    pick_launch.observe(limits, names="value")
    for w in (pick_launch, pick_view, pick_kind, pick_color, pick_block, pick_thread, pick_phase):
        w.observe(draw, names="value")
    draw()
    box = widgets.VBox([widgets.HBox([pick_launch, pick_view]), widgets.HBox([pick_kind, pick_color]),
                        widgets.HBox([pick_block, pick_thread, pick_phase]), out])
    return box
