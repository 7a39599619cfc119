"""A verifier for untrusted kernel candidates that is hard to fool.

Agents (CudaForge, CUDA-L1, robust-kbench) are only as good as the verifier that scores
them: a reward for "passes and is fast" is also a reward for fooling the check, and RL or
evolutionary search finds such tricks (robust-kbench, arXiv 2509.14279, and the
KernelBench authors list many). :class:`Verifier` runs each candidate

* in a **separate process** (:mod:`gpulab.kernelagent.worker`) with a wall-time limit and a
  memory limit, so a crash, a hang or a memory hog costs the candidate, never the caller;
* on **>= 5 seeds over several shapes** (a hard-coded shape is wrong on the others);
* **before and after the reference** in the same process, on **fresh input copies**
  each run, into an output **poisoned with NaN** (an unwritten element is caught; an answer
  read from the reference's leftover memory is right only after the reference);
* with the **expected outputs kept in the parent** (the child never holds the answer);

and flags the known loopholes (see :data:`FLAGS`). Each verdict says what it found.
"""
from __future__ import annotations

import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import importlib.util
import json
from dataclasses import asdict, dataclass, field

import torch

from .. import runtime, sandbox
from ..harness import compare as _harness_compare
from .tasks import Task, get_task
from .timing import plausible
from . import worker as _worker_module
from .worker import ALLOWED_FOR_KERNELS

# the worker runs candidates while a notebook may be graded: declare it to the sandbox,
# which lets it start (it installs the grading guard in itself first thing)
sandbox.trust_helper(_worker_module.__name__)

__all__ = ["Verifier", "Verdict", "FLAGS", "LoopholeCheck", "naive_check", "audit_task",
           "detect_kind", "STATUSES"]

#: what a verdict's ``status`` can be
STATUSES = ("pass", "fail", "error", "timeout", "crashed", "out_of_memory")

#: the loopholes the verifier flags, with what each means
FLAGS = {
    "calls_torch_op": "computed with torch instead of a kernel (numba candidate), or called the "
                      "library op that is the task (torch candidate)",
    "calls_reference": "called the task's reference function",
    "no_kernel": "a numba candidate that launched no kernel",
    "ignores_input": "the output did not change when an input it depends on changed",
    "shape_dependent": "right on the default shape only (a hard-coded or assumed shape)",
    "cached_result": "returned an earlier answer for new inputs of the same shape",
    "stale_memory": "right only after the reference ran (read its leftover memory)",
    "modifies_input": "changed an input tensor",
    "side_stream": "worked on another CUDA stream without joining the current one",
    "inspects_memory": "searched the process's objects (gc) as if for the answer",
    "implausible_speedup": "timed faster than the roofline allows",
    "wrong_when_timed": "wrong at the timing shape or after the timed runs (right only when checked)",
}


@dataclass
class Verdict:
    """What the verifier concluded about one candidate."""
    task: str
    kind: str
    status: str                                  # one of STATUSES
    flags: dict = field(default_factory=dict)    # loophole name -> detail
    message: str = ""
    cases: int = 0
    failed_cases: int = 0
    max_abs_error: float | None = None
    timing: dict | None = None                   # candidate/reference medians and IQRs
    speedup: float | None = None
    feedback: dict | None = None                 # achieved GB/s, GFLOP/s, roofline share
    log_tail: str = ""                           # the child's stderr, for crashes

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    @property
    def candidate_ms(self) -> float | None:
        return self.timing["candidate"]["median_ms"] if self.timing else None

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        icon = "✅" if self.passed else "❌"
        text = f"{icon} {self.task} ({self.kind}): {self.status}"
        if self.cases:
            text += f", {self.cases - self.failed_cases}/{self.cases} cases right"
        if self.flags:
            text += "; flags: " + "; ".join(f"{k} ({v})" for k, v in self.flags.items())
        if self.message:
            text += f". {self.message}"
        if self.speedup is not None:
            text += f"; speedup {self.speedup:.3g}x over torch eager ({self.timing['candidate']['clock']})"
        return text

    __repr__ = __str__


