"""The fusable operations: each knows its GPU code (a few lines of source) and its torch twin.

An operation is the course's version of a Fused Kernel Library "instantiable operation":
a small component that says *what* to do to one pixel, never how to launch anything. The
pipeline (:mod:`gpulab.fusion.pipeline`) strings the components of a chain together and
:mod:`gpulab.fusion.codegen` turns them into one kernel.

Every value between two operations is a pixel: a tuple of ``channels`` numbers held in
registers (one channel for plain tensors, three for RGB images). Three kinds of operation:

* ``read``: how a pixel is fetched from the input: :func:`crop`, :func:`resize`
  (bilinear) or, when the chain has none, straight from memory. Reads come first.
* ``map``: pixel in, pixel out (arithmetic, activations, clamps, type and colour
  conversions). Any number, in any order.
* ``reduce``: the optional last operation: :func:`reduce_sum`, :func:`reduce_mean`,
  :func:`reduce_max`, :func:`reduce_min` over all pixels, one result per channel.

A map op's GPU code is a template with ``{x}`` for its input channel and ``{p0}``,
``{p1}``... for its run-time parameters (float32 values read once per thread). Parameters
travel at run time, so ``affine(2, 1)`` and ``affine(3, 0)`` share one compiled kernel,
as FKL's operations carry their parameters in a struct next to the compile-time type.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "Op", "map_op", "add", "mul", "affine", "relu", "leaky_relu", "sigmoid", "tanh", "clamp", "absolute",
    "square", "normalize", "rgb_to_gray", "rgb_to_yuv", "to_float32", "to_uint8", "crop",
    "resize", "reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "GRAY_WEIGHTS",
    "YUV_MATRIX",
]

#: Luma weights (R, G, B) of torchvision's ``rgb_to_grayscale``
#: (torchvision/transforms/_functional_tensor.py: ``0.2989 * r + 0.587 * g + 0.114 * b``, after
#: TensorFlow's). ITU-R BT.601, and OpenCV's ``cvtColor``, give red 0.299.
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
#: BT.601 analogue YUV: rows give Y, U, V from (R, G, B)
YUV_MATRIX = ((0.299, 0.587, 0.114),
              (-0.14713, -0.28886, 0.436),
              (0.615, -0.51499, -0.10001))

#: The kinds of operation a chain knows; the pipeline sorts ops by kind, so a kind it does not
#: know would be dropped from the chain without a word.
OP_KINDS = ("read", "map", "reduce")
#: The read and reduce operations the code generator has code for (a map brings its own code).
READ_NAMES = ("crop", "resize")
REDUCE_NAMES = ("sum", "mean", "max", "min")


@dataclass(frozen=True)
class Op:
    """One fusable operation.

    ``kind``: "read", "map" or "reduce". ``params``: run-time float32 parameters.
    ``emit(inputs, outputs, params) -> lines`` writes the GPU code of a map op, given the
    variable names of the input channels, of the output channels, and of the parameters.
    ``torch_fn(x, params)`` is the unfused torch reference of the same op on a tensor
    whose last dimension is the channel (absent when there is one channel).
    """
    name: str
    kind: str
    params: tuple = ()
    in_channels: int | None = None      # None: any channel count
    out_channels: int | None = None     # None: same as the input
    needs_float: bool = True            # refuses uint8 values (convert with to_float32 first)
    out_dtype: torch.dtype | None = None  # None: keeps the value's dtype
    emit: Callable | None = field(default=None, compare=False, repr=False)
    torch_fn: Callable | None = field(default=None, compare=False, repr=False)
    instructions: int = 0               # instructions per channel, a rough estimate (gpulab.fusion.isa counts them)
    label: str = ""

    def __post_init__(self):
        if self.kind not in OP_KINDS:
            raise ValueError(f"operation {self.name!r} has kind {self.kind!r}; the kinds are "
                             f"{', '.join(map(repr, OP_KINDS))} (build operations with "
                             "gpulab.fusion's functions, e.g. fk.relu())")
        known = {"read": READ_NAMES, "reduce": REDUCE_NAMES}.get(self.kind)
        if known is not None and self.name not in known:
            raise ValueError(f"there is no {self.kind} operation {self.name!r}: the {self.kind} "
                             f"operations are {', '.join(map(repr, known))}")
        if self.kind == "map" and (self.emit is None or self.torch_fn is None):
            missing = " and ".join(n for n in ("emit", "torch_fn") if getattr(self, n) is None)
            raise ValueError(f"map operation {self.name!r} needs {missing}: its GPU code and its "
                             "torch twin (see gpulab.fusion.ops for examples)")

    def key(self) -> tuple:
        """What the generated code depends on: the op's name, channel counts and code, not its
        parameter values (two ops of one name but different code get different kernels)."""
        code = ()
        if self.kind == "map":   # the code it writes for a canonical pixel: x0, x1, ... -> y0, ...
            c = self.in_channels or 1
            code = tuple(self.emit([f"x{k}" for k in range(c)], [f"y{k}" for k in range(self.channels_after(c))],
                                   [f"p{k}" for k in range(len(self.params))]))
        return (self.name, self.in_channels, self.out_channels, len(self.params), code)

    def channels_after(self, channels: int) -> int:
        return self.out_channels if self.out_channels is not None else channels

    def __repr__(self) -> str:
        return self.label or self.name


def _fmt(*values) -> str:
    return ", ".join(f"{v:g}" for v in values)


def _per_channel(template: str) -> Callable:
    """An emitter that applies ``template`` to each channel independently."""
    def emit(ins: Sequence[str], outs: Sequence[str], p: Sequence[str]) -> list[str]:
        names = {f"p{k}": name for k, name in enumerate(p)}
        return [f"{o} = {template.format(x=x, **names)}" for x, o in zip(ins, outs)]
    return emit


_FIELD = re.compile(r"\{([^{}]*)\}")


def map_op(name: str, template: str, torch_fn: Callable, params: Sequence[float] = (), instructions: int = 1,
           label: str | None = None, **options) -> Op:
    """A new elementwise operation, made the way every map op of this module is made.

    ``template``: one expression of numba code for one channel, with ``{x}`` for the input
    value and ``{p0}``, ``{p1}``, ... for the run-time parameters (float32 registers), e.g.
    ``"{x} * {p0} + {p1}"``; ``math`` and ``float32`` are in scope. ``torch_fn(x, params)``:
    the same operation in torch, the op's reference (its *twin*). ``params``: the parameter
    values of this instance; they travel at run time, so instances with other values share
    one compiled kernel. ``instructions``: a rough count per channel (for estimates).
    ``options`` go to :class:`Op` (``needs_float``, ``out_dtype``).

        softsign = map_op("softsign", "{x} / (float32(1.0) + abs({x}))", lambda x, p: F.softsign(x))
        fk.Pipeline(fk.affine(2, 0), softsign, fk.relu())       # fuses with the library's ops
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"map_op: name must be an identifier (it names the kernel), got {name!r}")
    if not isinstance(template, str) or "{x}" not in template:
        raise ValueError(f"map_op {name!r}: template must be a string of code using {{x}} for the input, "
                         f"got {template!r}")
    params = tuple(float(v) for v in params)
    for field_name in _FIELD.findall(template):
        if field_name == "x":
            continue
        m = re.fullmatch(r"p(\d+)", field_name)
        if m is None:
            raise ValueError(f"map_op {name!r}: the template has {{{field_name}}}; write {{x}} for the input and "
                             "{p0}, {p1}, ... for the parameters (their values go in params=...)")
        if int(m.group(1)) >= len(params):
            raise ValueError(f"map_op {name!r}: the template uses {{{field_name}}} but the op has {len(params)} "
                             f"parameter(s): pass params=(...) with one value per {{pK}}")
    if not callable(torch_fn):
        raise TypeError(f"map_op {name!r}: torch_fn must be a function (x, params) -> tensor, its torch twin")
    return Op(name, "map", params, emit=_per_channel(template), torch_fn=torch_fn, instructions=instructions,
              label=label or (f"{name}({_fmt(*params)})" if params else f"{name}()"), **options)


