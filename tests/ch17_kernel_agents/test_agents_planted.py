"""Chapter 17: the verifier classifies every planted candidate correctly, and survives
hostile ones (crash, segfault, hang, memory hog) without bringing the caller down."""
import os

import pytest
import torch

import gpulab
from gpulab.kernelagent import Verifier, naive_check, planted_candidates, get_planted
from gpulab.kernelagent.planted import RELU_SOURCE

PLANTED = [p for p in planted_candidates() if gpulab.ON_GPU or not p.gpu_only]
HOSTILE = {"crash_exit", "crash_segfault", "hang", "memory_hog"}


@pytest.fixture(scope="module")
def verifier():
    # timing off: a cheat that skips work is also implausibly fast on a GPU, and that flag
    # has its own test below; the default memory limit leaves room for torch's and numba's
    # lazily loaded GPU libraries
    with Verifier(seed=11, time_limit_s=120, timing=False) as v:
        yield v


@pytest.mark.parametrize("cand", [p for p in PLANTED if p.name not in HOSTILE], ids=lambda p: p.name)
def test_verifier_classifies_planted_candidate(verifier, cand):
    verdict = verifier.verify(cand.task, cand.source, cand.kind)
    assert verdict.status == cand.status, str(verdict)
    if cand.gpu_only:   # leftover memory may also hold an earlier case's answer (cached_result)
        assert set(cand.flags) <= set(verdict.flags), str(verdict)
    else:
        assert set(verdict.flags) == set(cand.flags), str(verdict)
    assert verdict.passed == (cand.status == "pass")


@pytest.mark.parametrize("cand", [p for p in PLANTED if p.naive_passes and not p.gpu_only], ids=lambda p: p.name)
def test_each_cheat_passes_the_naive_check(cand):
    ok, message = naive_check(cand.task, cand.source)
    assert ok, message


def test_the_naive_check_rejects_a_plainly_wrong_candidate():
    ok, _ = naive_check("layernorm", get_planted("layernorm_unbiased").source)
    assert not ok


def test_hostile_candidates_get_verdicts_and_the_worker_recovers():
    # a short time limit for the hang; each hostile one costs the worker, not this process
    with Verifier(seed=3, time_limit_s=4, memory_limit_mb=gpulab.pick(sim=256, gpu=2048)) as v:
        for name in ("crash_exit", "crash_segfault", "hang", "memory_hog"):
            cand = get_planted(name)
            verdict = v.verify(cand.task, cand.source, cand.kind)
            assert verdict.status == cand.status, (name, str(verdict))
            assert not verdict.passed
        assert v.restarts >= 2
        assert v.verify("relu", RELU_SOURCE).passed   # and the next candidate is fine
    assert os.getpid()  # still here


def test_crash_verdict_names_the_signal():
    with Verifier(seed=3, time_limit_s=30) as v:
        verdict = v.verify("relu", get_planted("crash_segfault").source)
    assert verdict.status == "crashed" and "SIGSEGV" in verdict.message


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


def test_expected_outputs_never_reach_the_child(verifier, tmp_path):
    # a candidate that searches its working directory for anything with the answer in it
    source = '''import glob, torch
def solve(x, out):
    for path in glob.glob("*.pt"):
        for case in torch.load(path, weights_only=True):
            assert "expected" not in case, "the answer was handed to the candidate"
    out.copy_(x)
'''
    verdict = verifier.verify("relu", source, kind="torch")
    assert verdict.status == "fail" and "AssertionError" not in verdict.message, str(verdict)


def test_a_candidate_that_goes_wrong_when_timed_is_caught():
    # right for the checked runs, then (as in a timing loop, called again and again) it
    # stops computing and leaves zeros: the output after the timed runs gives it away
    source = RELU_SOURCE.replace("def solve(x, out):\n    launch_relu(x, out)", '''_calls = [0]


def solve(x, out):
    _calls[0] += 1
    if _calls[0] <= 15:           # more than the checked runs make
        launch_relu(x, out)
    else:
        out.zero_()''')
    assert source != RELU_SOURCE
    with Verifier(seed=5, timing=True) as v:
        honest = v.verify("relu", RELU_SOURCE)
        verdict = v.verify("relu", source)
    assert honest.passed and "wrong_when_timed" not in honest.flags, str(honest)
    assert not verdict.passed and "wrong_when_timed" in verdict.flags, str(verdict)
    assert verdict.failed_cases == 0       # every checked case was right


@pytest.mark.gpu
def test_gpu_timing_flags_a_cached_answer_as_implausible():
    source = RELU_SOURCE.replace("def solve(x, out):\n    launch_relu(x, out)", '''_done = {}


def solve(x, out):
    key = (x.data_ptr(), out.data_ptr())      # the benchmark calls with the same tensors
    if key not in _done:
        launch_relu(x, out)
        _done[key] = True''')
    with Verifier(seed=5) as v:
        verdict = v.verify("relu", source)
    assert "implausible_speedup" in verdict.flags, str(verdict)


@pytest.mark.gpu
def test_gpu_timing_of_a_correct_kernel_is_plausible_and_feeds_back():
    with Verifier(seed=5) as v:
        verdict = v.verify("relu", RELU_SOURCE)
    assert verdict.passed, str(verdict)
    assert verdict.timing["candidate"]["clock"] == "cuda events"
    assert 0 < verdict.feedback["roofline_fraction"] <= 1.25
