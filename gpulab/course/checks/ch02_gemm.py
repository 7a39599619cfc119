"""Graded checks of assignment 02 (solutions/02_gemm.ipynb), on the checks engine.

Task 1: ``tiled_kernel(a, b, c, alpha, beta, out)``: the paper's shared-memory tiled GEMM
        for any T: ``out = alpha * a @ b + beta * c`` (c not read when beta == 0), launched
        with T x T blocks, x along columns, and 2 T^2 floats of dynamic shared memory:
        ``kernel[(ceil(N/T), ceil(M/T)), (T, T), 8 * T * T](a, b, c, alpha, beta, out)``.
Task 2: ``regtile_kernel(a, b, c, alpha, beta, out)``: the register-tiled GEMM of shape
        ``TASK2_TILING`` whose inner loop (the micro-tile's outer products) the learner
        writes; b is given as a group of one, (1, K, N).
Task 3: ``split_by_shape(shapes, test_fraction, seed)``: train and test row indices such
        that no (M, N, K) is in both, about ``test_fraction`` of the distinct shapes held out.
"""
from __future__ import annotations

import inspect
import math

import torch
from numba import cuda, float32

from ...gemm import kernels as gemm_kernels
from ...gemm.tiling import RegisterTiling, make_core
from ...harness import reference
from ...launch import kernel
from .engine import FUNCTION, KERNEL, Hint, Planted, Sizes, Task

__all__ = ["TASK2_TILING", "check_task1", "check_task2", "check_task3", "TILED", "REGTILE", "SPLIT",
           "reference_gemm", "reference_split"]


# ------------------------------------------------------------------ task 1

def _gemm_inputs(size, gen, group_b: bool = False):
    """Random a (M x K), b (K x N), c (M x N), alpha, beta; beta = 0 with c all NaN when
    K is even (BLAS: c is not read then), otherwise a beta far from 0 and 1."""
    m, n, k = size[:3]
    a = torch.randn(m, k, generator=gen)
    b = torch.randn(k, n, generator=gen)
    alpha = 0.5 + float(torch.rand(1, generator=gen))
    if k % 2 == 0:
        c, beta = torch.full((m, n), float("nan")), 0.0
    else:
        c, beta = torch.randn(m, n, generator=gen), -1.25 - float(torch.rand(1, generator=gen))
    return a, (b.view(1, k, n) if group_b else b), c, alpha, beta


@reference
def reference_gemm(a, b, c, alpha, beta):
    """alpha * a @ b + beta * c in float64 (c ignored when beta == 0), as float32."""
    b2 = b[0] if b.dim() == 3 else b
    out = alpha * (a.double() @ b2.double())
    if beta != 0:
        out = out + beta * c.double()
    return out.float()


def _launch_tiled(kernel_, inputs, outputs, size):
    m, n, _, t = size
    kernel_[(math.ceil(n / t), math.ceil(m / t)), (t, t), 8 * t * t](*inputs, outputs[0])


def _read_c_with_beta_zero(case) -> bool:
    return case.inputs[4] == 0 and bool(torch.isnan(case.output).any())