_map = map_op


# ------------------------------------------------------------------- arithmetic

def add(value: float) -> Op:
    """``x + value``."""
    return _map("add", "{x} + {p0}", lambda x, p: x + p[0], (value,))


def mul(value: float) -> Op:
    """``x * value``."""
    return _map("mul", "{x} * {p0}", lambda x, p: x * p[0], (value,))


def affine(scale: float, shift: float) -> Op:
    """``x * scale + shift`` (two torch ops unfused: a multiply, then an add)."""
    return _map("affine", "{x} * {p0} + {p1}", lambda x, p: x * p[0] + p[1], (scale, shift), instructions=2)


def square() -> Op:
    """``x * x``."""
    return _map("square", "{x} * {x}", lambda x, p: torch.square(x))


def absolute() -> Op:
    """``|x|``."""
    return _map("abs", "abs({x})", lambda x, p: torch.abs(x))


# ------------------------------------------------------------------ activations

def relu() -> Op:
    """``max(x, 0)``."""
    return _map("relu", "max({x}, float32(0.0))", lambda x, p: torch.relu(x))


def leaky_relu(slope: float = 0.01) -> Op:
    """``x`` where ``x > 0``, else ``slope * x``."""
    return _map("leaky_relu", "{x} if {x} > float32(0.0) else {x} * {p0}",
                lambda x, p: F.leaky_relu(x, p[0]), (slope,), instructions=2)


