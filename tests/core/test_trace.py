"""The memory-access tracer (gpulab.trace, gpulab.simtrace) and its pictures (gpulab.traceviz).

Planted kernels with one defect each are reported precisely (which thread, which element);
clean kernels report nothing; a traced launch gives what an untraced one gives. Sizes are
tiny and never multiples of the block: every simulated thread costs about a millisecond.
"""
import math
import re

import numpy as np
import pytest
import torch

import gpulab  # noqa: I001  (before numba: it picks GPU or simulator)
from numba import cuda, float32
from gpulab import simtrace, traceviz
from gpulab.basics import kernels as basics

sim_only = pytest.mark.skipif(not gpulab.SIMULATOR, reason="the tracer watches the simulator only")


# ------------------------------------------------------------------ planted kernels

@gpulab.kernel
def reads_one_past_the_end(x, out):
    i = cuda.grid(1)
    if i <= out.size:               # <= : thread n reads x[n]
        out[i] = x[i]


@gpulab.kernel
def reads_left_neighbour(x, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = x[i - 1]           # x[-1] at i = 0: numba wraps it to the last element


@gpulab.kernel
def misses_the_last_three(x, out):
    i = cuda.grid(1)
    if i < out.size - 3:
        out[i] = x[i]


@gpulab.kernel
def plain_histogram(x, out):
    i = cuda.grid(1)
    if i < x.size:
        out[0] += x[i]


@gpulab.kernel
def atomic_histogram(x, out):
    i = cuda.grid(1)
    if i < x.size:
        cuda.atomic.add(out, 0, x[i])


@gpulab.kernel
def shared_reverse(x, out, use_barrier):
    tile = cuda.shared.array(32, dtype=float32)
    t = cuda.threadIdx.x
    i = cuda.grid(1)
    tile[t] = x[i] if i < x.size else float32(0.0)
    if use_barrier:
        cuda.syncthreads()
    if i < out.size:
        out[i] = tile[31 - t]       # another thread's slot


@gpulab.kernel
def barrier_for_half(out):
    t = cuda.threadIdx.x
    if t < 16:
        cuda.syncthreads()
    out[cuda.grid(1)] = t


@gpulab.kernel
def strided_read(x, out, stride):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = x[i * stride]


def _rand(*shape):
    return torch.rand(*shape, device=gpulab.device)


# ------------------------------------------------------------------ defects, precisely

@sim_only
def test_an_index_past_the_end_names_thread_array_and_index():
    x, out = _rand(21), torch.zeros(21)
    with gpulab.trace() as t, pytest.raises(IndexError):
        reads_one_past_the_end[1, 32](x, out)
    (finding,) = t.out_of_bounds()
    assert finding.kind == "out of bounds" and finding.array == "x" and finding.index == (21,)
    assert finding.threads == ((21, 0, 0),) and finding.block == (0, 0, 0)
    assert "thread (21,0,0) of block (0,0,0) read x[21]" in str(finding) and "past the end of x" in str(finding)
    assert t.findings()[0] is not None and t.findings()[0].kind == "out of bounds"
    assert t.divergent_barriers() == []   # the IndexError's abort is not reported as a barrier problem


@sim_only
def test_a_negative_index_is_out_of_bounds_and_says_where_it_wraps():
    x, out = _rand(20), torch.zeros(20)
    with gpulab.trace() as t:
        reads_left_neighbour[1, 32](x, out)
    (finding,) = t.out_of_bounds()
    assert finding.index == (-1,) and finding.threads == ((0, 0, 0),) and finding.array == "x"
    assert "x[-1]" in str(finding) and "x[19]" in str(finding)
    assert out[0] == x[19]                 # what the simulator (and numba on a GPU) did


@pytest.mark.skipif(gpulab.SIMULATOR, reason="what a GPU does with the negative index the tracer reports")
def test_on_a_gpu_a_negative_index_wraps_as_the_tracer_says():
    x = _rand(20)
    out = torch.zeros(20, device=gpulab.device)
    reads_left_neighbour[1, 32](x, out)
    assert out[0] == x[19] and torch.equal(out[1:], x[:19])


@sim_only
def test_elements_never_written_are_counted_and_the_first_named():
    x, out = _rand(20), torch.zeros(20)
    with gpulab.trace() as t:
        misses_the_last_three[1, 32](x, out)
    (finding,) = t.never_written()
    assert finding.array == "out" and finding.index == (17,)
    assert "3 of 20 elements of out were never written" in str(finding)
    assert t.never_written("x")[0].index == (0,)   # asked about an input: nothing wrote it
    assert t.findings() == []                      # not a race, not a bound: the engine's NaN catches it


@sim_only
def test_a_plain_histogram_races_and_an_atomic_one_does_not():
    x = _rand(40)
    with gpulab.trace() as t:
        plain_histogram[2, 32](x, torch.zeros(1))
    (race, *_) = t.races()
    assert race.array == "out" and race.index == (0,)
    # the kernel, both threads and their block(s) are named
    assert re.match(r"plain_histogram: threads? \(\d+,0,0\)( of block \(\d,0,0\))? and (thread )?"
                    r"\(\d+,0,0\) of block \(\d,0,0\) ", str(race)), str(race)
    assert str(race).endswith("both wrote out[0] without an atomic")
    with gpulab.trace() as t:
        atomic_histogram[2, 32](x, torch.zeros(1))
    assert t.findings() == []
    writes = [r for r in t.accesses() if r.array == "out" and r.kind == "write"]
    assert len(writes) == 40 and all(r.atomic for r in writes)


@sim_only
def test_a_missing_barrier_names_the_reader_the_writer_and_the_slot():
    x = _rand(30)
    with gpulab.trace() as t:
        shared_reverse[1, 32](x, torch.zeros(30), False)
    (first, *_) = t.unsynced_shared_reads()
    reader, writer = first.threads[1], first.threads[0]
    assert first.array == "tile" and reader[0] + writer[0] == 31 and first.index == (writer[0],)
    assert "cuda.syncthreads() is missing" in str(first)
    out = torch.zeros(30)
    with gpulab.trace() as t:
        shared_reverse[1, 32](x, out, True)
    assert t.findings() == []
    padded = torch.cat([x, torch.zeros(2)])
    torch.testing.assert_close(out, padded.flip(0)[:30])


@sim_only
def test_a_barrier_only_half_the_block_reaches_is_found():
    with gpulab.trace() as t:
        barrier_for_half[1, 32](torch.zeros(32))
    (finding,) = t.divergent_barriers()
    assert "only 16 of the 32 threads of block (0,0,0)" in str(finding)
    assert "thread (16,0,0) never did" in str(finding)


# ------------------------------------------------------------------ warps: sectors and banks

@sim_only
def test_coalescing_counts_32_byte_sectors_per_warp_access():
    x, out = _rand(33 * 8), torch.zeros(33)
    with gpulab.trace() as t:
        strided_read[2, 32](x, out, 8)
    reads = [w for w in t.coalescing() if w.array == "x"]
    assert [len(w.threads) for w in reads] == [32, 1]   # warp 0 of block 0, then block 1's lone thread
    assert reads[0].cost == 32 and reads[0].ideal == 4 and not reads[0].ok  # 4 bytes used of each 32
    writes = [w for w in t.coalescing() if w.array == "out"]
    assert writes[0].cost == writes[0].ideal == 4 and writes[0].ok
    assert {w.array for w in t.uncoalesced()} == {"x"}


@sim_only
def test_naive_transpose_writes_uncoalesced_and_tiled_one_coalesced():
    m = _rand(32, 32)
    out = torch.empty(32, 32)
    with gpulab.trace() as t:
        basics.transpose_naive_kernel[(1, 1), (32, 32)](m, out)
    assert torch.equal(out, m.t())
    bad = t.uncoalesced()
    assert len(bad) == 32 and {w.kind for w in bad} == {"write"} and {w.cost for w in bad} == {32}
    assert bad[0].indices[:2] == [(0, 0), (1, 0)]  # lanes 0 and 1 write a column: a row apart
    with gpulab.trace() as t:
        basics.transpose_tiled_kernel[(1, 1), (32, 8)](m, out)
    assert torch.equal(out, m.t())
    assert t.uncoalesced() == [] and t.bank_conflicts() == [] and t.findings() == []


@sim_only
def test_an_unpadded_tile_has_32_way_bank_conflicts_on_its_column_read():
    m = _rand(32, 32)
    out = torch.empty(32, 32)
    with gpulab.trace() as t:
        basics.transpose_tiled_unpadded_kernel[(1, 1), (32, 8)](m, out)
    conflicts = t.bank_conflicts()
    assert len(conflicts) == 32 and {(w.kind, w.array, w.cost, w.ideal) for w in conflicts} == {("read", "tile", 32, 1)}
    first = conflicts[0]
    assert first.indices[:2] == [(0, 0), (1, 0)] and list(first.lanes_per_bank) == [0]
    assert "32-way bank conflict" in str(first)


# ------------------------------------------------------------------ what a trace holds

@sim_only
def test_each_access_keeps_thread_step_value_and_line():
    a, b = _rand(40), _rand(40)
    out = torch.empty(40)
    with gpulab.trace() as t:
        basics.vector_add_kernel[2, 32](a, b, out)
    rows = t.accesses()
    assert len(rows) == 3 * 40 and t.findings() == [] and t.never_written() == []
    thread_5 = [r for r in rows if r.thread == (5, 0, 0) and r.block == (1, 0, 0)]   # i = 37
    assert [(r.kind, r.array, r.index, r.step) for r in thread_5] == [
        ("read", "a", (37,), 0), ("read", "b", (37,), 1), ("write", "out", (37,), 2)]
    assert thread_5[2].value == pytest.approx(float(a[37] + b[37]))
    assert len({r.line for r in rows}) == 1 and rows[0].line > 0


@sim_only
def test_block_reduction_phases_halve_the_writers():
    x = _rand(200)
    with gpulab.trace() as t:
        partial = basics.block_sums(x)
    torch.testing.assert_close(partial, basics.reference_block_sums(x), rtol=1e-5, atol=1e-5)
    writers_per_phase = {}
    for r in t.accesses():
        if r.array == "cache" and r.kind == "write" and r.block == (0, 0, 0):
            writers_per_phase.setdefault(r.phase, set()).add(r.thread)
    assert [len(writers_per_phase[p]) for p in sorted(writers_per_phase)] == [256, 128, 64, 32, 16, 8, 4, 2, 1]
    assert t.findings() == [] and t.bank_conflicts() == []


@sim_only
@pytest.mark.parametrize("n", [1, 45, 131])
def test_traced_and_untraced_launches_give_the_same_results(n):
    gen = torch.Generator().manual_seed(n)
    a, b = torch.rand(n, generator=gen), torch.rand(n, generator=gen)
    plain, traced = torch.empty(n), torch.empty(n)
    basics.vector_add_kernel[math.ceil(n / 32), 32](a, b, plain)
    with gpulab.trace():
        basics.vector_add_kernel[math.ceil(n / 32), 32](a, b, traced)
    assert torch.equal(plain, traced)
    x = torch.rand(n, generator=gen) - 0.5
    plain_sum = basics.block_sums(x)
    with gpulab.trace():
        traced_sum = basics.block_sums(x)
    assert torch.equal(plain_sum, traced_sum)


def test_tracing_is_off_outside_the_block_and_empty_on_a_gpu():
    if gpulab.SIMULATOR:   # outside the block the simulator runs numba's own methods: no cost
        from numba.cuda.simulator.cudadrv.devicearray import FakeWithinKernelCUDAArray as Wrapped
        from numba.cuda.simulator.kernel import BlockThread
        before = (Wrapped.__getitem__, Wrapped.__setitem__, BlockThread.syncthreads)
    with gpulab.trace() as t:
        assert simtrace.recording_active() == gpulab.SIMULATOR
        if gpulab.SIMULATOR:
            assert Wrapped.__getitem__ is not before[0]
    assert not simtrace.recording_active()
    assert t.enabled == gpulab.SIMULATOR
    if gpulab.SIMULATOR:
        assert (Wrapped.__getitem__, Wrapped.__setitem__, BlockThread.syncthreads) == before
    if not gpulab.SIMULATOR:
        assert t.findings() == [] and t.accesses() == [] and "nothing recorded" in t.summary()
        with pytest.raises(ValueError, match="cannot watch"):
            traceviz.access_figure(t)


# ------------------------------------------------------------------ pictures

@sim_only
def test_access_figure_colours_each_element_by_its_writer():
    a = _rand(40)
    out = torch.empty(40)
    with gpulab.trace() as t:
        basics.vector_add_kernel[2, 32](a, a, out)
    fig = traceviz.access_figure(t, wrap=32)
    heatmaps = [d for d in fig.data if d.type == "heatmap"]
    assert [h.z.shape if isinstance(h.z, np.ndarray) else np.shape(h.z) for h in heatmaps] == [(2, 32)]
    z = np.asarray(heatmaps[0].z, dtype=float)
    assert z[0, 5] == 5 and z[1, 5] == 5          # element 37: thread 5 of block 1
    assert np.isnan(z[1, 8:]).all()                # the wrapped row's tail is past the end
    assert "out[37]" in heatmaps[0].text[1][5] and "block (1,0,0)" in heatmaps[0].text[1][5]
    by_block = traceviz.access_figure(t, kind="read", color="block", thread=3)
    z = np.asarray([d for d in by_block.data if d.type == "heatmap"][0].z, dtype=float)
    assert z[0, 3] == 0 and z[1, 3] == 1 and np.isnan(z[0, 4])
    with pytest.raises(ValueError, match="color"):
        traceviz.access_figure(t, color="warp speed")


@sim_only
def test_racing_elements_are_crossed_and_phases_pictured(monkeypatch):
    with gpulab.trace() as t:
        plain_histogram[1, 32](_rand(20), torch.zeros(1))
    fig = traceviz.access_figure(t)
    crosses = [d for d in fig.data if d.type == "scatter"]
    assert crosses and list(crosses[0].x) == [0]
    with gpulab.trace() as t:
        basics.block_sums(_rand(100))
    fig = traceviz.phase_figure(t, "cache")
    z = np.asarray(fig.data[0].z, dtype=float)
    assert z.shape == (10, 256) and (~np.isnan(z[1])).sum() == 128 and z[8, 0] == 0  # phase 9: the final read
    warps = traceviz.warp_figure(t)
    assert all(c == "seagreen" for c in warps.data[0].marker.color)
    drawn = []
    monkeypatch.setattr(traceviz, "warp_figure", lambda rec, launch: drawn.append(("warps", launch)) or warps)
    monkeypatch.setattr(traceviz, "access_figure", lambda rec, launch, kind, *a, **k: drawn.append((kind, launch))
                        or fig)
    box = traceviz.explore(t)
    (launch_picker, view_picker), (kind_picker, _) = box.children[0].children, box.children[1].children
    assert launch_picker.options[0] == ("0: block_sums_kernel", 0)
    kind_picker.value = "read"
    view_picker.value = "warps"
    assert drawn == [("write", 0), ("read", 0), ("warps", 0)]   # each pick redraws


@sim_only
def test_tracer_cost_is_bounded():
    """Tracing multiplies a simulated launch's time by a small factor (recorded with
    machine and date in benchmarks/results/simulator/simtrace_overhead.md)."""
    import time

    a = _rand(64)
    out = torch.empty(64)
    basics.vector_add_kernel[2, 32](a, a, out)  # compiled, warm
    start = time.perf_counter()
    basics.vector_add_kernel[2, 32](a, a, out)
    plain = time.perf_counter() - start
    start = time.perf_counter()
    with gpulab.trace():
        basics.vector_add_kernel[2, 32](a, a, out)
    traced = time.perf_counter() - start
    assert traced < 10 * plain + 0.05, (plain, traced)


@gpulab.kernel
def two_shared_arrays(x, out):
    small = cuda.shared.array(32, dtype=float32)
    large = cuda.shared.array(64, dtype=float32)
    t = cuda.threadIdx.x
    small[t] = x[cuda.grid(1)]
    large[t] = 2 * x[cuda.grid(1)]
    large[t + 32] = 0.0
    cuda.syncthreads()
    out[cuda.grid(1)] = small[31 - t] + large[t]


@sim_only
def test_each_blocks_shared_arrays_keep_their_names():
    """Blocks run one after the other and a block may get the memory an earlier one freed:
    accesses are named by the arrays of their own block."""
    x = _rand(96)
    out = torch.empty(96)
    with gpulab.trace() as t:
        two_shared_arrays[3, 32](x, out)
    assert t.findings() == []
    shared = [r for r in t.accesses() if r.space == "shared"]
    assert {r.array for r in shared} == {"small", "large"}
    for r in shared:
        assert (r.array == "small") == (r.index[0] < 32 and r.kind == "write" and r.step == 1
                                         or r.kind == "read" and r.index == (31 - r.thread[0],) and r.step == 5), r
    expected = x.view(3, 32).flip(1) + 2 * x.view(3, 32)
    torch.testing.assert_close(out.view(3, 32), expected)


# ------------------------------------------------------------------ the checks engine uses it

@gpulab.reference
def _copy_reference(x):
    return x.clone()


def _copy_task(**overrides):
    from gpulab.course.checks.engine import KERNEL, Sizes, Task

    spec = dict(chapter="xx", number=91, title="copy", kind=KERNEL, reference=_copy_reference,
                make_inputs=lambda n, gen: torch.rand(n, generator=gen), sizes=Sizes(sim=[21]),
                launch=lambda k, inputs, outputs, size: k[1, 32](*inputs, *outputs))
    spec.update(overrides)
    return Task(**spec)


@sim_only
def test_the_engine_names_the_thread_the_array_and_the_index_out_of_bounds():
    from gpulab.course.feedback import TaskFailed

    with pytest.raises(TaskFailed, match=r"out of bounds: reads_one_past_the_end: thread \(21,0,0\) of block "
                                         r"\(0,0,0\) read x\[21\] at line \d+, out of bounds: past the end of x"):
        _copy_task().run(reads_one_past_the_end)
    with pytest.raises(TaskFailed, match=r"thread \(0,0,0\) of block \(0,0,0\) read x\[-1\] .* negative index"):
        _copy_task(number=92).run(reads_left_neighbour)


@sim_only
def test_a_picture_of_an_image_keeps_its_rows_and_picks_its_arrays():
    m = _rand(3, 4)
    out = torch.empty(4, 3)
    with gpulab.trace() as t:
        basics.transpose_naive_kernel[(1, 1), (32, 8)](m, out)
    fig = traceviz.access_figure(t, kind="read", arrays=["src"])
    (heatmap,) = [d for d in fig.data if d.type == "heatmap"]
    assert np.shape(heatmap.z) == (3, 4)
    img = torch.zeros(2, 5, 3)

    @gpulab.kernel
    def fill_rgb(img):
        x, y = cuda.grid(2)
        if y < img.shape[0] and x < img.shape[1]:
            for ch in range(3):
                img[y, x, ch] = ch

    with gpulab.trace() as t:
        fill_rgb[(1, 1), (8, 2)](img)
    (heatmap,) = [d for d in traceviz.access_figure(t).data if d.type == "heatmap"]
    assert np.shape(heatmap.z) == (2, 15)      # [H, W, C]: H rows of W * C
    with pytest.raises(ValueError, match="no write"):
        traceviz.access_figure(t, arrays=["nothing"])


@sim_only
def test_uncoalesced_and_bank_conflicted_elements_are_ringed():
    m = _rand(32, 32)
    out = torch.empty(32, 32)
    with gpulab.trace() as t:
        basics.transpose_naive_kernel[(1, 4), (32, 8)](m, out)
        basics.transpose_tiled_unpadded_kernel[(1, 1), (32, 8)](m, out)
    rings = [d for d in traceviz.access_figure(t, launch=0).data if d.name == "in an uncoalesced warp access"]
    assert len(rings) == 1 and len(rings[0].x) == 32 * 32     # every write of dst was in one
    assert not [d for d in traceviz.access_figure(t, launch=0, kind="read").data if d.type == "scatter"]
    shared = [d for d in traceviz.access_figure(t, launch=1, kind="read").data
              if d.name == "in a bank-conflicted warp access"]
    assert len(shared) == 1 and len(shared[0].x) == 32 * 32   # every read of the unpadded tile


@gpulab.kernel
def sums_a_shared_row(out):
    row = cuda.shared.array(32, dtype=float32)
    t = cuda.threadIdx.x
    row[t] = t
    cuda.syncthreads()
    total = float32(0.0)
    for i in range(32):
        total += row[i]
    out[cuda.blockIdx.x, t] = total


@sim_only
def test_the_threads_of_a_block_share_one_shared_array_even_when_preempted():
    # the simulator makes a block's shared array on the first thread's call; a thread
    # preempted between the look-up and the store once made a second one (a correct
    # persistent GEMM then gave wrong rows on a loaded machine). Switching threads as often
    # as possible made that happen in every traced launch of that GEMM before the fix
    import sys
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for traced in (False, True):
            out = torch.zeros(40, 32)
            if traced:
                with gpulab.trace():
                    sums_a_shared_row[40, 32](out)
            else:
                sums_a_shared_row[40, 32](out)
            assert torch.all(out == 496), f"traced={traced}: {int((out != 496).sum())} sums saw another array"
    finally:
        sys.setswitchinterval(interval)
