"""Kernel tasks in the KernelBench style: a torch reference, inputs, shapes, tolerances.

A :class:`Task` is what an agent (an LLM or a search) is asked to make faster: the torch
reference is the specification, ``make_inputs(shape, generator)`` draws fresh inputs for
one problem size, and the verifier runs a candidate on several shapes and seeds and
compares with the reference within the task's tolerance.

A candidate is Python source text that defines ``solve(*inputs, out)``: it must write the
answer into ``out`` (allocated by the verifier and filled with NaN first). A ``"numba"``
candidate computes with kernels launched through ``@gpulab.kernel``; a ``"torch"``
candidate may use torch operations but not the task's ``library_ops`` (calling
``F.layer_norm`` for the layer-norm task is not an answer).

Levels follow KernelBench: 1 single operations, 2 fused chains of operations, 3 small
blocks of a network (a norm, softmax, attention).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from .. import runtime
from ..harness import reference, tolerance

__all__ = ["Task", "SUITE", "get_task", "CHAIN_OPS", "chain_reference_ops"]


@dataclass(frozen=True)
class Task:
    """One kernel task. ``shapes[0]`` is the "default" shape a naive harness would test."""
    name: str
    level: int
    description: str
    reference: Callable                      # marked with @gpulab.reference
    input_names: tuple[str, ...]
    make_inputs: Callable                    # (shape, torch.Generator) -> tuple of CPU tensors
    sim_shapes: tuple                        # check shapes under the simulator (tiny)
    gpu_shapes: tuple                        # check shapes on a GPU
    timing_shape: tuple                      # the size that is timed on a GPU
    bytes_moved: Callable                    # shape -> fewest bytes read + written (float32)
    flops: Callable = lambda shape: 0.0      # shape -> floating-point operations
    dtype: torch.dtype = torch.float32
    rtol: float | None = None                # None: gpulab.tolerance(dtype)
    atol: float | None = None
    # torch ops that *are* the task, under each name that computes it (group_norm with one
    # group is a layer norm): forbidden to torch candidates
    library_ops: tuple[str, ...] = ()
    naive_init: dict = field(default_factory=dict)  # input name -> "ones"/"zeros" as a fresh layer has
    chain: tuple = ()                        # for elementwise chains: the ops (see CHAIN_OPS)

    @property
    def shapes(self) -> tuple:
        return self.gpu_shapes if runtime.ON_GPU else self.sim_shapes

    @property
    def tolerance(self) -> tuple[float, float]:
        rtol, atol = tolerance(self.dtype)
        return (self.rtol if self.rtol is not None else rtol,
                self.atol if self.atol is not None else atol)

    def inputs(self, shape, seed: int) -> tuple[torch.Tensor, ...]:
        """Inputs for ``shape`` drawn from ``seed`` (CPU tensors; the same on every machine)."""
        gen = torch.Generator().manual_seed(int(seed))
        xs = tuple(self.make_inputs(tuple(shape), gen))
        if len(xs) != len(self.input_names):
            raise ValueError(f"task {self.name}: make_inputs gave {len(xs)} tensors for "
                             f"inputs {self.input_names}")
        return xs

    def device_inputs(self, shape, seed: int, device) -> tuple[torch.Tensor, ...]:
        """Inputs for ``shape`` drawn from ``seed`` by ``device``'s own generator, on it.

        The verifier's timed runs draw fresh inputs at the timing size for every run: on
        the device that takes microseconds, where the CPU generator takes far longer.
        Parent and child draw the same numbers from the same seed on the same device.
        """
        device = torch.device(device)
        gen = torch.Generator(device=device).manual_seed(int(seed))
        with device:                      # torch.randn(...) inside make_inputs lands there
            return tuple(self.make_inputs(tuple(shape), gen))

    def reference_source(self) -> str:
        """The reference's source, as a prompt to an LLM shows it."""
        return inspect.getsource(getattr(self.reference, "__wrapped__", self.reference))

    def __repr__(self) -> str:
        return f"Task({self.name!r}, level {self.level}: {self.description})"


# ------------------------------------------------------------------ generators

def _vector(n_inputs: int):
    def make(shape, gen):
        return tuple(torch.randn(*shape, generator=gen) for _ in range(n_inputs))
    return make


def _rows(shape, gen):
    return (torch.randn(*shape, generator=gen),)


def _logits(shape, gen):
    # every other row is scaled by 50, so exp() of a raw logit overflows float32 there:
    # a softmax that skips subtracting the row maximum is caught on every seed
    x = torch.randn(*shape, generator=gen)
    x[::2] *= 50.0
    return (x,)


def _norm_inputs(with_bias: bool):
    def make(shape, gen):
        rows, cols = shape
        x = torch.randn(rows, cols, generator=gen) * 2.0 + 0.5
        w = torch.randn(cols, generator=gen)
        if not with_bias:
            return x, w
        return x, w, torch.randn(cols, generator=gen)
    return make