TILED = Task(
    chapter="02", number=1, title="the tiled GEMM for any T", kind=KERNEL,
    reference=reference_gemm, make_inputs=_gemm_inputs,
    # (M, N, K, T): ragged edges, K = 1, two T's (a hard-coded T fails one), K spanning steps
    sizes=Sizes(sim=[(6, 3, 1, 4), (3, 5, 8, 2), (5, 3, 5, 2), (1, 1, 2, 1)],
                hidden=[(6, 5, 7, 3), (4, 9, 3, 3)], gpu=[(1000, 1030, 777, 16), (513, 257, 64, 32)]),
    launch=_launch_tiled, rtol=1e-4, atol=1e-4, own_kernels=(gemm_kernels,),
    candidate_name="tiled_kernel",
    hints=[
        Hint(lambda case: case.error is not None or case.frame_touched or (
                case.unwritten_only and not _read_c_with_beta_zero(case)),
             "Guard the loads (a thread past the edge of A or B stores 0 in shared memory) and the "
             "write (only threads with row < M and col < N write)"),
        Hint(_read_c_with_beta_zero,
             "NaN where beta == 0: c must not be read then (BLAS: c may hold anything); add "
             "beta * c only if beta != 0"),
        Hint(lambda case: any("barrier" in str(f) or "syncthreads" in str(f) for f in case.findings),
             "Two barriers per step: one after the tiles are stored (before anyone reads them), one "
             "after the multiply-adds (before the next step overwrites them)"),
        Hint(lambda case: not case.findings and case.error is None and not case.unwritten_only
             and not _read_c_with_beta_zero(case),
             "Wrong values and no race: check the shared indices (store a_s[ty, tx] and b_s[ty, tx], "
             "then acc += a_s[ty, i] * b_s[i, tx]) and that T is cuda.blockDim.x, not a constant"),
        Hint.matches(lambda a, b, c, alpha, beta: reference_gemm(a, b, c, 1.0, beta),
                     "The output matches alpha = 1: multiply the product by alpha"),
    ],
    solution="tiled_kernel",
)
check_task1 = TILED.checker()


# ------------------------------------------------------------------ task 2

#: the register tiling of task 2: an 8 x 8 block tile in steps of 4 along K, 2 x 2 outputs
#: per thread, so 16 threads per block; the A tile is stored transposed (a_t[k, m])
TASK2_TILING = RegisterTiling(bm=8, bn=8, bk=4, tm=2, tn=2)


def _launch_regtile(kernel_, inputs, outputs, size):
    m, n, _ = size
    cfg = TASK2_TILING
    kernel_[(math.ceil(n / cfg.bn), math.ceil(m / cfg.bm)), cfg.threads](*inputs, outputs[0])


def _own_inner_loop(candidate) -> str | None:
    try:
        source = inspect.getsource(candidate.py_func)
    except (AttributeError, OSError, TypeError):
        return None
    if ".multiply(" in source:
        return ("write the inner loop yourself: the core's multiply() is what this task asks you to "
                "write, not to call")
    return None


REGTILE = Task(
    chapter="02", number=2, title="the register-tiled inner loop", kind=KERNEL,
    reference=reference_gemm, make_inputs=lambda size, gen: _gemm_inputs(size, gen, group_b=True),
    # (M, N, K): one block and several, ragged, K = 1, K over several steps
    sizes=Sizes(sim=[(8, 8, 5), (9, 11, 1), (5, 17, 12)], hidden=[(9, 9, 9)],
                gpu=[(1000, 1030, 777)]),
    launch=_launch_regtile, rtol=1e-4, atol=1e-4, own_kernels=(gemm_kernels,),
    requires=[_own_inner_loop], candidate_name="regtile_kernel",
    hints=[
        Hint(lambda case: any("barrier" in str(f) or "syncthreads" in str(f) for f in case.findings),
             "The tiles must be complete before any thread reads them: cuda.syncthreads() after the loads"),
        Hint(lambda case: not case.findings and case.error is None and not case.unwritten_only,
             "Each kk of the step: a_reg[i] = a_t[kk, ty + i * THREADS_Y] (TM values), b_reg[j] = "
             "b_t[kk, tx + j * THREADS_X] (TN values), then acc[i, j] += a_reg[i] * b_reg[j] for every i, j, "
             "over all BK values of kk"),
    ],
    solution="regtile_kernel",
)
check_task2 = REGTILE.checker()


# ------------------------------------------------------------------ task 3

def _split_inputs(size, gen):
    """``size`` distinct shapes, each run by 1 to 4 kernels (rows in a random order)."""
    dims = torch.tensor([256, 384, 1000, 1024, 2048, 3000, 4096, 8192])
    shapes = set()
    while len(shapes) < size:
        shapes.add(tuple(dims[torch.randint(0, len(dims), (3,), generator=gen)].tolist()))
    rows = [s for s in sorted(shapes) for _ in range(int(torch.randint(1, 5, (1,), generator=gen)))]
    order = torch.randperm(len(rows), generator=gen)
    table = torch.tensor([rows[i] for i in order.tolist()], dtype=torch.int64)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    return table, 0.25, seed


