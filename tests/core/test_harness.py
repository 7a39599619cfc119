"""check, bench, roofline and the reference guard."""
import json

import pytest
import torch

import gpulab
from gpulab import harness, peaks
from gpulab.harness import CheckFailed, ReferenceCalledError, compare
from numba import cuda  # after gpulab, which picks the GPU or the simulator


def _two_vectors(n, gen):
    return torch.rand(n, generator=gen), torch.rand(n, generator=gen)


def _add(a, b, out):
    out.copy_(a + b)


def test_check_passes_a_right_candidate_with_a_report():
    report = gpulab.check(_add, lambda a, b: a + b, _two_vectors, sizes=(1, 129), trials=2)
    assert report.ok and report.cases == 4
    assert "✅" in str(report) and "4 random cases" in str(report)


def test_check_catches_unwritten_elements():
    def forgets_last(a, b, out):
        out[:-1] = a[:-1] + b[:-1]

    report = gpulab.check(forgets_last, lambda a, b: a + b, _two_vectors, sizes=(5,), trials=1,
                          raise_on_fail=False)
    assert not report.ok
    assert "never written (still NaN)" in str(report) and "index (4,)" in str(report)


def test_check_raises_with_the_report_by_default():
    with pytest.raises(CheckFailed, match="1 of 1 cases wrong"):
        gpulab.check(lambda a, b, out: out.copy_(a - b), lambda a, b: a + b, _two_vectors, sizes=(10,),
                     trials=1)


def test_check_catches_modified_inputs():
    def clobbers(a, b, out):
        out.copy_(a + b)
        a.zero_()

    report = gpulab.check(clobbers, lambda a, b: a + b, _two_vectors, sizes=(8,), trials=1,
                          raise_on_fail=False)
    assert "input 0 was modified" in str(report)


def test_check_uses_fresh_inputs_every_trial():
    seen = []

    def remembers(a, b, out):
        seen.append(a.clone())
        out.copy_(a + b)

    gpulab.check(remembers, lambda a, b: a + b, _two_vectors, sizes=(16,), trials=3)
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])


def test_check_reports_a_crash_as_a_failed_case():
    def crashes(a, b, out):
        raise RuntimeError("boom")

    report = gpulab.check(crashes, lambda a, b: a + b, _two_vectors, sizes=(3,), trials=1,
                          raise_on_fail=False)
    assert "raised RuntimeError: boom" in str(report)


def test_check_functional_candidates_and_shape_errors():
    gpulab.check(lambda a, b: a + b, lambda a, b: a + b, _two_vectors, sizes=(7,), writes_outputs=False)
    report = gpulab.check(lambda a, b: (a + b)[:-1], lambda a, b: a + b, _two_vectors, sizes=(7,),
                          writes_outputs=False, raise_on_fail=False)
    assert "shape (6,)" in str(report)


def test_reference_guard_catches_a_candidate_that_calls_the_answer():
    @gpulab.reference
    def ref(a, b):
        return a + b

    assert torch.equal(ref(torch.ones(2), torch.ones(2)), torch.full((2,), 2.0))  # fine outside
    with pytest.raises(ReferenceCalledError, match="called the reference"):
        gpulab.check(lambda a, b, out: out.copy_(ref(a, b)), ref, _two_vectors, sizes=(4,))


def test_reference_guard_holds_around_the_wrapper_and_in_other_threads():
    @gpulab.reference
    def ref(a, b):
        return a + b

    def via_wrapped(a, b, out):           # skips the guarding wrapper
        out.copy_(ref.__wrapped__(a, b))

    def in_a_thread(a, b, out):           # as the simulator runs a kernel's threads
        import threading
        errors = []

        def work():
            try:
                out.copy_(ref(a, b))
            except ReferenceCalledError as exc:
                errors.append(exc)

        t = threading.Thread(target=work)
        t.start()
        t.join()
        if errors:
            raise errors[0]

    for cheat in (via_wrapped, in_a_thread):
        with pytest.raises(ReferenceCalledError, match="called the reference"):
            gpulab.check(cheat, ref, _two_vectors, sizes=(4,))
    assert torch.equal(ref.__wrapped__(torch.ones(1), torch.ones(1)), torch.full((1,), 2.0))  # fine after


