"""Chapter 17: what the verifier's verdict rests on — the child cannot read the parent, no
process outlives a verdict, replies come only from the worker, the roofline's peaks come
from the parent — and the static checker's rules, one at a time."""
import os
import time

import pytest
import torch

import gpulab
from gpulab import peaks
from gpulab.kernelagent import Verifier, get_planted, isolation, planted_candidates
from gpulab.kernelagent.planted import RELU_SOURCE, orphan_log_path, orphan_source
from gpulab.kernelagent.static_check import check_source
from gpulab.kernelagent import search


@pytest.fixture(scope="module")
def verifier():
    # the runtime layers alone: every candidate here would be refused by the static checker
    with Verifier(seed=19, time_limit_s=120, timing=False, static_check=False) as v:
        yield v


def _status(pid: int, key: str) -> str:
    with open(f"/proc/{pid}/status") as f:
        return next(line.split(":", 1)[1].strip() for line in f if line.startswith(key + ":"))


def test_the_worker_runs_apart_from_the_parent(verifier):
    worker = verifier._ensure_worker()
    assert worker.namespace in ("pid", "user+pid", "subreaper")
    if os.geteuid() == 0:   # root: the worker drops to a uid of its own, with no capabilities
        assert int(_status(worker.pid, "Uid").split()[0]) == verifier.isolation.uid != 0
        assert int(_status(worker.pid, "CapEff"), 16) == 0
        assert _status(worker.pid, "NoNewPrivs") == "1"
    else:                   # the same user: this process is non-dumpable, so the kernel
        # gives its /proc files to root and refuses ptrace and /proc/<pid>/mem to its own user
        assert os.stat("/proc/self/mem").st_uid == 0
    if "pid" in worker.namespace:
        assert isolation.namespace_of(worker.pid) != isolation.namespace_of(os.getpid())


def test_no_process_outlives_a_verdict(verifier):
    token = f"t{os.getpid()}"
    worker = verifier._ensure_worker()        # the worker that will run it
    verdict = verifier.verify("relu", orphan_source(token))
    assert "left_processes" in verdict.flags and "starts_processes" in verdict.flags, str(verdict)
    assert verdict.failed_cases == 0          # a correct kernel otherwise
    log = orphan_log_path(os.path.join(verifier.workdir, "home"), token)
    assert os.path.exists(log)                # it did write while it lived...
    size = os.path.getsize(log)
    time.sleep(0.3)
    assert os.path.getsize(log) == size       # ...and writes no more: it is gone
    # and nothing of that worker's tree runs: not in its PID namespace, not below its keeper
    if worker.namespace_id:
        assert isolation.processes_in_namespace(worker.namespace_id) == []
    assert isolation.descendants(worker.keeper) == [] and not worker._running(worker.keeper)
    assert verifier.verify("relu", RELU_SOURCE).passed   # a fresh worker serves the next one


def test_a_second_reply_is_refused(verifier):
    # writes a reply of its own with the right nonce, then lets the worker go on: the worker's
    # real reply then arrives as an answer to the next request, and gives it away
    source = get_planted("relu_forges_reply").source.replace("    os._exit(0)", "    return")
    verdict = verifier.verify("relu", source)
    assert verdict.status == "fail" and "forged_reply" in verdict.flags, str(verdict)


def test_the_peaks_come_from_the_parent(verifier, tmp_path, monkeypatch):
    monkeypatch.setenv("GPULAB_CACHE", str(tmp_path))
    verifier.timing = True
    try:
        verdict = verifier.verify("relu", get_planted("relu_poisons_peaks").source)
    finally:
        verifier.timing = False
    assert "writes_files" in verdict.flags, str(verdict)
    assert not (tmp_path / "peaks.json").exists() or "1000000000" not in (tmp_path / "peaks.json").read_text()
    assert verdict.feedback["peak_gbps"] < 1e6          # not the poisoned 1e9


def test_the_peaks_cache_is_read_only_when_private(tmp_path, monkeypatch):
    monkeypatch.setenv("GPULAB_CACHE", str(tmp_path))
    fake = peaks.Peaks(peaks._device_name(), 123.0, 456.0, "fake")
    monkeypatch.setattr(peaks, "_measure", lambda: fake)
    assert peaks.machine_peaks() == fake
    cache = tmp_path / "peaks.json"
    assert cache.stat().st_mode & 0o777 == 0o600
    cache.write_text(cache.read_text().replace("123.0", "999999.0"))
    os.chmod(cache, 0o666)                               # anyone may have written it now
    assert peaks.machine_peaks().copy_gbps == 123.0      # so it is measured again, not read
    assert peaks.trusted_peaks() is peaks.trusted_peaks()