@reference
def reference_split(shapes, test_fraction, seed):
    """One right answer: the distinct shapes in a seeded random order, the first
    round(test_fraction x count) of them held out."""
    return _split_shapes(shapes, test_fraction, seed)


def _split_shapes(shapes, test_fraction, seed):
    distinct = sorted({tuple(r) for r in shapes.tolist()})
    order = torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed))
    held = {distinct[i] for i in order[:max(1, round(test_fraction * len(distinct)))].tolist()}
    test = torch.tensor([tuple(r) in held for r in shapes.tolist()])
    return torch.nonzero(~test).flatten(), torch.nonzero(test).flatten()


def _as_indices(x, name: str) -> list[int] | str:
    try:
        values = torch.as_tensor(x).flatten().tolist()
    except Exception:   # noqa: BLE001 (anything that is not a sequence of ints)
        return f"{name} must be a sequence of row indices, got {type(x).__name__}"
    if not all(isinstance(v, int) for v in values):
        return f"{name} must hold integer row indices"
    return values


def _verify_split(case) -> str | None:
    shapes, fraction, _ = case.inputs
    if len(case.outputs) != 2:
        return "return two index sequences, (train, test)"
    train, test = (_as_indices(x, name) for x, name in zip(case.outputs, ("train", "test")))
    for got in (train, test):
        if isinstance(got, str):
            return got
    n = shapes.shape[0]
    if sorted(train + test) != list(range(n)):
        return (f"every row must be in exactly one of train and test ({n} rows; got {len(train)} + "
                f"{len(test)} indices, {len(set(train) & set(test))} in both)")
    rows = [tuple(r) for r in shapes.tolist()]
    leaked = {rows[i] for i in train} & {rows[i] for i in test}
    if leaked:
        return (f"the shape {sorted(leaked)[0]} is in both train and test ({len(leaked)} shapes leak): "
                "split the distinct (M, N, K), then send every row of a held-out shape to test")
    distinct = len(set(rows))
    want, held = fraction * distinct, len({rows[i] for i in test})
    if abs(held - want) > 1:
        return f"{held} of {distinct} shapes are held out: the test fraction is {fraction} of the distinct shapes"
    return None


def _seed_changes_split(candidate) -> str | None:
    table, fraction, _ = _split_inputs(12, torch.Generator().manual_seed(7))
    tests = {tuple(sorted(torch.as_tensor(candidate(table, fraction, seed)[1]).flatten().tolist()))
             for seed in (1, 2, 3, 4)}
    if len(tests) == 1:
        return "four seeds gave the same test set: draw the held-out shapes at random from the seed"
    return None


SPLIT = Task(
    chapter="02", number=3, title="a split by held-out shapes", kind=FUNCTION,
    reference=reference_split, make_inputs=_split_inputs, pad_inputs=False,
    sizes=Sizes(sim=[4, 9, 20], hidden=[37], gpu=[20]),
    verify=_verify_split, requires=[_seed_changes_split], candidate_name="split_by_shape",
    solution="split_by_shape",
)
check_task3 = SPLIT.checker()


# ------------------------------------------------------------------ planted wrong answers
# Plausible mistakes of each task; tests/ch02_gemm/test_ch02_planted.py requires every one
# to be rejected with its phrase in the feedback.

def _make_tiled(mistake=None):
    """The tiled kernel with one mistake (bools numba freezes into the kernel)."""
    no_second_barrier, unguarded, swapped, fixed_t, reads_c, no_alpha = (mistake == m for m in (
        "no_second_barrier", "unguarded", "swapped", "fixed_t", "reads_c", "no_alpha"))

    @kernel
    def tiled_(a, b, c, alpha, beta, out):
        sh = cuda.shared.array(0, float32)
        t = 2 if fixed_t else cuda.blockDim.x
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        row = cuda.blockIdx.y * t + ty
        col = cuda.blockIdx.x * t + tx
        m, k = a.shape
        n = b.shape[1]
        acc = float32(0.0)
        for k0 in range(0, k, t):
            if unguarded:
                sh[ty * t + tx] = a[row, k0 + tx]
                sh[t * t + ty * t + tx] = b[k0 + ty, col]
            else:
                sh[ty * t + tx] = a[row, k0 + tx] if row < m and k0 + tx < k else float32(0.0)
                sh[t * t + ty * t + tx] = b[k0 + ty, col] if k0 + ty < k and col < n else float32(0.0)
            cuda.syncthreads()
            for i in range(t):
                if swapped:
                    acc += sh[i * t + ty] * sh[t * t + tx * t + i]
                else:
                    acc += sh[ty * t + i] * sh[t * t + i * t + tx]
            if not no_second_barrier:
                cuda.syncthreads()
        if row < m and col < n:
            v = acc if no_alpha else alpha * acc
            if reads_c or beta != 0:
                v += beta * c[row, col]
            out[row, col] = v
    return tiled_