def _bias_rows(shape, gen):
    rows, cols = shape
    return torch.randn(rows, cols, generator=gen), torch.randn(cols, generator=gen)


def _attention_inputs(shape, gen):
    n, d = shape
    return tuple(torch.randn(n, d, generator=gen) for _ in range(3))


def _bytes_elementwise(n_tensors: int):
    return lambda shape: 4.0 * n_tensors * math.prod(shape)


# ------------------------------------------------------------------ references

@reference
def relu_reference(x):
    return torch.relu(x)


AXPY_ALPHA = 2.5


@reference
def axpy_reference(x, y):
    return AXPY_ALPHA * x + y


@reference
def sigmoid_reference(x):
    return torch.sigmoid(x)


@reference
def row_sum_reference(x):
    return x.sum(dim=-1)


@reference
def bias_relu_reference(x, b):
    return torch.relu(x + b)


@reference
def residual_gelu_reference(x, r):
    return torch.nn.functional.gelu(x + r, approximate="tanh")


@reference
def softmax_reference(x):
    return torch.softmax(x, dim=-1)


LAYERNORM_EPS = 1e-5
RMSNORM_EPS = 1e-6


@reference
def layernorm_reference(x, weight, bias):
    return torch.nn.functional.layer_norm(x, x.shape[-1:], weight, bias, eps=LAYERNORM_EPS)


@reference
def rmsnorm_reference(x, weight):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + RMSNORM_EPS) * weight


@reference
def attention_reference(q, k, v):
    scores = (q @ k.T) / math.sqrt(q.shape[-1])
    return torch.softmax(scores, dim=-1) @ v


# ------------------------------------------------------------- elementwise chains
# A chain is a list of (op, constant) applied one after another. torch eager runs each op
# as its own kernel (a full read and write of memory each); a fused kernel does one pass.

#: op name -> (torch function of (t, c), numba expression template over `v` and `c`)
CHAIN_OPS = {
    "mul": (lambda t, c: t * c, "v * numba.float32({c})"),
    "add": (lambda t, c: t + c, "v + numba.float32({c})"),
    "relu": (lambda t, c: torch.relu(t), "max(v, numba.float32(0.0))"),
    "clamp_max": (lambda t, c: torch.clamp(t, max=c), "min(v, numba.float32({c}))"),
    "sigmoid": (lambda t, c: torch.sigmoid(t), "numba.float32(1.0) / (numba.float32(1.0) + math.exp(-v))"),
    "tanh": (lambda t, c: torch.tanh(t), "math.tanh(v)"),
}

CHAIN2 = (("mul", 1.5), ("add", 0.25), ("relu", None))
CHAIN4 = (("mul", 1.5), ("add", 0.25), ("relu", None), ("clamp_max", 2.0), ("sigmoid", None))
CHAIN8 = (("mul", 1.5), ("add", 0.25), ("relu", None), ("clamp_max", 2.0), ("sigmoid", None),
          ("mul", -3.0), ("tanh", None), ("add", 1.0), ("relu", None))


def chain_reference_ops(chain) -> Callable:
    """The torch function applying ``chain`` op by op (eager: one kernel per op)."""
    def apply(x):
        for op, c in chain:
            x = CHAIN_OPS[op][0](x, c)
        return x
    return apply


def _chain_reference(name: str, chain):
    body = chain_reference_ops(chain)

    def chain_reference(x):
        return body(x)
    chain_reference.__name__ = chain_reference.__qualname__ = f"{name}_reference"
    chain_reference.__doc__ = "Apply, one torch op at a time: " + ", ".join(
        op if c is None else f"{op}({c})" for op, c in chain)
    return reference(chain_reference)


# --------------------------------------------------------------------- the suite

_VEC_SIM = ((32,), (17,), (45,))
_VEC_GPU = ((1 << 20,), (1_000_003,), (1_234_567,))   # one larger than the default
_VEC_TIME = (1 << 24,)
_ROW_SIM = ((4, 16), (3, 10), (5, 7))
_ROW_GPU = ((4096, 1024), (999, 777), (64, 4093))
_ROW_TIME = (8192, 4096)


def _chain_task(name, chain, level=2):
    k = len(chain)
    return Task(
        name, level, f"elementwise chain of {k} ops on a vector: " + " -> ".join(op for op, _ in chain),
        _chain_reference(name, chain), ("x",), _vector(1), _VEC_SIM, _VEC_GPU, _VEC_TIME,
        _bytes_elementwise(2), flops=lambda s, k=k: float(k * math.prod(s)), chain=chain)