# ------------------------------------------------------------------ the static checker

@pytest.mark.parametrize("snippet,rule", [
    ("import os", "import"),
    ("from gpulab.kernelagent.tasks import SUITE", "import"),
    ("import numpy as np", "import"),
    ("f = sys._getframe(1)", "private_name"),
    ("out.__class__ = int", "private_name"),
    ("g = tb.tb_frame", "frame_access"),
    ("m = torch.overrides.TorchFunctionMode", "function_mode"),
    ("v = getattr(torch, 'relu')", "forbidden_name"),
    ("exec('1')", "forbidden_name"),
    ("torch.cuda.Event.elapsed_time = None", "attribute_assignment"),
    ("class Lazy(torch.Tensor):\n    pass", "subclass"),
    ("try:\n    pass\nexcept Exception:\n    pass", "try_except"),
    ("h = out.numpy()", "host_compute"),
])
def test_static_checker_names_the_rule(snippet, rule):
    source = RELU_SOURCE + "\n\ndef helper(x, out, sys=None, tb=None):\n" + \
        "\n".join("    " + line for line in snippet.splitlines()) + "\n"
    rules = {f.rule for f in check_source(source, "numba")}
    assert rule in rules, (snippet, rules)


def test_static_checker_accepts_honest_candidates():
    honest = [p for p in planted_candidates() if p.status == "pass" or p.group == "wrong"]
    for cand in honest:
        assert check_source(cand.source, cand.kind) == [], cand.name
    for task in ("chain2", "chain8"):
        for genome in (search.baseline_genome(), search.Genome(64, 4, "contiguous", False, True, True)):
            assert check_source(search.render(task, genome), "numba") == []


def test_static_checker_requires_a_launched_kernel_for_numba_candidates():
    torch_only = "import torch\n\n\ndef solve(x, out):\n    out.copy_(x)\n"
    assert {f.rule for f in check_source(torch_only, "numba")} == {"no_kernel"}
    assert check_source(torch_only, "torch") == []
    with pytest.raises(ValueError, match="kind"):
        check_source(torch_only, "cuda")


def test_parent_inputs_and_device_inputs_agree():
    task = gpulab.kernelagent.get_task("softmax")
    a = task.device_inputs((5, 7), 3, gpulab.device)
    b = task.device_inputs((5, 7), 3, gpulab.device)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert a[0].device.type == torch.device(gpulab.device).type




def test_a_worker_that_cannot_start_falls_back_to_the_next_way(monkeypatch):
    # on the H200 (2026-12-01) a worker forked into a PID namespace could not start CUDA
    # (error 304): the verifier then tries a fork under a subreaper keeper (what worked there),
    # then a fresh interpreter. Here the namespace fork is made to fail the same way; the
    # choice is remembered per process, so it is put back afterwards. The fresh-interpreter
    # way is not exercised here (an interpreter start costs over the chapter's budget)
    from gpulab.kernelagent import verifier as vm
    from gpulab.kernelagent.worker import FAIL_ATTEMPTS_ENV
    monkeypatch.setenv(FAIL_ATTEMPTS_ENV, "fork-pid")
    monkeypatch.setattr(vm, "_START_FROM", [0])
    monkeypatch.setattr(vm, "START_FAILURES", [])
    with Verifier(seed=1, timing=False, static_check=False) as v:
        assert "subreaper" in v.isolation_description
        # one candidate proves the fallen-back worker runs and cleans up after itself
        orphan = v.verify("relu", get_planted("relu_orphan").source)
        assert "left_processes" in orphan.flags, str(orphan)
    assert len(vm.START_FAILURES) == 1 and "fork-pid" in vm.START_FAILURES[0], vm.START_FAILURES
    assert "simulated start failure" in vm.START_FAILURES[0]


def test_the_device_side_check_of_timed_outputs_agrees_with_compare():
    from gpulab.kernelagent.verifier import _close_on_device, compare
    ref = torch.tensor([1.0, float("inf"), float("nan"), -2.0, 0.0])
    variants = [ref.clone()]
    for i, value in [(0, 1.0 + 1e-7), (0, 1.1), (1, 1e30), (1, -float("inf")), (2, 0.0), (4, float("nan")),
                     (3, -2.00001)]:
        v = ref.clone()
        v[i] = value
        variants.append(v)
    for out in variants:
        assert _close_on_device(out, ref, 1e-5, 1e-5) == (compare(out, ref, 1e-5, 1e-5)[0] is None), out
    assert not _close_on_device(ref[:2], ref, 1e-5, 1e-5)