TILED.planted = [
    Planted("no second barrier", _make_tiled("no_second_barrier"), "syncthreads", simulator_only=True),
    Planted("unguarded edge loads", _make_tiled("unguarded"), "out of bounds", simulator_only=True),
    Planted("swapped shared indices", _make_tiled("swapped"), "check the shared indices"),
    Planted("T hard-coded as 2", _make_tiled("fixed_t"), "size 6x3x1x4"),
    Planted("c read when beta == 0", _make_tiled("reads_c"), "c must not be read"),
    Planted("alpha ignored", _make_tiled("no_alpha"), "multiply the product by alpha"),
    Planted("the package's own kernel", gemm_kernels.tiled_kernel(2), "package's own"),
    Planted("the reference itself", reference_gemm, "@gpulab.kernel"),
]


_T2 = TASK2_TILING
_core2 = make_core(_T2)
_BM, _BN, _BK, _TM, _TN = _T2.bm, _T2.bn, _T2.bk, _T2.tm, _T2.tn
_THREADS_Y, _THREADS_X, _A_ROW = _T2.threads_y, _T2.threads_x, _T2.a_row


def _make_regtile(mistake=None):
    """Task 2's kernel with one mistake in (or around) the inner loop."""
    b_by_ty, contiguous_rows, short_k, diagonal, no_barrier, overwrite = (mistake == m for m in (
        "b_by_ty", "contiguous_rows", "short_k", "diagonal", "no_barrier", "overwrite"))
    steps = _BK - 1 if short_k else _BK

    @kernel
    def regtile_(a, b, c, alpha, beta, out):
        a_t = cuda.shared.array((_BK, _A_ROW), float32)
        b_t = cuda.shared.array((_BK, _BN), float32)
        acc = cuda.local.array((_TM, _TN), float32)
        a_reg = cuda.local.array(_TM, float32)
        b_reg = cuda.local.array(_TN, float32)
        tid = cuda.threadIdx.x
        tx, ty = _core2.thread_xy(tid)
        row0 = cuda.blockIdx.y * _BM
        col0 = cuda.blockIdx.x * _BN
        m, k = a.shape
        n = b.shape[2]
        _core2.zero(acc)
        for k0 in range(0, k, _BK):
            _core2.load_a(a_t, a, row0, m, k0, k, tid)
            _core2.load_b(b_t, b, 0, k0, k, col0, n, tid)
            if not no_barrier:
                cuda.syncthreads()
            for kk in range(steps):
                for i in range(_TM):
                    a_reg[i] = a_t[kk, ty * _TM + i] if contiguous_rows else a_t[kk, ty + i * _THREADS_Y]
                for j in range(_TN):
                    b_reg[j] = b_t[kk, ty + j * _THREADS_X] if b_by_ty else b_t[kk, tx + j * _THREADS_X]
                for i in range(_TM):
                    for j in range(_TN):
                        if overwrite:
                            acc[i, j] = a_reg[i] * b_reg[j]
                        elif diagonal:
                            acc[i, j] += a_reg[i] * b_reg[i]
                        else:
                            acc[i, j] += a_reg[i] * b_reg[j]
            cuda.syncthreads()
        _store2(out, acc, c, alpha, beta, row0, col0, m, n, tx, ty)
    return regtile_