def sigmoid() -> Op:
    """``1 / (1 + exp(-x))``: an exponential and a division, about 20 instructions on a GPU."""
    return _map("sigmoid", "float32(1.0) / (float32(1.0) + math.exp(-{x}))",
                lambda x, p: torch.sigmoid(x), instructions=20)


def tanh() -> Op:
    """``tanh(x)``: about 20 instructions, like sigmoid."""
    return _map("tanh", "math.tanh({x})", lambda x, p: torch.tanh(x), instructions=20)


def clamp(low: float, high: float) -> Op:
    """``min(max(x, low), high)``, like ``torch.clamp``."""
    if not low <= high:
        raise ValueError(f"clamp needs low <= high, got low={low}, high={high}")
    return _map("clamp", "min(max({x}, {p0}), {p1})", lambda x, p: torch.clamp(x, p[0], p[1]),
                (low, high), instructions=2)


# ------------------------------------------------------------ type conversions

def to_float32() -> Op:
    """Convert the values to float32 (from uint8 image data, say); keeps the numbers."""
    return _map("to_float32", "float32({x})", lambda x, p: x.to(torch.float32), instructions=0,
                needs_float=False, out_dtype=torch.float32)


def to_uint8() -> Op:
    """Saturate to [0, 255] and convert to uint8 (truncating, as ``tensor.to(torch.uint8)`` does)."""
    return _map("to_uint8", "uint8(min(max({x}, float32(0.0)), float32(255.0)))",
                lambda x, p: torch.clamp(x, 0.0, 255.0).to(torch.uint8), instructions=2,
                out_dtype=torch.uint8)


# ----------------------------------------------------------------- per channel

def normalize(mean: Sequence[float], std: Sequence[float]) -> Op:
    """``(x[c] - mean[c]) / std[c]`` for each channel ``c`` (torchvision's Normalize)."""
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != len(std) or not mean:
        raise ValueError(f"normalize needs one mean and one std per channel, got {len(mean)} means "
                         f"and {len(std)} stds")
    if any(s == 0 for s in std):
        raise ValueError(f"normalize: std must be non-zero, got {std}")
    c = len(mean)

    def emit(ins, outs, p):
        return [f"{o} = ({x} - {p[k]}) / {p[c + k]}" for k, (x, o) in enumerate(zip(ins, outs))]

    def torch_fn(x, p):
        m = torch.tensor(p[:c], dtype=x.dtype, device=x.device)
        s = torch.tensor(p[c:], dtype=x.dtype, device=x.device)
        return (x - m) / s

    return Op("normalize", "map", mean + std, in_channels=c, emit=emit, torch_fn=torch_fn,
              instructions=2, label=f"normalize(mean=({_fmt(*mean)}), std=({_fmt(*std)}))")


