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
* ``map_tile`` / ``reduce_tile``: a tile of ``UNROLL * BLOCK`` pixels, every load issued
  before any math so each thread keeps ``UNROLL`` memory requests in flight;
* the kernel: a grid-stride loop over tiles (vertical fusion of one input), or one tile
  per block looked up in a tile table (horizontal fusion of a batch of items).
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

__all__ = ["BLOCK", "UNROLL", "TILE", "GEOMETRY_FIELDS", "ChainSpec", "generate_source",
           "compiled_kernel", "cache_info", "clear_cache"]

#: threads per block (a power of two, for the reduction tree); small under the simulator,
#: where every thread is a Python thread
BLOCK = runtime.pick(32, 256)
#: pixels each thread handles per tile: its loads are all in flight at once
UNROLL = 4
#: pixels per tile (one block's share of one step)
TILE = BLOCK * UNROLL

#: the columns of the int32 geometry table, one row per item; offsets count elements
GEOMETRY_FIELDS = ("IN_OFF", "IN_H", "IN_W", "TOP", "LEFT", "CROP_H", "CROP_W",
                   "OUT_OFF", "OUT_H", "OUT_W", "N_OUT")


@dataclass(frozen=True)
class ChainSpec:
    """Everything the generated source depends on (and so the key of the kernel cache)."""
    ops: tuple            # Op.key() of each operation, in order
    channels: int         # channels of the input pixels
    in_dtype: str         # "float32" or "uint8"
    batched: bool         # one item per launch (grid-stride) or a batch (tile table)
    fastmath: bool        # approximate exp and division, flush denormals (numba's fastmath)


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
    names = ["c%d" % c for c in range(channels)]
    kinds = [op.name for op in read_ops]
    if not kinds:
        body = [f"base = g[IN_OFF] + i * {channels}" if channels > 1 else "base = g[IN_OFF] + i"]
        body.append("return " + _tuple(f"src[base + {c}]" if c else "src[base]" for c in range(channels)))
        return _device("read_pixel", "src, g, i", "Pixel i, straight from the input.", body)
    if kinds == ["crop"]:
        body = ["y = i // g[OUT_W]          # row and column of pixel i in the crop",
                "x = i - y * g[OUT_W]",
                f"base = g[IN_OFF] + ((g[TOP] + y) * g[IN_W] + g[LEFT] + x) * {channels}",
                "return " + _tuple(f"src[base + {c}]" for c in range(channels))]
        return _device("read_pixel", "src, g, i", "Pixel i of the crop rectangle.", body)
    # a bilinear resize of the crop rectangle (the whole image when there is no crop)
    body = [
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
    for c, n in enumerate(names):
        a, b = f"float32(src[row0 + x0 * {channels} + {c}])", f"float32(src[row0 + x1 * {channels} + {c}])"
        d, e = f"float32(src[row1 + x0 * {channels} + {c}])", f"float32(src[row1 + x1 * {channels} + {c}])"
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
        body = ["dst[g[OUT_OFF] + i] = px[0]"]
    else:
        body = [f"base = g[OUT_OFF] + i * {channels}"]
        body += [f"dst[base + {c}] = px[{c}]" for c in range(channels)]
    return _device("store_pixel", "dst, g, i, px", "Write pixel i of the output.", body)


_MAP_TILE = '''\
@cuda.jit(device=True)
def map_tile(src, dst, g, p, first, n):
    """Pixels first, first + BLOCK, ..., first + (UNROLL - 1) * BLOCK of an item."""
    if first + 3 * BLOCK < n:
        # a full tile: all four loads are issued before any math, so the thread has four
        # memory requests in flight (neighbouring threads read neighbouring pixels: coalesced)
        a = read_pixel(src, g, first)
        b = read_pixel(src, g, first + BLOCK)
        c = read_pixel(src, g, first + 2 * BLOCK)
        d = read_pixel(src, g, first + 3 * BLOCK)
        store_pixel(dst, g, first, transform(a, p))
        store_pixel(dst, g, first + BLOCK, transform(b, p))
        store_pixel(dst, g, first + 2 * BLOCK, transform(c, p))
        store_pixel(dst, g, first + 3 * BLOCK, transform(d, p))
    else:
        # the item's last, partial tile: one pixel at a time, each bounds-checked
        for k in range(UNROLL):
            i = first + k * BLOCK
            if i < n:
                store_pixel(dst, g, i, transform(read_pixel(src, g, i), p))'''

_REDUCE_TILE = '''\
@cuda.jit(device=True)
def reduce_tile(src, g, p, first, n, acc):
    """Fold pixels first, first + BLOCK, ... (UNROLL of them) of an item into acc."""
    if first + 3 * BLOCK < n:
        a = read_pixel(src, g, first)          # four loads in flight, as in map_tile
        b = read_pixel(src, g, first + BLOCK)
        c = read_pixel(src, g, first + 2 * BLOCK)
        d = read_pixel(src, g, first + 3 * BLOCK)
        acc = combine(acc, transform(a, p))
        acc = combine(acc, transform(b, p))
        acc = combine(acc, transform(c, p))
        acc = combine(acc, transform(d, p))
    else:
        for k in range(UNROLL):
            i = first + k * BLOCK
            if i < n:
                acc = combine(acc, transform(read_pixel(src, g, i), p))
    return acc'''

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


def _kernel_src(name: str, reduction: str | None, batched: bool, out_channels: int) -> str:
    lines = ["@kernel"]
    args = "src, dst, geom, params, tiles" if batched else "src, dst, geom, params"
    lines.append(f"def {name}({args}):")
    if batched:
        doc = "Horizontal fusion: block b does tile tiles[b, 1] of item tiles[b, 0]."
    else:
        doc = "Vertical fusion: one item, a grid-stride loop over its tiles."
    lines.append(f'    """{doc}"""')
    lines.append("    p = load_params(params)")
    if reduction:
        lines.append(f"    partial = cuda.shared.array(({out_channels}, BLOCK), float32)")
        identity = _REDUCTIONS[reduction][0]
        lines.append(f"    acc = {_tuple([identity] * out_channels)}")
    if batched:
        lines += ["    item = tiles[cuda.blockIdx.x, 0]",
                  "    g = load_geometry(geom, item)",
                  "    first = tiles[cuda.blockIdx.x, 1] * TILE + cuda.threadIdx.x"]
        if reduction:
            lines += ["    acc = reduce_tile(src, g, p, first, g[N_OUT], acc)",
                      "    finish_block(partial, acc, dst, item, g[N_OUT])"]
        else:
            lines.append("    map_tile(src, dst, g, p, first, g[N_OUT])")
    else:
        lines += ["    g = load_geometry(geom, 0)",
                  "    n = g[N_OUT]",
                  "    tile = cuda.blockIdx.x",
                  "    while tile * TILE < n:   # a fixed grid (a few blocks per SM) covers any n"]
        if reduction:
            lines.append("        acc = reduce_tile(src, g, p, tile * TILE + cuda.threadIdx.x, n, acc)")
        else:
            lines.append("        map_tile(src, dst, g, p, tile * TILE + cuda.threadIdx.x, n)")
        lines.append("        tile += cuda.gridDim.x")
        if reduction:
            lines.append("    finish_block(partial, acc, dst, 0, n)")
    return "\n".join(lines)


def kernel_name(ops: list[Op], batched: bool) -> str:
    names = [op.name for op in ops] or ["copy"]
    return "fused_" + "_".join(names)[:80] + ("_batch" if batched else "")


def generate_source(ops: list[Op], channels: int, in_dtype: torch.dtype, batched: bool,
                    fastmath: bool = False) -> str:
    """The Python source of the fused kernel for ``ops`` (already validated by the pipeline).

    ``fastmath=True`` compiles with numba's fastmath: approximate ``exp`` and division and
    flushed denormals, a few times fewer instructions for ``sigmoid``/``tanh`` (results then
    differ from torch by a few ulps more)."""
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
    header = [
        "# Generated by gpulab.fusion for the chain",
        f"#     {label}",
        f"# input: {channels} channel(s) of {dtype}; "
        + ("a batch of items, one tile per block" if batched else "one item, grid-stride loop"),
        "# Every intermediate value stays in registers: the input is read once, the output written once.",
    ]
    pieces = ["\n".join(header), _load_params_src(start), _load_geometry_src(),
              _read_src(reads, channels),
              _transform_src(maps, channels, slices, " -> ".join(repr(op) for op in maps) or "nothing")]
    if reduction:
        pieces += [_combine_src(reduction, out_channels), _finish_block_src(reduction, out_channels), _REDUCE_TILE]
    else:
        pieces += [_store_src(out_channels), _MAP_TILE]
    pieces.append(_kernel_src(kernel_name(ops, batched), reduction, batched, out_channels))
    source = "\n\n\n".join(pieces) + "\n"
    if fastmath:
        source = (source.replace("@cuda.jit(device=True)", "@cuda.jit(device=True, fastmath=True)")
                  .replace("\n@kernel\n", "\n@kernel(fastmath=True)\n"))
    return source


# ------------------------------------------------------------ compile + cache

_CACHE: dict = {}
_STATS = {"hits": 0, "compiled": 0}
_counter = itertools.count()


def _namespace() -> dict:
    from numba import cuda, float32, uint8

    ns = {"cuda": cuda, "float32": float32, "uint8": uint8, "math": math, "kernel": _gpulab_kernel,
          "BLOCK": BLOCK, "UNROLL": UNROLL, "TILE": TILE}
    ns.update({f: k for k, f in enumerate(GEOMETRY_FIELDS)})
    return ns


def compiled_kernel(ops: list[Op], channels: int, in_dtype: torch.dtype, batched: bool,
                    fastmath: bool = False):
    """The gpulab kernel for this chain, generated and ``exec``-ed on first use, then cached."""
    key = ChainSpec(tuple(op.key() for op in ops), channels, str(in_dtype), batched, bool(fastmath))
    found = _CACHE.get(key)
    if found is not None:
        _STATS["hits"] += 1
        return found
    source = generate_source(ops, channels, in_dtype, batched, fastmath)
    # register the text under a made-up file name so inspect.getsource, tracebacks and
    # numba's error messages can show the generated lines
    filename = f"<gpulab.fusion kernel {next(_counter)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = _namespace()
    exec(compile(source, filename, "exec"), namespace)
    fused = namespace[kernel_name(ops, batched)]
    fused.generated_source = source
    _CACHE[key] = fused
    _STATS["compiled"] += 1
    return fused


def cache_info() -> dict:
    """How many chains were generated and how often a cached kernel was reused."""
    return {"kernels": len(_CACHE), **_STATS}


def clear_cache() -> None:
    _CACHE.clear()
    _STATS.update(hits=0, compiled=0)
