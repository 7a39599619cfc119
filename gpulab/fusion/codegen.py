"""From a chain of operations to the Python source of one numba.cuda kernel, compiled once.

The Fused Kernel Library builds its fused kernel at *compile time*: each operation is a C++
type, the chain is a variadic template, and nvcc inlines everything into one kernel. Python
has no templates, but it can write source text and ``exec`` it, so gpulab builds the same
kernel at *run time*, the first time a chain is used, and caches it per chain signature
(the ops' names and channel counts, the input dtype, single or batched; not the ops'
parameter values, which travel as a small float32 array).

The generated module always has the same shape, so once you have read one you have read
them all:

* ``load_params`` / ``load_geometry``: run-time parameters and the item's geometry (offsets,
  crop rectangle, output size), read once per thread into registers;
* ``read_pixel(src, g, i)``: the reading op (plain, crop, or crop + bilinear resize);
* ``transform(px, p)``: the map ops, one line per op and channel: this is the fusion;
* ``store_pixel`` (maps) or ``combine`` + ``finish_block`` (a final reduction);
* ``map_tile`` / ``reduce_tile``: a tile of ``per_thread * BLOCK`` pixels, every load
  issued before any math so each thread keeps ``per_thread`` memory requests in flight;
* the kernel: one tile per block or a grid-stride loop over tiles (vertical fusion of one
  input), or one tile per block looked up in a tile table (horizontal fusion of a batch).

How the pixels are spread over threads is a :class:`Schedule` (pixels per thread, one tile
per block or a grid-stride loop, signed or unsigned index arithmetic); it changes the speed,
never the numbers. Indices are unsigned by default (``ix`` is ``uint64`` in the generated
code): numba wraps a *signed* negative index around (``x[-1]``) and pays for it on every
access, three 64-bit instructions before each load and store; an unsigned index cannot be
negative, so that code disappears and neighbouring accesses share one address.
"""
from __future__ import annotations

import itertools
import linecache
import math
from dataclasses import dataclass

import torch

from .. import runtime
from ..launch import kernel as _gpulab_kernel
from .ops import Op

__all__ = ["BLOCK", "UNROLL", "TILE", "GEOMETRY_FIELDS", "Schedule", "DEFAULT_SCHEDULE", "ChainSpec",
           "generate_source", "compiled_kernel", "cache_info", "clear_cache"]

#: threads per block (a power of two, for the reduction tree); small under the simulator,
#: where every thread is a Python thread
BLOCK = runtime.pick(32, 256)
#: pixels each thread handles per tile (the default schedule's): its loads are all in flight at once
UNROLL = 4
#: pixels per tile (one block's share of one step) of the default schedule and of every batch
TILE = BLOCK * UNROLL

#: the columns of the int32 geometry table, one row per item; offsets count elements
GEOMETRY_FIELDS = ("IN_OFF", "IN_H", "IN_W", "TOP", "LEFT", "CROP_H", "CROP_W",
                   "OUT_OFF", "OUT_H", "OUT_W", "N_OUT")