class LoopholeCheck:
    """A check of your own, run by the verifier beside its own.

    Override :meth:`extra_inputs` to add cases (the verifier runs the candidate on them and
    computes the reference in the parent), and :meth:`judge` to turn their results into a
    problem message (``None``: no problem). The default ``judge`` fails on any wrong case.
    """
    name = "custom_check"

    def extra_inputs(self, task: Task, shape, generator: torch.Generator) -> list[tuple]:
        return []

    def judge(self, task: Task, results: list[dict]) -> str | None:
        """``results``: one dict per extra case: ``inputs``, ``expected``, ``output``, ``problem``."""
        bad = [r for r in results if r["problem"]]
        if bad:
            return f"{len(bad)} of {len(results)} extra cases wrong: {bad[0]['problem']}"
        return None


def detect_kind(source: str) -> str:
    """``"numba"`` for source that defines a gpulab kernel, else ``"torch"``."""
    return "numba" if ("gpulab.kernel" in source or "@kernel" in source) else "torch"


# ------------------------------------------------------------------ the child

class _WorkerDied(Exception):
    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, IndexError, ValueError):
        return 0.0


class _Worker:
    """One child process and its JSON-lines pipe."""

    def __init__(self, workdir: str, memory_limit_mb: int, startup_timeout_s: float):
        self.workdir = workdir
        self.memory_limit_mb = memory_limit_mb
        self.log_path = os.path.join(workdir, "worker.log")
        env = dict(os.environ, GPULAB_QUIET="1", GPULAB_MODE=runtime.MODE,
                   GPULAB_VERIFIER_MEMORY_MB=str(memory_limit_mb),
                   PYTHONFAULTHANDLER="1")
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", _worker_module.__name__], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.log, cwd=workdir, env=env,
            start_new_session=True)  # its own process group: a kill takes its children too
        self._buffer = b""
        ready = self._read(startup_timeout_s)
        self.baseline_rss_mb = _rss_mb(self.proc.pid)
        if not ready.get("ready"):
            raise RuntimeError(f"verifier worker did not start: {ready}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 1500) -> str:
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()
            return data[-chars:].decode("utf-8", "replace")
        except OSError:
            return ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.log.close()

    def request(self, obj: dict, timeout_s: float) -> dict:
        try:
            self.proc.stdin.write((json.dumps(obj) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._died() from None
        return self._read(timeout_s)

    def _died(self) -> _WorkerDied:
        code = self.proc.wait()
        if code < 0:
            name = signal.Signals(-code).name
            how = f"killed by signal {name}"
            if -code == signal.SIGKILL:
                return _WorkerDied("crashed", how + " (out of memory, or killed)")
        else:
            how = f"exited with code {code}"
        return _WorkerDied("crashed", f"the candidate's process {how}")

    def _read(self, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        fd = self.proc.stdout.fileno()
        try:
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.kill()
                    raise _WorkerDied("timeout", f"no answer within {timeout_s:g} s: stopped")
                if sel.select(min(left, 0.1)):
                    chunk = os.read(fd, 1 << 16)
                    if not chunk:
                        raise self._died()
                    self._buffer += chunk
                elif (self.memory_limit_mb > 0 and hasattr(self, "baseline_rss_mb")
                      and _rss_mb(self.proc.pid) > self.baseline_rss_mb + self.memory_limit_mb):
                    self.kill()
                    raise _WorkerDied("out_of_memory", f"resident memory above the limit of "
                                      f"{self.memory_limit_mb} MB over the worker's start: stopped")
        finally:
            sel.close()
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)


# --------------------------------------------------------------- the verifier

def compare(out, ref, rtol=None, atol=None):
    """gpulab.harness.compare, but equal infinities count as equal (inf - inf is NaN there)."""
    if isinstance(out, torch.Tensor) and out.shape == ref.shape and out.is_floating_point():
        same_inf = torch.isinf(ref) & (out == ref)
        if bool(same_inf.any()):
            out, ref = out.masked_fill(same_inf, 0.0), ref.masked_fill(same_inf, 0.0)
    return _harness_compare(out, ref, rtol, atol)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.nan_to_num(), b.nan_to_num())


def _close(a, b, rtol, atol) -> bool:
    return isinstance(a, torch.Tensor) and compare(a, b, rtol, atol)[0] is None


class Verifier:
    """Runs candidates in a child process and judges them (see the module docstring).

    ``seeds``: how many random cases (at least 5), spread over the task's shapes.
    ``seed``: the first seed (``None``: a fresh random one, so a candidate cannot learn the
    test inputs). ``time_limit_s`` covers one candidate; ``memory_limit_mb`` (default 2 GB
    under the simulator, 8 GB on a GPU) is on top of the worker's own memory. ``timing`` (default: on a GPU) times candidate and reference.
    ``extra_checks``: :class:`LoopholeCheck` objects of your own.

    One worker serves many candidates (starting one re-imports torch and numba: seconds);
    it is restarted after a crash, a hang or a memory hog. Use as a context manager or
    call :meth:`close`.
    """

    def __init__(self, seeds: int = 5, seed: int | None = None, time_limit_s: float = 60.0,
                 memory_limit_mb: int | None = None, timing: bool | None = None,
                 extra_checks=(), startup_timeout_s: float = 180.0, perturb: bool = True):
        if seeds < 5:
            raise ValueError(f"seeds must be at least 5 (KernelBench uses 5 trials), got {seeds}")
        if time_limit_s <= 0:
            raise ValueError(f"time_limit_s must be positive, got {time_limit_s}")
        for check in extra_checks:
            if not isinstance(check, LoopholeCheck):
                raise TypeError(f"extra checks must be LoopholeCheck objects, got {type(check).__name__}")
        self.seeds, self.seed = seeds, seed
        if memory_limit_mb is None:  # a CUDA context and the compiler libraries need room
            memory_limit_mb = runtime.pick(sim=2048, gpu=8192)
        self.time_limit_s, self.memory_limit_mb = time_limit_s, memory_limit_mb
        self.timing = runtime.ON_GPU if timing is None else timing
        self.extra_checks = list(extra_checks)
        self.startup_timeout_s = startup_timeout_s
        self.perturb = perturb
        self.workdir = tempfile.mkdtemp(prefix="gpulab-verifier-")
        self._worker: _Worker | None = None
        self._count = 0
        self.restarts = 0
        self._peaks = None

    # -- lifecycle
    def _ensure_worker(self) -> _Worker:
        if self._worker is None or not self._worker.alive():
            if self._worker is not None:
                self._worker.kill()
                self.restarts += 1
            self._worker = _Worker(self.workdir, self.memory_limit_mb, self.startup_timeout_s)
        return self._worker

    def close(self) -> None:
        if self._worker is not None:
            self._worker.kill()
            self._worker = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- cases
    def _cases(self, task: Task):
        base = self.seed if self.seed is not None else secrets.randbelow(2**31)
        shapes = task.shapes
        cases = []
        for i in range(self.seeds):
            shape = tuple(shapes[i % len(shapes)])
            inputs = task.inputs(shape, base + i)
            cases.append({"kind": "seed", "shape": shape, "seed": base + i, "inputs": inputs, "runs": 2})
        if self.perturb:
            first = cases[0]
            for k, name in enumerate(task.input_names):
                changed = list(first["inputs"])
                changed[k] = task.inputs(first["shape"], base + 7919 + k)[k]
                cases.append({"kind": "perturb", "input": name, "shape": first["shape"],
                              "inputs": tuple(changed), "runs": 1})
        for check in self.extra_checks:
            gen = torch.Generator().manual_seed(base + 104729)
            for inputs in check.extra_inputs(task, tuple(shapes[0]), gen):
                cases.append({"kind": "extra", "check": check.name, "shape": tuple(shapes[0]),
                              "inputs": tuple(inputs), "runs": 1})
        with torch.no_grad():
            for case in cases:
                case["expected"] = task.reference(*(x.clone() for x in case["inputs"]))
        return cases

    # -- the main entry
    def verify(self, task, source: str, kind: str = "auto") -> Verdict:
        """Run candidate ``source`` (defining ``solve(*inputs, out)``) on ``task``."""
        task = get_task(task)
        if not isinstance(source, str) or "def solve" not in source:
            raise ValueError("a candidate is Python source text that defines solve(*inputs, out)")
        kind = detect_kind(source) if kind == "auto" else kind
        if kind not in ("numba", "torch"):
            raise ValueError(f"kind must be 'numba', 'torch' or 'auto', got {kind!r}")
        cases = self._cases(task)
        self._count += 1
        inputs_path = os.path.join(self.workdir, f"inputs_{self._count}.pt")
        results_path = os.path.join(self.workdir, f"results_{self._count}.pt")
        torch.save([{"inputs": c["inputs"], "runs": c["runs"], "out_shape": list(c["expected"].shape),
                     "out_dtype": str(c["expected"].dtype).removeprefix("torch.")} for c in cases],
                   inputs_path)
        request = {"op": "verify", "task": task.name, "source": source, "time": self.timing,
                   "module_path": os.path.join(self.workdir, f"cand_{self._count}.py"),
                   "inputs_path": inputs_path, "results_path": results_path}
        try:
            worker = self._ensure_worker()
            reply = worker.request(request, self.time_limit_s)
        except _WorkerDied as died:
            tail = self._worker.log_tail() if self._worker else ""
            if os.path.exists(results_path):   # half written by a worker that was stopped
                os.remove(results_path)
            return Verdict(task.name, kind, died.status, message=died.message, log_tail=tail)
        finally:
            os.remove(inputs_path)
        if reply.get("status") != "ran":
            return Verdict(task.name, kind, reply.get("status", "error"), message=reply.get("error", ""))
        results = [_unpack_record(r) for r in torch.load(results_path, weights_only=True)]
        os.remove(results_path)
        return self._judge(task, kind, cases, results, reply)

    # -- judging
    def _judge(self, task: Task, kind: str, cases, results, reply) -> Verdict:
        rtol, atol = task.tolerance
        flags: dict[str, str] = {}
        problems: list[str] = []
        seed_cases = [(c, r) for c, r in zip(cases, results) if c["kind"] == "seed"]
        n_failed, max_err = 0, 0.0
        case_ok = []
        for c, r in seed_cases:
            if r["error"]:
                ok, before_ok, after_ok = False, False, False
                problems.append(f"shape {c['shape']}, seed {c['seed']}: raised {r['error']}")
            else:
                checks = [compare(o, c["expected"], rtol, atol) for o in r["outs"]]
                before_ok, after_ok = checks[0][0] is None, checks[-1][0] is None
                ok = before_ok and after_ok
                for msg, err, _ in checks:
                    if msg:
                        problems.append(f"shape {c['shape']}, seed {c['seed']}: {msg}")
                    else:
                        max_err = max(max_err, err)
                if not before_ok and after_ok:
                    flags["stale_memory"] = (f"wrong when run before the reference, right after it "
                                             f"(shape {c['shape']}, seed {c['seed']})")
                if not _inputs_unchanged(c["inputs"], r["inputs_after"]):
                    flags["modifies_input"] = f"an input changed (shape {c['shape']}, seed {c['seed']})"
            case_ok.append(ok)
            n_failed += not ok

        # a wrong answer equal to an earlier case's answer: a cache keyed on shape or pointer
        for j, ((c, r), ok) in enumerate(zip(seed_cases, case_ok)):
            if ok or r["error"]:
                continue
            for c0, _ in seed_cases[:j]:
                if c0["shape"] == c["shape"] and any(_close(o, c0["expected"], rtol, atol) for o in r["outs"]):
                    flags["cached_result"] = (f"for seed {c['seed']} it returned the answer of seed "
                                              f"{c0['seed']} (same shape {c['shape']})")
                    break

        # right on the default shape, wrong on every case of another: a hard-coded shape
        shapes = list(dict.fromkeys(c["shape"] for c, _ in seed_cases))
        by_shape = {s: [ok for (c, _), ok in zip(seed_cases, case_ok) if c["shape"] == s] for s in shapes}
        if len(shapes) > 1 and all(by_shape[shapes[0]]):
            broken = [s for s in shapes[1:] if not any(by_shape[s])]
            if broken:
                flags["shape_dependent"] = (f"right on shape {shapes[0]}, wrong on "
                                            + ", ".join(str(s) for s in broken))

        # perturb one input at a time: where the reference moves, the candidate must move
        base_case, base_result = seed_cases[0]
        ignored = []
        for c, r in zip(cases, results):
            if c["kind"] != "perturb" or r["error"] or base_result["error"]:
                continue
            if _close(c["expected"], base_case["expected"], rtol, atol):
                continue  # the task's output does not depend on this input here (see audit_task)
            if _same(r["outs"][0], base_result["outs"][0]):
                ignored.append(c["input"])
        if ignored:
            flags["ignores_input"] = "output unchanged when " + ", ".join(ignored) + " changed"

        if reply.get("reference_called"):
            flags["calls_reference"] = reply["reference_called"]
        ops = set(reply.get("torch_ops", ()))
        if kind == "numba":
            computing = sorted(ops - ALLOWED_FOR_KERNELS)
            if computing:
                flags["calls_torch_op"] = "computed with torch: " + ", ".join(computing)
            elif reply.get("launches", 0) == 0 and not any(r["error"] for _, r in seed_cases):
                flags["no_kernel"] = "no @gpulab.kernel launch while solving"
        else:
            library = sorted(ops & set(task.library_ops))
            if library:
                flags["calls_torch_op"] = "called the task's own op: " + ", ".join(library)
        if reply.get("streams", 0) or any(r.get("side_stream") for r in results):
            flags["side_stream"] = (f"created {reply.get('streams', 0)} stream(s); results must be "
                                    "complete when the current stream is")
        if reply.get("snooped"):
            flags["inspects_memory"] = "called gc.get_objects/get_referrers while solving"

        for check in self.extra_checks:
            extra = [{"inputs": c["inputs"], "expected": c["expected"],
                      "output": r["outs"][0] if r["outs"] else None,
                      "problem": r["error"] or (compare(r["outs"][0], c["expected"], rtol, atol)[0])}
                     for c, r in zip(cases, results) if c["kind"] == "extra" and c["check"] == check.name]
            problem = check.judge(get_task(task), extra)
            if problem:
                flags[check.name] = problem

        verdict = Verdict(task.name, kind, "fail", flags, cases=len(seed_cases), failed_cases=n_failed,
                          max_abs_error=max_err if n_failed < len(seed_cases) else None)
        if reply.get("timing"):
            self._add_timing(task, verdict, reply["timing"])
        elif reply.get("timing_error"):
            problems.append("timing failed: " + reply["timing_error"])
        if all(r["error"] for _, r in seed_cases) and not verdict.flags:
            verdict.status = "error"
        elif n_failed == 0 and not verdict.flags:
            verdict.status = "pass"
        verdict.message = problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "") \
            if problems else ""
        return verdict

    def _add_timing(self, task: Task, verdict: Verdict, timing: dict) -> None:
        from ..peaks import machine_peaks

        verdict.timing = timing
        cand, ref = timing["candidate"]["median_ms"], timing["reference"]["median_ms"]
        verdict.speedup = ref / cand if cand > 0 else float("inf")
        shape = tuple(timing["shape"])
        if self._peaks is None:
            self._peaks = machine_peaks()
        peaks = self._peaks
        nbytes, flops = task.bytes_moved(shape), task.flops(shape)
        verdict.feedback = {
            "time_ms": cand, "achieved_gbps": nbytes / (cand * 1e-3) / 1e9 if cand > 0 else float("inf"),
            "achieved_gflops": flops / (cand * 1e-3) / 1e9 if cand > 0 else float("inf"),
            "peak_gbps": peaks.copy_gbps, "peak_gflops": peaks.fp32_gflops, "clock": peaks.clock}
        ok, why = plausible(cand, nbytes, flops, peaks.copy_gbps, peaks.fp32_gflops)
        bound = why.split("floor of ")[1].split(" ms")[0]
        verdict.feedback["roofline_floor_ms"] = float(bound)
        verdict.feedback["roofline_fraction"] = float(bound) / cand if cand > 0 else float("inf")
        if not ok and runtime.ON_GPU:  # CPU wall times of simulated kernels bound nothing
            verdict.flags["implausible_speedup"] = why
        if timing.get("problems"):
            verdict.flags["wrong_when_timed"] = "; ".join(timing["problems"])


def _unpacked(p) -> torch.Tensor:
    dtype = getattr(torch, p["dtype"])
    flat = torch.frombuffer(bytearray(p["bytes"]), dtype=dtype) if p["bytes"] else torch.empty(0, dtype=dtype)
    return flat.reshape(p["shape"])


def _unpack_record(r: dict) -> dict:
    r["outs"] = [_unpacked(o) for o in r["outs"]]
    if r["inputs_after"] is not None:
        r["inputs_after"] = tuple(_unpacked(x) for x in r["inputs_after"])
    return r


def _inputs_unchanged(before, after) -> bool:
    if after is None:
        return True
    return all(_same(a, b) for a, b in zip(before, after))


# ------------------------------------------------------------ naive check, audit

def _load_in_process(source: str):
    path = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False)
    with path:
        path.write(source)
    try:
        spec = importlib.util.spec_from_file_location("naive_candidate", path.name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        os.remove(path.name)
    return module.solve


def naive_check(task, source: str) -> tuple[bool, str]:
    """The check many harnesses do, for contrast: **in this process**, one shape, one seed,
    weights as a freshly built layer has them, the reference first, an output from
    ``torch.empty``, ``allclose`` at the end. Only for trusted demonstration candidates:
    it runs the code here, without any of the verifier's protections.
    """
    task = get_task(task)
    shape = tuple(task.shapes[0])
    inputs = list(task.inputs(shape, 0))
    for k, name in enumerate(task.input_names):
        init = task.naive_init.get(name)
        if init:
            inputs[k] = torch.ones_like(inputs[k]) if init == "ones" else torch.zeros_like(inputs[k])
    inputs = [x.to(runtime.device) for x in inputs]
    solve = _load_in_process(source)
    expected = task.reference(*inputs)
    out = torch.empty_like(expected)
    solve(*inputs, out=out)
    runtime.synchronize()
    rtol, atol = task.tolerance
    ok = bool(torch.allclose(out.cpu(), expected.cpu(), rtol=rtol, atol=atol))
    return ok, ("naive check passed" if ok else "naive check failed") + f" (shape {shape}, seed 0)"


def audit_task(task, seeds: int = 3) -> list[str]:
    """robust-kbench's task filter: problems that make a task unable to tell right from wrong.

    Returns a list of problems (empty: the task is sound): an output that is constant over
    seeds, or that does not depend on one of the inputs (then a candidate that ignores that
    input is right, and the reference's extra work is free speedup for a cheat).
    """
    task = get_task(task)
    problems = []
    rtol, atol = task.tolerance
    shape = tuple(task.shapes[0])
    with torch.no_grad():
        outs = [task.reference(*task.inputs(shape, s)) for s in range(seeds)]
        if all(torch.allclose(o, outs[0], rtol=rtol, atol=atol) for o in outs[1:]):
            problems.append(f"the output is the same for every seed at shape {shape}")
        base = task.inputs(shape, 0)
        for k, name in enumerate(task.input_names):
            changed = list(base)
            changed[k] = task.inputs(shape, 1000 + k)[k]
            if torch.allclose(task.reference(*changed), outs[0], rtol=rtol, atol=atol):
                problems.append(f"the output does not depend on input {name!r}")
    return problems
