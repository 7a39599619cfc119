"""Chapter 17: the verifier classifies every planted candidate correctly — with the static
checker, and (for those it refuses) without it, where only the isolation and the parent's
own checks stand — and survives hostile ones without bringing the caller down."""
import os

import pytest

import gpulab
from gpulab.kernelagent import Verifier, naive_check, planted_candidates, get_planted
from gpulab.kernelagent.planted import RELU_SOURCE

PLANTED = [p for p in planted_candidates() if gpulab.ON_GPU or not p.gpu_only]
HOSTILE = {p.name for p in PLANTED if p.group == "hostile"}
# (candidate, static checker on?): the runtime layer alone for every one it would refuse
LAYERS = [(p, True) for p in PLANTED if p.name not in HOSTILE] + \
         [(p, False) for p in PLANTED if p.runtime_status is not None and p.name not in HOSTILE]


@pytest.fixture(scope="module")
def verifier():
    # one worker for all; timing only for the candidates that only timing shows (a cheat
    # that skips work is also implausibly fast on a GPU, and that flag has its own test)
    with Verifier(seed=11, time_limit_s=120, timing=False) as v:
        yield v


@pytest.mark.parametrize("cand,static", LAYERS,
                         ids=lambda x: x.name if hasattr(x, "name") else ("full" if x else "runtime"))
def test_verifier_classifies_planted_candidate(verifier, cand, static):
    status, flags = cand.expected(static)
    verifier.static_check, verifier.timing = static, cand.timed
    try:
        verdict = verifier.verify(cand.task, cand.source, cand.kind)
    finally:
        verifier.static_check, verifier.timing = True, False
    assert verdict.status == status, str(verdict)
    if cand.gpu_only:   # leftover memory may also hold an earlier case's answer (cached_result)
        assert set(flags) <= set(verdict.flags), str(verdict)
    else:
        assert set(verdict.flags) == set(flags), str(verdict)
    assert verdict.passed == (status == "pass")


def test_attacks_on_the_verifier_keep_right_values_where_the_isolation_refused_them(verifier):
    # refused by the OS, the parent-reading cheat computes after all: its values are right,
    # so the parent's memory really was out of reach (a read would have written NaN)
    verifier.static_check = False
    try:
        verdict = verifier.verify("relu", get_planted("relu_reads_parent").source)
    finally:
        verifier.static_check = True
    assert verdict.failed_cases == 0 and "reads_parent" in verdict.flags, str(verdict)


@pytest.mark.parametrize("cand", [p for p in PLANTED if p.naive_passes and not p.gpu_only], ids=lambda p: p.name)
def test_each_cheat_passes_the_naive_check(cand):
    ok, message = naive_check(cand.task, cand.source)
    assert ok, message


def test_the_naive_check_rejects_a_plainly_wrong_candidate():
    ok, _ = naive_check("layernorm", get_planted("layernorm_unbiased").source)
    assert not ok


def test_hostile_candidates_get_verdicts_and_the_worker_recovers():
    # a short time limit for the hang; each hostile one costs the worker, not this process.
    # The static checker refuses all four before they run: off, to show the worker holds
    with Verifier(seed=3, time_limit_s=4, memory_limit_mb=gpulab.pick(sim=256, gpu=2048),
                  static_check=False) as v:
        for name in ("crash_exit", "crash_segfault", "hang", "memory_hog"):
            cand = get_planted(name)
            verdict = v.verify(cand.task, cand.source, cand.kind)
            assert verdict.status == cand.runtime_status, (name, str(verdict))
            assert not verdict.passed
        assert v.restarts >= 2
        assert v.verify("relu", RELU_SOURCE).passed   # and the next candidate is fine
        assert "SIGSEGV" in v.verify("relu", get_planted("crash_segfault").source).message
        v.static_check = True
        refused = v.verify("relu", get_planted("crash_exit").source)
    assert refused.status == "fail" and "imports 'os'" in refused.flags["static_check"]
    assert os.getpid()  # still here


def test_verifier_rejects_bad_arguments():
    with pytest.raises(ValueError, match="at least 5"):
        Verifier(seeds=3)
    with pytest.raises(TypeError, match="LoopholeCheck"):
        Verifier(extra_checks=[lambda: None])
    with Verifier() as v:
        with pytest.raises(ValueError, match="defines solve"):
            v.verify("relu", "def forward(x): return x")
        with pytest.raises(ValueError, match="kind"):
            v.verify("relu", RELU_SOURCE, kind="cuda")
        with pytest.raises(KeyError, match="no task"):
            v.verify("nope", RELU_SOURCE)


def test_a_candidate_that_does_not_load_is_an_error(verifier):
    verdict = verifier.verify("relu", "def solve(x, out):\n    return (\n")
    assert verdict.status == "error" and "SyntaxError" in verdict.message


@pytest.mark.gpu
def test_gpu_timing_flags_a_cached_answer():
    source = RELU_SOURCE.replace("def solve(x, out):\n    launch_relu(x, out)", '''_done = {}


def solve(x, out):
    key = (x.data_ptr(), out.data_ptr())      # the benchmark calls with the same tensors
    if key not in _done:
        launch_relu(x, out)
        _done[key] = True''')
    with Verifier(seed=5) as v:
        verdict = v.verify("relu", source)
    # each timed run has fresh inputs and is checked: the skipped ones are wrong (and, with
    # no work done, faster than the roofline allows)
    assert not verdict.passed and {"wrong_when_timed", "implausible_speedup"} & set(verdict.flags), str(verdict)


@pytest.mark.gpu
def test_gpu_timing_of_a_correct_kernel_is_plausible_and_feeds_back():
    with Verifier(seed=5) as v:
        verdict = v.verify("relu", RELU_SOURCE)
    assert verdict.passed, str(verdict)
    assert verdict.timing["candidate"]["clock"] == "cuda events"
    assert 0 < verdict.feedback["roofline_fraction"] <= 1.25
    assert {"mean_ms", "std_ms", "min_ms", "max_ms"} <= set(verdict.timing["candidate"])