@cuda.jit(device=True)
def _store2(out, acc, c, alpha, beta, row0, col0, m, n, tx, ty):
    for i in range(_TM):
        r = row0 + ty + i * _THREADS_Y
        if r < m:
            for j in range(_TN):
                col = col0 + tx + j * _THREADS_X
                if col < n:
                    v = alpha * acc[i, j]
                    if beta != 0:
                        v += beta * c[r, col]
                    out[r, col] = v


@kernel
def _regtile_calling_core(a, b, c, alpha, beta, out):
    """Task 2's kernel with the core's multiply() in place of the learner's inner loop."""
    a_t = cuda.shared.array((_BK, _A_ROW), float32)
    b_t = cuda.shared.array((_BK, _BN), float32)
    acc = cuda.local.array((_TM, _TN), float32)
    a_reg = cuda.local.array(_TM, float32)
    b_reg = cuda.local.array(_TN, float32)
    tid = cuda.threadIdx.x
    tx, ty = _core2.thread_xy(tid)
    row0 = cuda.blockIdx.y * _BM
    col0 = cuda.blockIdx.x * _BN
    m, k = a.shape
    n = b.shape[2]
    _core2.zero(acc)
    for k0 in range(0, k, _BK):
        _core2.load_a(a_t, a, row0, m, k0, k, tid)
        _core2.load_b(b_t, b, 0, k0, k, col0, n, tid)
        cuda.syncthreads()
        _core2.multiply(a_t, b_t, a_reg, b_reg, acc, tx, ty)
        cuda.syncthreads()
    _store2(out, acc, c, alpha, beta, row0, col0, m, n, tx, ty)


REGTILE.planted = [
    Planted("b_reg read with ty", _make_regtile("b_by_ty"), "b_reg[j] = b_t[kk, tx + j * THREADS_X]"),
    Planted("contiguous rows read, interleaved rows stored", _make_regtile("contiguous_rows"),
            "a_reg[i] = a_t[kk, ty + i * THREADS_Y]"),
    Planted("the last kk of each step skipped", _make_regtile("short_k"), "over all BK values of kk"),
    Planted("a_reg[i] * b_reg[i]", _make_regtile("diagonal"), "acc[i, j] += a_reg[i] * b_reg[j]"),
    Planted("acc overwritten, not accumulated", _make_regtile("overwrite"), "acc[i, j] +="),
    Planted("no barrier after the loads", _make_regtile("no_barrier"), "syncthreads() after the loads",
            simulator_only=True),
    Planted("calls the core's multiply", _regtile_calling_core, "write the inner loop yourself"),
    Planted("the package's own kernel", gemm_kernels.regtile_kernel(_T2), "package's own"),
]


def _split_rows(shapes, test_fraction, seed):
    """The paper's split: a random fraction of the rows."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(shapes.shape[0], generator=g)
    n_test = max(1, round(test_fraction * shapes.shape[0]))
    return order[n_test:], order[:n_test]


def _split_empty_test(shapes, test_fraction, seed):
    return torch.arange(shapes.shape[0]), torch.zeros(0, dtype=torch.int64)


def _split_test_in_train(shapes, test_fraction, seed):
    train, test = _split_shapes(shapes, test_fraction, seed)
    return torch.arange(shapes.shape[0]), test


def _split_drops_rows(shapes, test_fraction, seed):
    train, test = _split_shapes(shapes, test_fraction, seed)
    return train[1:], test


def _split_half(shapes, test_fraction, seed):
    return _split_shapes(shapes, 0.5, seed)


def _split_fixed_seed(shapes, test_fraction, seed):
    return _split_shapes(shapes, test_fraction, 0)


SPLIT.planted = [
    Planted("random split of rows (the paper's)", _split_rows, "in both train and test"),
    Planted("empty test set", _split_empty_test, "four seeds gave the same test set"),
    Planted("every row in train, the test rows too", _split_test_in_train, "exactly one of train and test"),
    Planted("a row in neither", _split_drops_rows, "exactly one of train and test"),
    Planted("half the shapes held out", _split_half, "test fraction"),
    Planted("the seed ignored", _split_fixed_seed, "four seeds gave the same test set"),
    Planted("the reference itself", reference_split, "reference"),
]