@dataclass(frozen=True)
class Schedule:
    """How a vertically fused kernel spreads the pixels over threads (never what it computes).

    ``per_thread``: pixels per thread and tile, ``BLOCK`` apart so that a warp's accesses are
    coalesced; all its loads are issued before any math. ``grid_stride``: a fixed grid of a
    few blocks per multiprocessor loops over the tiles (``True``), or one block per tile
    (``False``). ``unsigned_index``: index arithmetic in ``uint64`` (no negative-index
    wraparound code) or, as numba does by default, in ``int64``.
    """
    per_thread: int = UNROLL
    grid_stride: bool = False
    unsigned_index: bool = True

    def __post_init__(self):
        if isinstance(self.per_thread, bool) or not isinstance(self.per_thread, int) or not 1 <= self.per_thread <= 16:
            raise ValueError(f"Schedule.per_thread must be an int from 1 to 16, got {self.per_thread!r}")
        for name in ("grid_stride", "unsigned_index"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Schedule.{name} must be True or False, got {getattr(self, name)!r}")

    @property
    def tile(self) -> int:
        """Pixels per tile: one block's share of one step."""
        return BLOCK * self.per_thread


#: The schedule a Pipeline uses unless told otherwise (a batch always uses TILE-pixel tiles,
#: 4 per thread, one per block). On a GPU: the fastest of the candidates timed on an H200
#: (benchmarks/results/03_kernel_fusion.md, section "Schedules"). Under the simulator, where
#: every thread is a Python thread, a grid-stride loop over a 2-block grid, so that a test
#: runs 64 threads instead of one per 4 pixels (the numbers are the same either way).
DEFAULT_SCHEDULE = runtime.pick(Schedule(UNROLL, True, True), Schedule(UNROLL, False, True))


@dataclass(frozen=True)
class ChainSpec:
    """Everything the generated source depends on (and so the key of the kernel cache)."""
    ops: tuple            # Op.key() of each operation, in order
    channels: int         # channels of the input pixels
    in_dtype: str         # "float32" or "uint8"
    batched: bool         # one item per launch or a batch (tile table)
    fastmath: bool        # approximate exp and division, flush denormals (numba's fastmath)
    schedule: Schedule    # how pixels are spread over threads


# ----------------------------------------------------------------- naming

def _names(step: int, channels: int) -> list[str]:
    """Variable names of the pixel after ``step`` ops: v3 (one channel) or v3_0, v3_1, v3_2."""
    if channels == 1:
        return [f"v{step}"]
    return [f"v{step}_{c}" for c in range(channels)]


def _tuple(items) -> str:
    items = list(items)
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


def _device(name: str, args: str, doc: str, body: list[str]) -> str:
    lines = ["@cuda.jit(device=True)", f"def {name}({args}):", f'    """{doc}"""']
    lines += ["    " + line if line else "" for line in body]
    return "\n".join(lines)


# ------------------------------------------------------------- the pieces

def _load_params_src(n_params: int) -> str:
    values = _tuple(f"params[{k}]" for k in range(max(n_params, 1)))
    return _device("load_params", "params", "The chain's run-time parameters, read once per thread into registers.",
                   [f"return {values}"])


def _load_geometry_src() -> str:
    body = ["return (" + ", ".join(f"geom[item, {f}]" for f in GEOMETRY_FIELDS[:6]) + ",",
            "        " + ", ".join(f"geom[item, {f}]" for f in GEOMETRY_FIELDS[6:]) + ")"]
    return _device("load_geometry", "geom, item", "Row `item` of the geometry table (see GEOMETRY_FIELDS).", body)


def _read_src(read_ops: list[Op], channels: int) -> str:
    kinds = [op.name for op in read_ops]
    if not kinds:
        step = f" * ix({channels})" if channels > 1 else ""
        body = [f"base = ix(g[IN_OFF]) + i{step}"]
        body.append("return " + _tuple(f"src[base + ix({c})]" if c else "src[base]" for c in range(channels)))
        return _device("read_pixel", "src, g, i", "Pixel i, straight from the input.", body)
    # crops and resizes work on rows and columns: signed arithmetic (int64), then one
    # unsigned (ix) index per access
    if kinds == ["crop"]:
        body = ["i = int64(i)",
                "y = i // g[OUT_W]          # row and column of pixel i in the crop",
                "x = i - y * g[OUT_W]",
                f"base = ix(g[IN_OFF] + ((g[TOP] + y) * g[IN_W] + g[LEFT] + x) * {channels})",
                "return " + _tuple(f"src[base + ix({c})]" if c else "src[base]" for c in range(channels))]
        return _device("read_pixel", "src, g, i", "Pixel i of the crop rectangle.", body)
    # a bilinear resize of the crop rectangle (the whole image when there is no crop)
    body = [
        "i = int64(i)",
        "oy = i // g[OUT_W]",
        "ox = i - oy * g[OUT_W]",
        "# where the output pixel's centre falls in the source, clamped at 0 (align_corners=False)",
        "sy = max((float32(oy) + float32(0.5)) * (float32(g[CROP_H]) / float32(g[OUT_H])) - float32(0.5), float32(0.0))",
        "sx = max((float32(ox) + float32(0.5)) * (float32(g[CROP_W]) / float32(g[OUT_W])) - float32(0.5), float32(0.0))",
        "y0 = min(int(sy), g[CROP_H] - 1)",
        "x0 = min(int(sx), g[CROP_W] - 1)",
        "y1 = min(y0 + 1, g[CROP_H] - 1)",
        "x1 = min(x0 + 1, g[CROP_W] - 1)",
        "wy = sy - float32(y0)       # weight of row y1 (row y0 gets 1 - wy)",
        "wx = sx - float32(x0)",
        f"row0 = g[IN_OFF] + ((g[TOP] + y0) * g[IN_W] + g[LEFT]) * {channels}",
        f"row1 = g[IN_OFF] + ((g[TOP] + y1) * g[IN_W] + g[LEFT]) * {channels}",
    ]
    for c in range(channels):
        a, b = f"float32(src[ix(row0 + x0 * {channels} + {c})])", f"float32(src[ix(row0 + x1 * {channels} + {c})])"
        d, e = f"float32(src[ix(row1 + x0 * {channels} + {c})])", f"float32(src[ix(row1 + x1 * {channels} + {c})])"
        body += [f"top{c} = (float32(1.0) - wx) * {a} + wx * {b}",
                 f"bottom{c} = (float32(1.0) - wx) * {d} + wx * {e}"]
    body.append("return " + _tuple(f"(float32(1.0) - wy) * top{c} + wy * bottom{c}" for c in range(channels)))
    what = "crop rectangle" if "crop" in kinds else "image"
    return _device("read_pixel", "src, g, i", f"Pixel i of the bilinear resize of the {what}.", body)


def _transform_src(map_ops: list[Op], channels: int, param_slices: list[range], label: str) -> str:
    body = [f"{', '.join(_names(0, channels))}{',' if channels == 1 else ''} = px"]
    c = channels
    for step, (op, slot) in enumerate(zip(map_ops, param_slices), start=1):
        c_out = op.channels_after(c)
        body.append(f"# {step}. {op!r}")
        body += op.emit(_names(step - 1, c), _names(step, c_out), [f"p[{k}]" for k in slot])
        c = c_out
    body.append("return " + _tuple(_names(len(map_ops), c)))
    return _device("transform", "px, p", f"The fused map ops: {label}.", body)


def _store_src(channels: int) -> str:
    if channels == 1:
        body = ["dst[ix(g[OUT_OFF]) + i] = px[0]"]
    else:
        body = [f"base = ix(g[OUT_OFF]) + i * ix({channels})"]
        body += [f"dst[base + ix({c})] = px[{c}]" if c else "dst[base] = px[0]" for c in range(channels)]
    return _device("store_pixel", "dst, g, i, px", "Write pixel i of the output.", body)


def _offset(k: int) -> str:
    """The index of a thread's k-th pixel in its tile: k blocks after its first."""
    return "first" if k == 0 else ("first + ix(BLOCK)" if k == 1 else f"first + ix({k} * BLOCK)")


def _tile_src(per_thread: int, reduction: bool) -> str:
    """map_tile (or reduce_tile): a thread's per_thread pixels of one tile."""
    last = _offset(per_thread - 1)
    if reduction:
        head = ["@cuda.jit(device=True)", "def reduce_tile(src, g, p, first, n, acc):",
                f'    """Fold pixels first, first + BLOCK, ... ({per_thread} of them) of an item into acc."""']
        use = lambda px: f"acc = combine(acc, transform({px}, p))"   # noqa: E731
    else:
        head = ["@cuda.jit(device=True)", "def map_tile(src, dst, g, p, first, n):",
                f'    """Pixels first, first + BLOCK, ... ({per_thread} of them) of an item."""']
        use = None
    lines = list(head)
    if per_thread == 1:
        lines += ["    if first < n:"]
        lines += ["        acc = combine(acc, transform(read_pixel(src, g, first), p))" if reduction else
                  "        store_pixel(dst, g, first, transform(read_pixel(src, g, first), p))"]
    else:
        lines += [f"    if {last} < n:",
                  f"        # a full tile: all {per_thread} loads are issued before any math, so the thread has",
                  f"        # {per_thread} memory requests in flight (neighbouring threads read neighbouring pixels: coalesced)"]
        lines += [f"        a{k} = read_pixel(src, g, {_offset(k)})" for k in range(per_thread)]
        if reduction:
            lines += [f"        {use(f'a{k}')}" for k in range(per_thread)]
        else:
            lines += [f"        store_pixel(dst, g, {_offset(k)}, transform(a{k}, p))" for k in range(per_thread)]
        lines += ["    else:",
                  "        # the item's last, partial tile: one pixel at a time, each bounds-checked",
                  f"        for k in range({per_thread}):",
                  "            i = first + ix(k) * ix(BLOCK)",
                  "            if i < n:",
                  "                acc = combine(acc, transform(read_pixel(src, g, i), p))" if reduction else
                  "                store_pixel(dst, g, i, transform(read_pixel(src, g, i), p))"]
    if reduction:
        lines.append("    return acc")
    return "\n".join(lines)


_REDUCTIONS = {
    # name: (identity, how two partial values combine, atomic used for the block's result)
    "sum": ("float32(0.0)", "{a} + {b}", "add"),
    "mean": ("float32(0.0)", "{a} + {b}", "add"),
    "max": ("float32(-math.inf)", "max({a}, {b})", "max"),
    "min": ("float32(math.inf)", "min({a}, {b})", "min"),
}


def _combine_src(name: str, channels: int) -> str:
    _, op, _ = _REDUCTIONS[name]
    values = _tuple(op.format(a=f"acc[{c}]", b=f"float32(px[{c}])") for c in range(channels))
    return _device("combine", "acc, px", f"Fold one pixel into the running {name}.", [f"return {values}"])


def _finish_block_src(name: str, channels: int) -> str:
    _, op, atomic = _REDUCTIONS[name]
    body = ["t = cuda.threadIdx.x"]
    body += [f"partial[{c}, t] = acc[{c}]" for c in range(channels)]
    body += ["cuda.syncthreads()",
             "step = BLOCK // 2",
             "while step > 0:          # a tree: half the threads fold in the other half",
             "    if t < step:"]
    body += [f"        partial[{c}, t] = " + op.format(a=f"partial[{c}, t]", b=f"partial[{c}, t + step]")
             for c in range(channels)]
    body += ["    cuda.syncthreads()  # every fold of this step lands before the next reads",
             "    step //= 2",
             "if t == 0:              # one atomic per block and channel"]
    scale = " / float32(n)" if name == "mean" else ""
    body += [f"    cuda.atomic.{atomic}(dst, (item, {c}), partial[{c}, 0]{scale})" for c in range(channels)]
    return _device("finish_block", "partial, acc, dst, item, n",
                   f"Combine the block's {BLOCK} partial results, then fold them into dst[item].", body)


def _kernel_src(name: str, reduction: str | None, batched: bool, out_channels: int, grid_stride: bool) -> str:
    lines = ["@kernel"]
    args = "src, dst, geom, params, tiles" if batched else "src, dst, geom, params"
    lines.append(f"def {name}({args}):")
    if batched:
        doc = "Horizontal fusion: block b does tile tiles[b, 1] of item tiles[b, 0]."
    elif grid_stride:
        doc = "Vertical fusion: one item, a grid-stride loop over its tiles."
    else:
        doc = "Vertical fusion: one item, one tile per block."
    lines.append(f'    """{doc}"""')
    lines.append("    p = load_params(params)")
    if reduction:
        lines.append(f"    partial = cuda.shared.array(({out_channels}, BLOCK), float32)")
        identity = _REDUCTIONS[reduction][0]
        lines.append(f"    acc = {_tuple([identity] * out_channels)}")
    tile_call = "acc = reduce_tile(src, g, p, {first}, n, acc)" if reduction else "map_tile(src, dst, g, p, {first}, n)"
    if batched:
        lines += ["    item = tiles[cuda.blockIdx.x, 0]",
                  "    g = load_geometry(geom, item)",
                  "    n = ix(g[N_OUT])",
                  "    first = ix(tiles[cuda.blockIdx.x, 1]) * ix(TILE) + ix(cuda.threadIdx.x)",
                  "    " + tile_call.format(first="first")]
        if reduction:
            lines.append("    finish_block(partial, acc, dst, item, g[N_OUT])")
        return "\n".join(lines)
    lines += ["    g = load_geometry(geom, 0)",
              "    n = ix(g[N_OUT])"]
    if grid_stride:
        lines += ["    tile = ix(cuda.blockIdx.x)",
                  "    while tile * ix(TILE) < n:   # a fixed grid (a few blocks per SM) covers any n",
                  "        " + tile_call.format(first="tile * ix(TILE) + ix(cuda.threadIdx.x)"),
                  "        tile += ix(cuda.gridDim.x)"]
    else:
        lines.append("    " + tile_call.format(first="ix(cuda.blockIdx.x) * ix(TILE) + ix(cuda.threadIdx.x)")
                     + "   # one block per tile")
    if reduction:
        lines.append("    finish_block(partial, acc, dst, 0, g[N_OUT])")
    return "\n".join(lines)


def kernel_name(ops: list[Op], batched: bool) -> str:
    names = [op.name for op in ops] or ["copy"]
    return "fused_" + "_".join(names)[:80] + ("_batch" if batched else "")


def effective_schedule(ops: list[Op], batched: bool, schedule: Schedule | None) -> Schedule:
    """The schedule a kernel really gets: a batch always has TILE-pixel tiles, one per block
    (its tile table is made with TILE), and a reduction always loops over a fixed grid (one
    atomic per block, so few blocks)."""
    schedule = schedule or DEFAULT_SCHEDULE
    if batched:
        return Schedule(UNROLL, False, schedule.unsigned_index)
    if any(op.kind == "reduce" for op in ops):
        return Schedule(schedule.per_thread, True, schedule.unsigned_index)
    return schedule


def generate_source(ops: list[Op], channels: int, in_dtype: torch.dtype, batched: bool,
                    fastmath: bool = False, schedule: Schedule | None = None) -> str:
    """The Python source of the fused kernel for ``ops`` (already validated by the pipeline).

    ``fastmath=True`` compiles with numba's fastmath: approximate ``exp`` and division and
    flushed denormals, a few times fewer instructions for ``sigmoid``/``tanh`` (results then
    differ from torch by a few ulps more). ``schedule``: see :class:`Schedule`."""
    schedule = effective_schedule(ops, batched, schedule)
    reads = [op for op in ops if op.kind == "read"]
    maps = [op for op in ops if op.kind == "map"]
    reduction = next((op.name for op in ops if op.kind == "reduce"), None)
    slices, start = [], 0
    for op in maps:
        slices.append(range(start, start + len(op.params)))
        start += len(op.params)
    out_channels = channels
    for op in maps:
        out_channels = op.channels_after(out_channels)
    label = " -> ".join(repr(op) for op in ops) or "copy"
    dtype = str(in_dtype).removeprefix("torch.")
    if batched:
        layout = "a batch of items, one tile per block"
    else:
        layout = "one item, " + ("a grid-stride loop over tiles" if schedule.grid_stride else "one tile per block")
    index = "uint64 (unsigned: no negative-index wraparound)" if schedule.unsigned_index else "int64 (numba's default)"
    header = [
        "# Generated by gpulab.fusion for the chain",
        f"#     {label}",
        f"# input: {channels} channel(s) of {dtype}; {layout}",
        f"# TILE = {schedule.tile} pixels: BLOCK = {BLOCK} threads x {schedule.per_thread} pixels each; "
        f"indices: ix = {index}",
        "# Every intermediate value stays in registers: the input is read once, the output written once.",
    ]
    pieces = ["\n".join(header), _load_params_src(start), _load_geometry_src(),
              _read_src(reads, channels),
              _transform_src(maps, channels, slices, " -> ".join(repr(op) for op in maps) or "nothing")]
    if reduction:
        pieces += [_combine_src(reduction, out_channels), _finish_block_src(reduction, out_channels)]
    else:
        pieces.append(_store_src(out_channels))
    pieces.append(_tile_src(schedule.per_thread, reduction is not None))
    pieces.append(_kernel_src(kernel_name(ops, batched), reduction, batched, out_channels, schedule.grid_stride))
    source = "\n\n\n".join(pieces) + "\n"
    if fastmath:
        source = (source.replace("@cuda.jit(device=True)", "@cuda.jit(device=True, fastmath=True)")
                  .replace("\n@kernel\n", "\n@kernel(fastmath=True)\n"))
    return source


# ------------------------------------------------------------ compile + cache

_CACHE: dict = {}
_STATS = {"hits": 0, "compiled": 0}
_counter = itertools.count()


def namespace(schedule: Schedule) -> dict:
    """The names the generated source uses besides its own functions."""
    from numba import cuda, float32, int64, uint8, uint64

    ns = {"cuda": cuda, "float32": float32, "int64": int64, "uint8": uint8, "math": math,
          "kernel": _gpulab_kernel, "BLOCK": BLOCK, "TILE": schedule.tile,
          "ix": uint64 if schedule.unsigned_index else int64}
    ns.update({f: k for k, f in enumerate(GEOMETRY_FIELDS)})
    return ns


def compiled_kernel(ops: list[Op], channels: int, in_dtype: torch.dtype, batched: bool,
                    fastmath: bool = False, schedule: Schedule | None = None):
    """The gpulab kernel for this chain, generated and ``exec``-ed on first use, then cached."""
    schedule = effective_schedule(ops, batched, schedule)
    key = ChainSpec(tuple(op.key() for op in ops), channels, str(in_dtype), batched, bool(fastmath), schedule)
    found = _CACHE.get(key)
    if found is not None:
        _STATS["hits"] += 1
        return found
    source = generate_source(ops, channels, in_dtype, batched, fastmath, schedule)
    # register the text under a made-up file name so inspect.getsource, tracebacks and
    # numba's error messages can show the generated lines
    filename = f"<gpulab.fusion kernel {next(_counter)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    scope = namespace(schedule)
    exec(compile(source, filename, "exec"), scope)
    fused = scope[kernel_name(ops, batched)]
    fused.generated_source = source
    fused.schedule = schedule
    _CACHE[key] = fused
    _STATS["compiled"] += 1
    return fused


def cache_info() -> dict:
    """How many chains were generated and how often a cached kernel was reused."""
    return {"kernels": len(_CACHE), **_STATS}


def clear_cache() -> None:
    _CACHE.clear()
    _STATS.update(hits=0, compiled=0)