_TASKS = [
    Task("relu", 1, "out = relu(x) on a vector", relu_reference, ("x",), _vector(1),
         _VEC_SIM, _VEC_GPU, _VEC_TIME, _bytes_elementwise(2), lambda s: float(math.prod(s)),
         library_ops=("relu", "clamp_min", "clamp", "threshold", "hardtanh"), chain=(("relu", None),)),
    Task("axpy", 1, f"out = {AXPY_ALPHA} * x + y on vectors", axpy_reference, ("x", "y"), _vector(2),
         _VEC_SIM, _VEC_GPU, _VEC_TIME, _bytes_elementwise(3), lambda s: 2.0 * math.prod(s)),
    Task("sigmoid", 1, "out = sigmoid(x) on a vector", sigmoid_reference, ("x",), _vector(1),
         _VEC_SIM, _VEC_GPU, _VEC_TIME, _bytes_elementwise(2), lambda s: 4.0 * math.prod(s),
         library_ops=("sigmoid", "special_expit", "expit"), chain=(("sigmoid", None),)),
    Task("row_sum", 1, "out[r] = sum of row r of a matrix", row_sum_reference, ("x",), _rows,
         _ROW_SIM, _ROW_GPU, _ROW_TIME, lambda s: 4.0 * (s[0] * s[1] + s[0]),
         lambda s: float(s[0] * s[1]), rtol=1e-4, atol=1e-4, library_ops=("sum", "nansum")),
    Task("bias_relu", 2, "out = relu(x + b), b broadcast over the rows", bias_relu_reference,
         ("x", "b"), _bias_rows, _ROW_SIM, _ROW_GPU, _ROW_TIME,
         lambda s: 4.0 * (2 * s[0] * s[1] + s[1]), lambda s: 2.0 * s[0] * s[1]),
    Task("residual_gelu", 2, "out = gelu_tanh(x + r)", residual_gelu_reference, ("x", "r"),
         _vector(2), _VEC_SIM, _VEC_GPU, _VEC_TIME, _bytes_elementwise(3),
         lambda s: 12.0 * math.prod(s), rtol=1e-5, atol=1e-5, library_ops=("gelu",)),
    _chain_task("chain2", CHAIN2),
    _chain_task("chain4", CHAIN4),
    _chain_task("chain8", CHAIN8),
    Task("softmax", 3, "row-wise softmax of a matrix of logits (some rows very large)",
         softmax_reference, ("x",), _logits, _ROW_SIM, _ROW_GPU, _ROW_TIME,
         lambda s: 8.0 * s[0] * s[1], lambda s: 5.0 * s[0] * s[1], rtol=1e-4, atol=1e-6,
         library_ops=("softmax", "log_softmax", "special_softmax")),
    Task("layernorm", 3, f"layer norm over the last dim with weight and bias (eps={LAYERNORM_EPS})",
         layernorm_reference, ("x", "weight", "bias"), _norm_inputs(True), _ROW_SIM, _ROW_GPU,
         _ROW_TIME, lambda s: 4.0 * (2 * s[0] * s[1] + 2 * s[1]), lambda s: 8.0 * s[0] * s[1],
         rtol=1e-4, atol=1e-4, library_ops=("layer_norm", "native_layer_norm", "group_norm", "native_group_norm"),
         naive_init={"weight": "ones", "bias": "zeros"}),
    Task("rmsnorm", 3, f"RMS norm over the last dim with weight (eps={RMSNORM_EPS})",
         rmsnorm_reference, ("x", "weight"), _norm_inputs(False), _ROW_SIM, _ROW_GPU, _ROW_TIME,
         lambda s: 4.0 * (2 * s[0] * s[1] + s[1]), lambda s: 4.0 * s[0] * s[1],
         rtol=1e-4, atol=1e-4, library_ops=("rms_norm",), naive_init={"weight": "ones"}),
    Task("attention", 3, "single-head attention softmax(q k^T / sqrt(d)) v, q, k, v of shape (n, d)",
         attention_reference, ("q", "k", "v"), _attention_inputs, ((6, 4), (5, 3), (7, 2)),
         ((1024, 64), (777, 64), (129, 32)), (4096, 64),
         lambda s: 4.0 * 4 * s[0] * s[1], lambda s: 4.0 * s[0] * s[0] * s[1],
         rtol=1e-4, atol=1e-4, library_ops=("scaled_dot_product_attention",)),
]

#: every task, by name
SUITE: dict[str, Task] = {t.name: t for t in _TASKS}


def get_task(name_or_task) -> Task:
    """The task named ``name`` (or the task itself), with a clear error for unknown names."""
    if isinstance(name_or_task, Task):
        return name_or_task
    try:
        return SUITE[name_or_task]
    except KeyError:
        raise KeyError(f"no task named {name_or_task!r}; tasks: {', '.join(SUITE)}") from None
