"""A chain of operations, run as one fused kernel (or, for reference, as unfused torch ops).

    from gpulab import fusion as fk

    pipe = fk.Pipeline(fk.crop(8, 8, 96, 128), fk.resize(48, 64), fk.normalize(MEAN, STD),
                       fk.rgb_to_gray(), channels=3)
    y = pipe(image)                  # one kernel launch: vertical fusion
    y_ref = pipe.reference(image)    # the same chain as a sequence of torch ops
    ys = pipe.batch(images, crops)   # many images of different sizes, one launch: horizontal fusion

Shapes. With one channel a map-only chain takes a tensor of any shape; with ``channels=C``
the last dimension must be ``C``. A chain that starts with :func:`crop` or :func:`resize`
takes an image ``(H, W)`` or ``(H, W, C)``. The output has the input's (or the read op's)
spatial shape and the chain's final channel count (no channel dimension when it is 1); a
final reduction returns ``(C_out,)``. Inputs are float32 or uint8.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import torch
import torch.nn.functional as F

from .. import runtime
from ..harness import reference
from . import codegen
from .codegen import BLOCK, TILE, GEOMETRY_FIELDS, Schedule
from .ops import Op

__all__ = ["Pipeline", "Batch", "reference_chain", "max_blocks"]

_DTYPES = (torch.float32, torch.uint8)
_MAX_INDEX = 2**31 - 1          # the geometry table is int32


#: blocks per multiprocessor of a grid-stride schedule's grid (the reductions', and
#: Schedule(grid_stride=True)): on the H200 a sweep of 2..32 found 32 fastest (0.142 ms
#: against 0.158 ms at 8, 2^26 floats, 2026-12-01)
CHAIN_BLOCKS_PER_SM = 32
#: launch plans a pipeline keeps (one per input shape, dtype, device and crop)
_MAX_PLANS = 256


def max_blocks(blocks_per_sm: int = 8) -> int:
    """The grid of a grid-stride kernel: a few blocks per multiprocessor (2 under the simulator)."""
    if runtime.SIMULATOR:
        return 2
    return blocks_per_sm * _sm_count()


@lru_cache(maxsize=None)
def _sm_count() -> int:
    return torch.cuda.get_device_properties(0).multi_processor_count


@lru_cache(maxsize=4096)
def _device_table(rows: tuple, dtype=torch.int32) -> torch.Tensor:
    """A small int32 table on the device, made once per distinct content (no copy per launch)."""
    return torch.tensor(rows, dtype=dtype).to(runtime.device)


@dataclass
class _LaunchPlan:
    """What a call on inputs of one shape needs, worked out once: the configured kernel
    (grid and block fixed), the geometry table on the device, the output's shape and dtype."""
    launch: object            # fused[blocks, BLOCK]: call it with the arguments
    geom: torch.Tensor
    out_shape: tuple
    out_dtype: torch.dtype
    empty: bool               # nothing to compute (an empty map input)