# ------------------------------------------------------------ colour conversions

def _linear_colour_emit(rows):
    def emit(ins, outs, p):
        lines = []
        for o, row in zip(outs, rows):
            terms = " + ".join(f"float32({w!r}) * {x}" for w, x in zip(row, ins))
            lines.append(f"{o} = {terms}")
        return lines
    return emit


def _linear_colour_torch(rows):
    def torch_fn(x, p):
        outs = []
        for row in rows:
            y = row[0] * x[..., 0]
            for k in range(1, 3):
                y = y + row[k] * x[..., k]
            outs.append(y)
        return outs[0] if len(outs) == 1 else torch.stack(outs, dim=-1)
    return torch_fn


def rgb_to_gray() -> Op:
    """Luma from RGB: ``0.2989 R + 0.587 G + 0.114 B`` (torchvision's weights, BT.601's with red
    0.2989 instead of 0.299); 3 channels in, 1 out."""
    rows = (GRAY_WEIGHTS,)
    return Op("rgb_to_gray", "map", in_channels=3, out_channels=1, emit=_linear_colour_emit(rows),
              torch_fn=_linear_colour_torch(rows), instructions=5, label="rgb_to_gray()")


def rgb_to_yuv() -> Op:
    """YUV (BT.601 analogue) from RGB: a 3x3 matrix on each pixel; 3 channels in, 3 out."""
    return Op("rgb_to_yuv", "map", in_channels=3, out_channels=3,
              emit=_linear_colour_emit(YUV_MATRIX), torch_fn=_linear_colour_torch(YUV_MATRIX),
              instructions=5, label="rgb_to_yuv()")


# ---------------------------------------------------------------------- reading

def crop(top: int, left: int, height: int, width: int) -> Op:
    """Read the rectangle ``[top, top + height) x [left, left + width)`` of a 2-D image."""
    values = (top, left, height, width)
    if any(int(v) != v for v in values):
        raise TypeError(f"crop takes integers, got {values}")
    if top < 0 or left < 0 or height < 1 or width < 1:
        raise ValueError(f"crop needs top, left >= 0 and height, width >= 1, got {values}")
    return Op("crop", "read", tuple(int(v) for v in values), needs_float=False,
              label=f"crop(top={top}, left={left}, height={height}, width={width})")


def resize(height: int, width: int) -> Op:
    """Bilinear resize to ``height x width`` (``F.interpolate(..., mode="bilinear",
    align_corners=False)``); interpolates in float32, so the result is float32."""
    if int(height) != height or int(width) != width or height < 1 or width < 1:
        raise ValueError(f"resize needs integer height, width >= 1, got ({height}, {width})")
    return Op("resize", "read", (int(height), int(width)), needs_float=False,
              out_dtype=torch.float32, instructions=6, label=f"resize({height}, {width})")


# ------------------------------------------------------------------- reductions

def _reduction(name: str, identity: float, torch_fn) -> Op:
    return Op(name, "reduce", needs_float=False, out_dtype=torch.float32, torch_fn=torch_fn,
              instructions=1, label=f"{name}()")


def reduce_sum() -> Op:
    """Sum over all pixels, one result per channel (float32)."""
    return _reduction("sum", 0.0, lambda y, dims: y.to(torch.float32).sum(dims))


def reduce_mean() -> Op:
    """Mean over all pixels, one result per channel (float32)."""
    return _reduction("mean", 0.0, lambda y, dims: y.to(torch.float32).mean(dims))


def reduce_max() -> Op:
    """Maximum over all pixels, one result per channel (float32)."""
    return _reduction("max", float("-inf"), lambda y, dims: y.to(torch.float32).amax(dims))


def reduce_min() -> Op:
    """Minimum over all pixels, one result per channel (float32)."""
    return _reduction("min", float("inf"), lambda y, dims: y.to(torch.float32).amin(dims))