def test_reference_guard_catches_a_simulated_kernel_that_calls_the_answer():
    @gpulab.reference
    def answer(i):
        return 2.0 * i

    @gpulab.kernel
    def cheating(out):
        i = cuda.grid(1)
        if i < out.size:
            out[i] = answer(i)

    if gpulab.ON_GPU:
        pytest.skip("a compiled kernel cannot call Python; only the simulator can")
    out = torch.zeros(8)
    with pytest.raises(ReferenceCalledError):
        with harness.candidate_running("cheating"):
            cheating[1, 8](out)


def test_check_leaves_torch_global_seed_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    gpulab.check(lambda a, b, out: out.copy_(a + b), lambda a, b: a + b, _two_vectors, sizes=(4,))
    assert torch.equal(torch.rand(3), expected)


def test_forbid_calls_blocks_and_restores():
    original = torch.sum
    with pytest.raises(harness.ForbiddenCallError, match="torch.sum"):
        with gpulab.forbid_calls([(torch, "sum")]):
            torch.sum(torch.ones(3))
    assert torch.sum is original


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.int32, 0.0)])
def test_tolerance_by_dtype(dtype, tol):
    assert gpulab.tolerance(dtype)[0] == tol


def test_compare_integer_outputs_must_match_exactly():
    ref = torch.tensor([1, 2, 3], dtype=torch.int32)
    assert compare(ref.clone(), ref)[0] is None
    assert "1 of 3 elements wrong" in compare(torch.tensor([1, 2, 4], dtype=torch.int32), ref)[0]


def test_compare_nan_where_reference_is_nan_is_fine():
    ref = torch.tensor([float("nan"), 1.0])
    assert compare(ref.clone(), ref)[0] is None


def test_bench_reports_median_and_clock():
    t = gpulab.bench(lambda: torch.ones(100).sum(), name="tiny")
    assert t.median_ms > 0 and len(t.times_ms) >= 3
    assert t.clock == ("cuda events" if gpulab.ON_GPU else "cpu wall time")
    assert "tiny: median" in str(t)
    lo, hi = t.iqr_ms
    assert lo <= t.median_ms <= hi


def test_roofline_arithmetic():
    p = peaks.Peaks("test device", copy_gbps=1000.0, fp32_gflops=10000.0, clock="made up")
    r = gpulab.roofline(2.0, bytes_moved=1e9, flops=1e9, peaks=p)   # 1 GB at 1000 GB/s = 1 ms
    assert r.limit == "memory" and r.bound_ms == pytest.approx(1.0)
    assert r.fraction == pytest.approx(0.5) and r.achieved_gbps == pytest.approx(500.0)
    r2 = gpulab.roofline(1.0, bytes_moved=1e6, flops=1e11, peaks=p)  # 100 GFLOP at 10 TFLOP/s = 10 ms
    assert r2.limit == "compute" and r2.bound_ms == pytest.approx(10.0)
    with pytest.raises(ValueError, match="positive"):
        gpulab.roofline(0.0, 1.0, peaks=p)


def test_machine_peaks_are_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("GPULAB_CACHE", str(tmp_path))
    calls = []
    fake = peaks.Peaks(peaks._device_name(), 123.0, 456.0, "fake")
    monkeypatch.setattr(peaks, "_measure", lambda: calls.append(1) or fake)
    assert peaks.machine_peaks() == fake
    assert peaks.machine_peaks() == fake
    assert len(calls) == 1
    cached = json.loads((tmp_path / "peaks.json").read_text())
    assert cached[fake.device]["copy_gbps"] == 123.0
    (tmp_path / "peaks.json").write_text("{not json")   # a damaged cache is re-measured
    assert peaks.machine_peaks() == fake and len(calls) == 2


def test_real_peak_measurement_is_positive(tmp_path, monkeypatch):
    monkeypatch.setenv("GPULAB_CACHE", str(tmp_path))
    p = peaks.machine_peaks(refresh=True)
    assert p.copy_gbps > 0 and p.fp32_gflops > 0 and p.ridge > 0


def test_compare_equal_infinities_match_and_wrong_infinities_do_not():
    ref = torch.tensor([float("inf"), -float("inf"), 1.0])
    assert compare(ref.clone(), ref)[0] is None
    assert "1 of 3 elements wrong" in compare(torch.tensor([float("inf"), 0.0, 1.0]), ref)[0]