@dataclass
class Batch:
    """Items of different sizes packed for one horizontally fused launch.

    ``src``: all inputs, flattened and concatenated. ``geom``: one int32 row per item
    (:data:`gpulab.fusion.codegen.GEOMETRY_FIELDS`). ``tiles``: one row ``(item, tile)`` per
    block: the block -> item map. ``out_shapes``/``out_offsets``: where each output lands in
    the flat output.
    """
    src: torch.Tensor
    geom: torch.Tensor
    tiles: torch.Tensor
    out_shapes: list
    out_offsets: list
    out_numel: int
    out_dtype: torch.dtype
    n_tiles: int

    def __len__(self) -> int:
        return len(self.out_shapes)

    def unpack(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """The items' outputs as views of the flat output (no copies)."""
        return [flat[o:o + math.prod(s)].view(s) for o, s in zip(self.out_offsets, self.out_shapes)]


class Pipeline:
    """A chain of :mod:`gpulab.fusion.ops` operations with ``channels`` input channels.

    ``fastmath=True`` compiles the fused kernel with approximate ``exp`` and division (fewer
    instructions for chains heavy in ``sigmoid``/``tanh``; slightly larger rounding errors).
    ``schedule`` (a :class:`gpulab.fusion.Schedule`) spreads the pixels over threads
    differently (for timing the alternatives; the numbers stay the same).

    A call validates its input the first time it sees a shape (with that dtype, device and
    crop) and keeps a *launch plan* for it, so calling again on the same shape costs a
    dictionary lookup, the output's allocation and the launch.
    """

    def __init__(self, *ops: Op, channels: int = 1, fastmath: bool = False, schedule: Schedule | None = None):
        if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
            ops = tuple(ops[0])
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        for k, op in enumerate(ops):
            if not isinstance(op, Op):
                raise TypeError(f"operation {k} is a {type(op).__name__}; build operations with "
                                "gpulab.fusion's functions, e.g. fk.relu() (note the parentheses)")
        self.ops = tuple(ops)
        self.channels = channels
        self.fastmath = bool(fastmath)
        if schedule is not None and not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a gpulab.fusion.Schedule, got {type(schedule).__name__}")
        self.schedule = schedule
        self.reads = [op for op in ops if op.kind == "read"]
        self.maps = [op for op in ops if op.kind == "map"]
        self.reduction = next((op for op in ops if op.kind == "reduce"), None)
        self._check_order()
        self.out_channels = self._check_channels()
        self.params = torch.tensor([v for op in self.maps for v in op.params] or [0.0],
                                   dtype=torch.float32).to(runtime.device)
        self._kernels: dict = {}     # (input dtype, batched) -> compiled kernel, for fast repeat calls
        self._plans: dict = {}       # (shape, dtype, device, crop, blocks_per_sm) -> _LaunchPlan

    # ------------------------------------------------------------ validation
    def _check_order(self) -> None:
        kinds = [op.kind for op in self.ops]
        names = [op.name for op in self.reads]
        n_reads = len(self.reads)
        if kinds[:n_reads] != ["read"] * n_reads:
            raise ValueError(f"reading operations (crop, resize) must come first: {self!r}")
        if names not in ([], ["crop"], ["resize"], ["crop", "resize"]):
            raise ValueError(f"a chain reads with at most one crop followed by at most one resize, got {names}")
        if "reduce" in kinds and (kinds.count("reduce") > 1 or kinds[-1] != "reduce"):
            raise ValueError(f"a reduction may only be the last operation, and only one: {self!r}")

    def _check_channels(self) -> int:
        c = self.channels
        for op in self.maps:
            if op.in_channels is not None and op.in_channels != c:
                raise ValueError(f"{op!r} needs {op.in_channels}-channel pixels, but at that point the "
                                 f"chain has {c} channel(s) ({self!r})")
            c = op.channels_after(c)
        return c

    def output_dtype(self, in_dtype: torch.dtype) -> torch.dtype:
        """The dtype of the chain's output pixels for an input of ``in_dtype`` (checks every op)."""
        if in_dtype not in _DTYPES:
            raise TypeError(f"inputs must be float32 or uint8, got {in_dtype}")
        dtype = in_dtype
        for op in self.ops:
            if op.needs_float and dtype != torch.float32:
                raise TypeError(f"{op!r} works on float32 values but gets {dtype}: "
                                "put fk.to_float32() before it")
            dtype = op.out_dtype or dtype
        return dtype

    def _check_tensor(self, x, what: str = "x") -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
        if x.device.type != runtime.device.type:
            raise ValueError(f"{what} is on {x.device}; gpulab kernels need tensors on {runtime.device} "
                             "(use .to(gpulab.device))")
        self.output_dtype(x.dtype)
        c = self.channels
        if self.reads:
            want = 2 if c == 1 else 3
            if x.dim() != want or (c > 1 and x.shape[-1] != c):
                shape = "(H, W)" if c == 1 else f"(H, W, {c})"
                raise ValueError(f"{what} must be an image of shape {shape} for a chain that reads with "
                                 f"{self.reads[0]!r}, got {tuple(x.shape)}")
        elif c > 1 and (x.dim() == 0 or x.shape[-1] != c):
            raise ValueError(f"{what} must have {c} channels in its last dimension, got shape {tuple(x.shape)}")
        if self.reduction is not None and x.numel() == 0:
            raise ValueError(f"{what} is empty: a reduction of no pixels has no value")

    def _crop_rect(self, x: torch.Tensor, crop) -> tuple[int, int, int, int]:
        h, w = x.shape[0], x.shape[1]
        if crop is None:
            op = next((o for o in self.reads if o.name == "crop"), None)
            crop = op.params if op is not None else (0, 0, h, w)
        elif not any(o.name == "crop" for o in self.reads):
            raise ValueError(f"a crop rectangle was given but the chain has no crop: {self!r}")
        top, left, ch, cw = (int(v) for v in crop)
        if top < 0 or left < 0 or ch < 1 or cw < 1 or top + ch > h or left + cw > w:
            raise ValueError(f"crop (top={top}, left={left}, height={ch}, width={cw}) does not fit in "
                             f"an image of {h} x {w}")
        return top, left, ch, cw

    # ------------------------------------------------------------ geometry
    def _geometry(self, x: torch.Tensor, crop, in_off: int, out_off: int) -> tuple[tuple, tuple]:
        """One geometry row for input ``x`` and the output shape it gives."""
        c, c_out = self.channels, self.out_channels
        if not self.reads:
            n = x.numel() // c
            row = (in_off, 0, 0, 0, 0, 0, 0, out_off, 0, 0, n)
            spatial = tuple(x.shape[:-1]) if c > 1 else tuple(x.shape)
        else:
            top, left, ch, cw = self._crop_rect(x, crop)
            resize = next((o for o in self.reads if o.name == "resize"), None)
            oh, ow = resize.params if resize is not None else (ch, cw)
            row = (in_off, x.shape[0], x.shape[1], top, left, ch, cw, out_off, oh, ow, oh * ow)
            spatial = (oh, ow)
        out_shape = spatial + ((c_out,) if c_out > 1 else ())
        return row, out_shape

    # ------------------------------------------------------------ running
    def kernel(self, in_dtype: torch.dtype = torch.float32, batched: bool = False):
        """The compiled fused kernel (a :class:`gpulab.Kernel`) for inputs of ``in_dtype``."""
        fused = self._kernels.get((in_dtype, batched))
        if fused is None:   # first use: validate, then fetch from (or add to) the global cache
            self.output_dtype(in_dtype)
            fused = codegen.compiled_kernel(list(self.ops), self.channels, in_dtype, batched, self.fastmath,
                                            self.schedule)
            self._kernels[(in_dtype, batched)] = fused
        return fused

    def source(self, in_dtype: torch.dtype = torch.float32, batched: bool = False) -> str:
        """The generated Python source of the fused kernel."""
        return self.kernel(in_dtype, batched).generated_source

    def __call__(self, x: torch.Tensor, *, crop=None, out: torch.Tensor | None = None,
                 blocks_per_sm: int | None = None) -> torch.Tensor:
        """Run the chain on ``x`` as one fused kernel.

        ``crop`` overrides the crop op's rectangle; ``out`` (optional) is a preallocated
        contiguous output of the right shape and dtype, written in place and returned;
        ``blocks_per_sm`` sets the grid of a grid-stride schedule (default
        ``CHAIN_BLOCKS_PER_SM``).
        """
        try:   # the same shape as before: no validation, no geometry, no kernel lookup
            plan = self._plans[(x.shape, x.dtype, x.device, crop, blocks_per_sm)]
        except (KeyError, TypeError, AttributeError):
            plan = self._plan(x, crop, blocks_per_sm)
        if not x.is_contiguous():
            x = x.contiguous()
        if out is None:
            out = (self._reduction_output(1) if self.reduction is not None else
                   torch.empty(plan.out_shape, dtype=plan.out_dtype, device=x.device))
        else:
            self._check_out(out, plan, x.device)
            if self.reduction is not None:
                out.view(1, self.out_channels).fill_(self._identity())
        if plan.empty:
            return out
        plan.launch(x.view(-1), out.view(-1) if self.reduction is None else out.view(1, self.out_channels),
                    plan.geom, self.params)
        return out[0] if self.reduction is not None and out.dim() == 2 else out

    def _plan(self, x, crop, blocks_per_sm) -> _LaunchPlan:
        """Validate an input of a new shape and work out its launch (see :class:`_LaunchPlan`)."""
        self._check_tensor(x)
        if blocks_per_sm is not None and (isinstance(blocks_per_sm, bool) or not isinstance(blocks_per_sm, int)
                                          or blocks_per_sm < 1):
            raise ValueError(f"blocks_per_sm must be a positive int, got {blocks_per_sm!r}")
        row, out_shape = self._geometry(x, crop, 0, 0)
        n = row[-1]
        if max(x.numel(), n * self.out_channels) > _MAX_INDEX:
            raise ValueError(f"input of {x.numel()} elements is too large for int32 offsets")
        fused = self.kernel(x.dtype)
        tile = fused.schedule.tile
        blocks = max(1, math.ceil(n / tile))
        if fused.schedule.grid_stride:   # a fixed grid of a few blocks per SM loops over the tiles
            blocks = min(blocks, max_blocks(blocks_per_sm or CHAIN_BLOCKS_PER_SM))
        plan = _LaunchPlan(fused[blocks, BLOCK], _device_table((row,)), out_shape, self.output_dtype(x.dtype),
                           empty=(n == 0 and self.reduction is None))
        if len(self._plans) >= _MAX_PLANS:
            self._plans.clear()
        try:
            self._plans[(x.shape, x.dtype, x.device, crop, blocks_per_sm)] = plan
        except TypeError:   # an unhashable crop (a list): fine, just not kept
            pass
        return plan

    def _check_out(self, out, plan: _LaunchPlan, device) -> None:
        want_shape = (self.out_channels,) if self.reduction is not None else plan.out_shape
        want_dtype = torch.float32 if self.reduction is not None else plan.out_dtype
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
        if tuple(out.shape) != tuple(want_shape) or out.dtype != want_dtype or out.device != device:
            raise ValueError(f"out must be a {want_dtype} tensor of shape {tuple(want_shape)} on {device}, "
                             f"got {out.dtype} {tuple(out.shape)} on {out.device}")
        if not out.is_contiguous():
            raise ValueError("out must be contiguous (the kernel writes it as one flat array)")

    def _identity(self) -> float:
        return {"sum": 0.0, "mean": 0.0, "max": -math.inf, "min": math.inf}[self.reduction.name]

    def _reduction_output(self, items: int) -> torch.Tensor:
        return torch.full((items, self.out_channels), self._identity(), dtype=torch.float32, device=runtime.device)

    def reference(self, x: torch.Tensor, *, crop=None) -> torch.Tensor:
        """The chain as a sequence of unfused torch ops (each one a kernel and a round trip to memory)."""
        self._check_tensor(x)
        return reference_chain(self, x, crop)

    # ----------------------------------------------------- horizontal fusion
    def pack(self, images: Sequence[torch.Tensor], crops: Sequence | None = None) -> Batch:
        """Pack items of different sizes (and per-item crop rectangles) for :meth:`run_batch`."""
        if not isinstance(images, (list, tuple)) or not images:
            raise ValueError("pack needs a non-empty list of tensors")
        if crops is not None and len(crops) != len(images):
            raise ValueError(f"got {len(images)} images but {len(crops)} crop rectangles")
        dtypes = {x.dtype for x in images if isinstance(x, torch.Tensor)}
        if len(dtypes) > 1:
            raise TypeError(f"all items of a batch must have one dtype, got {sorted(map(str, dtypes))}")
        rows, shapes, out_offsets, tiles = [], [], [], []
        in_off = out_off = 0
        for k, x in enumerate(images):
            self._check_tensor(x, f"item {k}")
            row, shape = self._geometry(x, None if crops is None else crops[k], in_off, out_off)
            rows.append(row)
            shapes.append(shape)
            out_offsets.append(out_off)
            tiles += [(k, t) for t in range(math.ceil(row[-1] / TILE))]
            in_off += x.numel()
            out_off += math.prod(shape)
        if max(in_off, out_off) > _MAX_INDEX:
            raise ValueError("the batch is too large for int32 offsets")
        src = torch.cat([x.reshape(-1) for x in images])
        out_dtype = self.output_dtype(src.dtype)
        # the block -> (item, tile) map; padded to one row so the tensor is never empty
        tile_table = torch.tensor(tiles or [(0, 0)], dtype=torch.int32).to(runtime.device)
        return Batch(src, _device_table(tuple(rows)), tile_table, shapes, out_offsets, out_off,
                     out_dtype, len(tiles))

    def run_batch(self, batch: Batch) -> list[torch.Tensor] | torch.Tensor:
        """Run the chain on every item of ``batch`` in ONE launch (one block per tile).

        Returns the list of outputs (views of one flat buffer), or, with a final reduction,
        a ``(items, C_out)`` tensor.
        """
        if not isinstance(batch, Batch):
            raise TypeError("run_batch takes the Batch that pipe.pack(images) returns")
        fused = self.kernel(batch.src.dtype, batched=True)
        n_tiles = batch.n_tiles
        if self.reduction is not None:
            out = self._reduction_output(len(batch))
            if n_tiles:
                fused[n_tiles, BLOCK](batch.src, out, batch.geom, self.params, batch.tiles)
            return out
        flat = torch.empty(batch.out_numel, dtype=batch.out_dtype, device=batch.src.device)
        if n_tiles:
            fused[n_tiles, BLOCK](batch.src, flat, batch.geom, self.params, batch.tiles)
        return batch.unpack(flat)

    def batch(self, images: Sequence[torch.Tensor], crops: Sequence | None = None):
        """Pack ``images`` and run them in one launch (see :meth:`pack`, :meth:`run_batch`)."""
        return self.run_batch(self.pack(images, crops))

    def reference_batch(self, images: Sequence[torch.Tensor], crops: Sequence | None = None):
        """The unfused torch reference, one item at a time."""
        outs = [self.reference(x, crop=None if crops is None else crops[k]) for k, x in enumerate(images)]
        return torch.stack(outs) if self.reduction is not None else outs

    # ------------------------------------------------------------- counting
    def torch_kernels(self) -> int:
        """How many torch kernels the unfused reference launches (each reads and writes memory)."""
        counts = {"affine": 2, "normalize": 2, "rgb_to_gray": 5, "rgb_to_yuv": 16, "to_uint8": 2,
                  "crop": 0, "resize": 1}
        return sum(counts.get(op.name, 1) for op in self.ops)

    def instructions_per_pixel(self) -> int:
        """A rough estimate of the instructions the fused kernel spends per output pixel: the
        sum of the ops' estimates (an FMA is one instruction, a precise sigmoid about 20).
        Instructions, not FLOPs: compare them with the SM's issue rate (an instruction
        roofline), not with a FLOP/s peak. On a GPU :func:`gpulab.fusion.isa.instruction_counts`
        counts the real ones in the compiled kernel."""
        c, total = self.channels, 0
        for op in self.ops:
            total += op.instructions * (c if op.in_channels is None else 1)
            if op.kind == "map":
                c = op.channels_after(c)
        return total

    def __repr__(self) -> str:
        chain = " -> ".join(repr(op) for op in self.ops) or "(empty: a copy)"
        return f"Pipeline({chain}, channels={self.channels}{', fastmath=True' if self.fastmath else ''})"

    def __len__(self) -> int:
        return len(self.ops)


@reference
def reference_chain(pipe: Pipeline, x: torch.Tensor, crop=None) -> torch.Tensor:
    """``pipe`` as unfused torch ops: each op reads its input from memory and writes its output."""
    y = x
    c = pipe.channels
    if pipe.reads:
        top, left, ch, cw = pipe._crop_rect(x, crop)
        y = y[top:top + ch, left:left + cw]
        resize = next((o for o in pipe.reads if o.name == "resize"), None)
        if resize is not None:
            chw = y.to(torch.float32).reshape(ch, cw, c).permute(2, 0, 1)[None]
            y = F.interpolate(chw, size=resize.params, mode="bilinear", align_corners=False)
            y = y[0].permute(1, 2, 0)
            y = y[..., 0] if c == 1 else y
    for op in pipe.maps:
        y = op.torch_fn(y, op.params)
    if pipe.reduction is not None:
        c_out = pipe.out_channels
        dims = tuple(range(y.dim() - (1 if c_out > 1 else 0)))
        y = pipe.reduction.torch_fn(y, dims).reshape(c_out)
    return y.contiguous()
