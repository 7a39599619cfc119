"""A verifier for untrusted kernel candidates that is hard to fool.

Agents (CudaForge, CUDA-L1, robust-kbench) are only as good as the verifier that scores
them: a reward for "passes and is fast" is also a reward for fooling the check, and RL or
evolutionary search finds such tricks (robust-kbench, arXiv 2509.14279, and the
KernelBench authors list many). :class:`Verifier` runs each candidate

* through a **static checker** first (:mod:`.static_check`: allow-listed imports and
  names, no stack or frame access, no patching, no tensor subclasses);
* in a **separate process** (:mod:`gpulab.kernelagent.worker`) with a wall-time limit and a
  memory limit, so a crash, a hang or a memory hog costs the candidate, never the caller;
  that process **cannot read the parent** and **nothing it starts outlives the verdict**
  (:mod:`.isolation`: its own uid or a non-dumpable parent; a PID namespace or a
  subreaper; the parent lists and kills the tree itself);
* on **>= 5 seeds over several shapes** (a hard-coded shape is wrong on the others);
* **before and after the reference** in the same process, on **fresh input copies**
  each run, into an output **poisoned with NaN** (an unwritten element is caught; an answer
  read from the reference's leftover memory is right only after the reference);
* with the **expected outputs kept in the parent** (the child never holds the answer) and
  every output **compared in the parent**; replies come over a **private pipe** and must
  answer exactly what was asked (a nonce, no more keys or records than requested);
* timed (on a GPU) on **fresh inputs for every timed run**, each output checked here, the
  reference timed **here** the same way, this process's clock against the CUDA events,
  and the roofline bound from peaks **measured here** (:func:`gpulab.peaks.trusted_peaks`).

and flags the known loopholes (see :data:`FLAGS`). Each verdict says what it found. A
flag can come from the child's own record (torch calls, launches, audit events); such a
record can only make a verdict worse, and the static checker refuses the means to edit
it: a *pass* rests on what the parent checked itself.
"""
from __future__ import annotations

import math
import mmap
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import atexit
import importlib.util
import json
from dataclasses import asdict, dataclass, field

import torch

from .. import runtime, sandbox
from ..harness import compare as _harness_compare
from . import isolation
from .isolation import Isolation
from .static_check import check_source
from .tasks import Task, get_task
from .timing import plausible, summarize, timed_runs
from . import worker as _worker_module
from .worker import ALLOWED_ATEN_FOR_KERNELS, ALLOWED_FOR_KERNELS, FAIL_ATTEMPTS_ENV

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
    "wrong_when_timed": "wrong in a timed run (each on fresh inputs, each checked): right only when checked",
    # the layers added against candidates written to attack the verifier itself
    "static_check": "the source breaks a rule of the static checker (refused before it ran)",
    "inspects_worker": "walked up the stack (sys._getframe) into the worker's own objects",
    "patches_objects": "patched a class or swapped an object's class while running",
    "tampered_output": "an output or input was no longer a plain torch.Tensor after solve",
    "starts_processes": "started another process",
    "left_processes": "a process it started was still running after its runs (all were killed)",
    "reads_parent": "opened another process's /proc files (the parent's memory)",
    "writes_files": "opened a file for writing",
    "raw_memory": "reached memory through ctypes",
    "forged_reply": "a reply the worker did not write (wrong nonce, more than asked, or a second one)",
    "timing_mismatch": "the CUDA events and this process's own clock disagree",
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
    def __init__(self, status: str, message: str, flag: str | None = None):
        super().__init__(message)
        self.status, self.message, self.flag = status, message, flag


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, IndexError, ValueError):
        return 0.0


#: the keys each reply may carry: a reply with more is not the worker's
_REPLY_KEYS = {
    "load": {"status", "error", "nonce"},
    "run": {"status", "errors", "side_streams", "tampered", "record", "error", "nonce", "solve_s"},
    "time": {"status", "error", "times_ms", "clock", "tampered", "record", "nonce", "solve_s"},
    "end": {"status", "nonce", "error"},
}
_RECORD_KEYS = {"torch_ops", "aten_ops", "launches", "empty_launches", "blind_launches", "streams",
                "reference_called", "events"}


#: flags after which the worker is not reused: the candidate may have changed it from inside
_TAINTING = frozenset({"inspects_worker", "patches_objects", "raw_memory", "starts_processes",
                       "left_processes", "tampered_output"})


class _Zygote:
    """The verifier's one started process (``python -m gpulab.kernelagent.worker``): it
    loads torch, numba and gpulab once and forks each worker on request (see
    :func:`gpulab.kernelagent.worker._zygote`); it never runs a candidate."""

    def __init__(self, workdir: str, startup_timeout_s: float):
        import socket

        self.workdir = workdir
        self.log_path = os.path.join(workdir, "zygote.log")
        self.log = open(self.log_path, "ab")
        self.sock, child = socket.socketpair()
        env = dict(os.environ, GPULAB_QUIET="1", GPULAB_MODE=runtime.MODE, PYTHONFAULTHANDLER="1",
                   PYTORCH_NVML_BASED_CUDA_CHECK="1",   # no CUDA context before the fork
                   **{_worker_module.ZYGOTE_FD_ENV: str(child.fileno())})
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", _worker_module.__name__],
                                         stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                         cwd=workdir, env=env, pass_fds=(child.fileno(),),
                                         start_new_session=True)
        finally:
            child.close()
        self.sock.settimeout(startup_timeout_s)
        self._buffer = b""
        try:
            hello = self._line()
        except (OSError, ValueError) as exc:
            self.close()
            raise RuntimeError(f"the verifier's zygote did not start ({exc}):\n{self.log_tail()}") from None
        if not hello.get("zygote"):
            raise RuntimeError(f"the verifier's zygote said {hello}")

    def _line(self) -> dict:
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ValueError("the zygote closed its socket")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 1500) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-chars:].decode("utf-8", "replace")
        except OSError:
            return ""

    def fork_worker(self, fds: list[int], request: dict, timeout_s: float) -> int:
        """A new worker tree, given these descriptors; returns its keeper's pid."""
        import socket

        self.sock.settimeout(timeout_s)
        socket.send_fds(self.sock, [json.dumps(request).encode()], fds)
        answer = self._line()
        if "keeper" not in answer:
            raise RuntimeError(f"the verifier's zygote could not fork a worker: {answer.get('error', answer)}")
        return int(answer["keeper"])

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
        if self.proc.poll() is None:
            isolation.kill_tree(self.proc.pid)
        self.proc.wait()
        self.log.close()


_ZYGOTES: list[_Zygote] = []


def _shared_zygote(startup_timeout_s: float) -> _Zygote:
    """One zygote per process, shared by every Verifier (started on first use)."""
    if _ZYGOTES and not _ZYGOTES[0].alive():
        _ZYGOTES.pop().close()
    if not _ZYGOTES:
        home = tempfile.mkdtemp(prefix="gpulab-zygote-")
        os.chmod(home, 0o711)
        _ZYGOTES.append(_Zygote(home, startup_timeout_s))
        atexit.register(_close_zygotes)
    return _ZYGOTES[0]


def _close_zygotes() -> None:
    while _ZYGOTES:
        zygote = _ZYGOTES.pop()
        zygote.close()
        shutil.rmtree(zygote.workdir, ignore_errors=True)


#: how a worker is started, strongest first; the first that starts here is kept for the
#: process. A fork of the zygote in a PID namespace is the fastest and the most isolated;
#: where the GPU's driver cannot start in a PID namespace, or in a fork of the zygote (a
#: driver initialised before the fork, an OS call refused), the next one is tried
START_ATTEMPTS = (
    {"attempt": "fork-pid", "namespaces": True, "exec": False},
    {"attempt": "fork-subreaper", "namespaces": False, "exec": False},
    {"attempt": "exec-subreaper", "namespaces": False, "exec": True},
    # the last resort: the worker keeps the parent's uid; the parent is then non-dumpable
    {"attempt": "exec-subreaper-same-uid", "namespaces": False, "exec": True, "drop": False},
)
_START_FROM = [0]          # index of the first attempt still worth trying in this process
START_FAILURES: list[str] = []   # why the attempts before it failed (for the record)


class _Worker:
    """One worker tree (keeper, worker), its private pipes and its shared area."""

    def __init__(self, zygote: _Zygote, workdir: str, memory_limit_mb: int, startup_timeout_s: float,
                 iso: Isolation, attempt: dict | None = None):
        self.workdir = workdir
        self.memory_limit_mb = memory_limit_mb
        self.zygote = zygote
        self.log_path = os.path.join(workdir, "worker.log")
        home = os.path.join(workdir, "home")
        os.makedirs(home, exist_ok=True)
        if iso.uid is not None:
            os.chown(home, iso.uid, iso.uid)
        stdin_r, stdin_w = os.pipe()
        self._reply, reply_w = os.pipe()
        self._events, events_w = os.pipe()
        os.set_blocking(self._events, False)
        self.events: dict[str, str] = {}
        self.area_fd = os.memfd_create("gpulab-verifier-area")
        self.area_size = 0
        self.area = None
        self.log = open(self.log_path, "ab")
        self.stdin = os.fdopen(stdin_w, "wb")
        self._buffer = b""
        self.pid = None
        self.keeper = None
        self.namespace_id = None
        self.exit_code = None
        self.attempt = dict(attempt or START_ATTEMPTS[0])
        started = time.monotonic()
        try:
            self.keeper = zygote.fork_worker([stdin_r, reply_w, events_w, self.area_fd, self.log.fileno()],
                                             {"uid": iso.uid, "memory_mb": memory_limit_mb, "home": home, "cwd": workdir,
                                              # grading guard as it is now, not as at the zygote's start
                                              "blocked": os.environ.get(sandbox.BLOCKED_ENV),
                                              # tests: attempts to fail as CUDA's error 304 would
                                              "fail_attempts": os.environ.get(FAIL_ATTEMPTS_ENV),
                                              **self.attempt},
                                             startup_timeout_s)
        finally:
            for fd in (stdin_r, reply_w, events_w):   # the worker holds the only other ends
                os.close(fd)
        try:
            ready = self._read(max(startup_timeout_s - (time.monotonic() - started), 1.0))
        except _WorkerDied as died:
            raise RuntimeError(f"verifier worker did not start: {died.message}\n{self.log_tail()}") from None
        if not ready.get("ready"):
            raise RuntimeError(f"verifier worker did not start: {ready}")
        below = isolation.descendants(self.keeper)
        self.pid = below[0] if below else self.keeper
        self.namespace = ready.get("namespace", "?")
        self.uid = ready.get("uid")
        self.namespace_id = isolation.namespace_of(self.pid) if "pid" in self.namespace else None
        self.baseline_rss_mb = _rss_mb(self.pid)

    @staticmethod
    def _running(pid: int | None) -> bool:
        if pid is None:
            return False
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
        except (OSError, IndexError):
            return False

    def alive(self) -> bool:
        return self._running(self.keeper) and (self.pid is None or self._running(self.pid))

    def log_tail(self, chars: int = 1500) -> str:
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()
            return data[-chars:].decode("utf-8", "replace")
        except OSError:
            return ""

    def others(self) -> list[int]:
        """Processes of the worker's tree other than keeper and worker (read from /proc
        here, by the parent): in its PID namespace, or re-parented to its keeper."""
        if self.keeper is None:
            return []
        found = set(isolation.descendants(self.keeper))
        if self.namespace_id:
            found |= set(isolation.processes_in_namespace(self.namespace_id))
        return sorted(found - {self.pid, self.keeper})

    def kill(self) -> None:
        """End every process of the tree (the pipes stay open: events can still be read).
        The keeper goes last, so that it reaps the others (a zombie left to an init that
        does not reap would stay)."""
        if self._running(self.keeper) or self.others():
            isolation.kill_tree(self.keeper, include_root=False)
            deadline = time.monotonic() + 5
            while self._running(self.keeper) and time.monotonic() < deadline:
                time.sleep(0.005)             # the keeper exits once its worker is reaped
            if self._running(self.keeper):
                isolation.kill_tree(self.keeper)

    def close(self) -> None:
        """:meth:`kill`, then close the pipes, the area and the log."""
        self.kill()
        try:
            self.stdin.close()
        except OSError:
            pass
        for fd in (self._reply, self._events, self.area_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self._reply = self._events = self.area_fd = -1
        if self.area is not None:
            try:
                self.area.close()
            except BufferError:
                pass
            self.area = None
        if not self.log.closed:
            self.log.close()

    def drain_events(self) -> dict[str, str]:
        """The audit findings the worker wrote to the event pipe so far (cumulative)."""
        data = b""
        while True:
            try:
                chunk = os.read(self._events, 1 << 16)
            except (BlockingIOError, OSError):
                break
            if not chunk:
                break
            data += chunk
        for line in data.splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict):
                for k, v in item.items():
                    self.events.setdefault(str(k), str(v))
        return self.events

    # -- the shared area
    def ensure_area(self, size: int) -> mmap.mmap:
        if size > self.area_size:
            os.ftruncate(self.area_fd, size)
            self.area_size = size
            if self.area is not None:
                try:
                    self.area.close()
                except BufferError:   # a view of it is still alive somewhere: let it go with it
                    pass
            self.area = mmap.mmap(self.area_fd, size)
        return self.area

    def view(self, slot: dict) -> torch.Tensor:
        dtype = getattr(torch, slot["dtype"])
        count = math.prod(slot["shape"])
        if count == 0:
            return torch.empty(slot["shape"], dtype=dtype)
        return torch.frombuffer(self.area, dtype=dtype, count=count, offset=slot["offset"]).view(slot["shape"])

    # -- requests
    def request(self, obj: dict, timeout_s: float) -> dict:
        nonce = secrets.token_hex(8)
        obj = dict(obj, nonce=nonce)
        try:
            self.stdin.write((json.dumps(obj) + "\n").encode())
            self.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._died() from None
        reply = self._read(timeout_s)
        if not isinstance(reply, dict) or reply.get("nonce") != nonce:
            raise _WorkerDied("fail", "a reply that does not answer the parent's request (wrong nonce): "
                              "written by the candidate", "forged_reply")
        extra = set(reply) - _REPLY_KEYS[obj["op"]]
        if extra or (isinstance(reply.get("record"), dict) and set(reply["record"]) - _RECORD_KEYS):
            raise _WorkerDied("fail", f"the reply to {obj['op']!r} claims more than was asked "
                              f"({sorted(extra) or 'record keys'}): not the worker's", "forged_reply")
        if self._buffer:
            raise _WorkerDied("fail", "more than one reply to one request: written by the candidate",
                              "forged_reply")
        return reply

    def _died(self) -> _WorkerDied:
        """The worker is gone: its keeper reports how it ended on the reply pipe."""
        deadline = time.monotonic() + 5
        code = None
        while code is None and time.monotonic() < deadline:
            for line in self._buffer.split(b"\n"):
                try:
                    code = json.loads(line).get("exited")
                except (ValueError, AttributeError):
                    continue
                if code is not None:
                    break
            if code is None:
                ready = selectors.DefaultSelector()
                ready.register(self._reply, selectors.EVENT_READ)
                if ready.select(0.05):
                    chunk = os.read(self._reply, 1 << 16)
                    if not chunk and not self._running(self.keeper):
                        break
                    self._buffer += chunk
                ready.close()
        self.kill()
        if code is None:
            return _WorkerDied("crashed", "the candidate's process ended (no exit status)")
        self.exit_code = code
        if code < 0 or code > 128:
            signum = -code if code < 0 else code - 128
            name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else str(signum)
            how = f"killed by signal {name}"
            if signum == signal.SIGKILL:
                return _WorkerDied("crashed", how + " (out of memory, or killed)")
        else:
            how = f"exited with code {code}"
        return _WorkerDied("crashed", f"the candidate's process {how}")

    def _read(self, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        sel = selectors.DefaultSelector()
        sel.register(self._reply, selectors.EVENT_READ)
        try:
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.kill()
                    raise _WorkerDied("timeout", f"no answer within {timeout_s:g} s: stopped")
                if sel.select(min(left, 0.1)):
                    chunk = os.read(self._reply, 1 << 16)
                    if not chunk:
                        raise self._died()
                    self._buffer += chunk
                elif not self.alive():
                    raise self._died()
                elif (self.memory_limit_mb > 0 and self.pid is not None
                      and _rss_mb(self.pid) > self.baseline_rss_mb + self.memory_limit_mb):
                    self.kill()
                    raise _WorkerDied("out_of_memory", f"resident memory above the limit of "
                                      f"{self.memory_limit_mb} MB over the worker's start: stopped")
        finally:
            sel.close()
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            reply = json.loads(line)
        except ValueError:
            raise _WorkerDied("fail", "a reply that is not the worker's JSON: written by the candidate",
                              "forged_reply") from None
        if isinstance(reply, dict) and set(reply) == {"exited"}:   # the keeper: the worker has ended
            self._buffer = line + b"\n" + self._buffer
            raise self._died()
        return reply


class _Layout:
    """Where each tensor of one request sits in the shared area (decided by the parent)."""

    def __init__(self):
        self.size = 0

    def slot(self, shape, dtype) -> dict:
        dtype = str(dtype).removeprefix("torch.")
        nbytes = math.prod(shape) * getattr(torch, dtype).itemsize
        slot = {"offset": self.size, "shape": list(shape), "dtype": dtype}
        self.size += -(-nbytes // 64) * 64          # 64-byte aligned, like an allocation
        return slot


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
    """Runs candidates in an isolated child process and judges them (see the module docstring).

    ``seeds``: how many random cases (at least 5), spread over the task's shapes.
    ``seed``: the first seed (``None``: a fresh random one, so a candidate cannot learn the
    test inputs). ``time_limit_s`` covers one candidate; ``memory_limit_mb`` (default 2 GB
    under the simulator, 8 GB on a GPU) is on top of the worker's own memory. ``timing``
    (default: on a GPU) times candidate and reference. ``extra_checks``:
    :class:`LoopholeCheck` objects of your own. ``static_check`` (default on) refuses
    source that breaks :mod:`.static_check`'s rules before it runs; off, only the
    runtime layers judge (the tests use that to show each layer holds on its own).

    One worker serves many candidates (starting one re-imports torch and numba: seconds);
    it is restarted after a crash, a hang, a memory hog or a process left behind. Use as a
    context manager or call :meth:`close`.
    """

    def __init__(self, seeds: int = 5, seed: int | None = None, time_limit_s: float = 60.0,
                 memory_limit_mb: int | None = None, timing: bool | None = None,
                 extra_checks=(), startup_timeout_s: float = 180.0, perturb: bool = True,
                 static_check: bool = True):
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
        self.static_check = static_check
        self.isolation = isolation.detect()
        if self.isolation.uid is None:
            isolation.make_undumpable()   # same user as the worker: refuse it /proc/<us>/mem
        self.workdir = tempfile.mkdtemp(prefix="gpulab-verifier-")
        os.chmod(self.workdir, 0o711)     # the worker may enter (candidate files), not list
        self._worker: _Worker | None = None
        self._count = 0
        self.restarts = 0
        self._peaks = None
        self._reference_timings: dict = {}
        self.last_overhead: dict = {}

    # -- lifecycle
    def _ensure_worker(self) -> _Worker:
        if self._worker is None or not self._worker.alive():
            if self._worker is not None:
                self._worker.close()
                self.restarts += 1
            self._worker = self._start_worker()
        return self._worker

    def _start_worker(self) -> "_Worker":
        """The strongest start that works here (remembered for the process: see START_ATTEMPTS)."""
        last = None
        while _START_FROM[0] < len(START_ATTEMPTS):
            attempt = START_ATTEMPTS[_START_FROM[0]]
            if not attempt.get("drop", True):
                isolation.make_undumpable()   # same user as the worker: refuse it /proc/<us>/mem
            try:
                return _Worker(_shared_zygote(self.startup_timeout_s), self.workdir, self.memory_limit_mb,
                               self.startup_timeout_s, self.isolation, attempt)
            except RuntimeError as exc:
                last = exc
                START_FAILURES.append(f"{attempt['attempt']}: {str(exc)[-600:]}")
                _START_FROM[0] += 1
        raise RuntimeError(f"no way to start a verifier worker worked here; the last: {last}")

    @property
    def isolation_description(self) -> str:
        """How the current worker is kept apart (starts one if none is running)."""
        worker = self._ensure_worker()
        uid = (f"uid {worker.uid}" if self.isolation.uid is not None and worker.attempt.get("drop", True)
               else "the same uid (parent non-dumpable)")
        how = "forked from the zygote" if not worker.attempt.get("exec") else "a fresh interpreter"
        return f"worker as {uid}, in {worker.namespace}" + (
            " namespace" if "pid" in worker.namespace else " mode (a subreaper keeper)") + f", {how}"

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
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
        started = time.perf_counter()
        if self.static_check:
            findings = check_source(source, kind)
            if findings:
                detail = "; ".join(str(f) for f in findings[:3])
                more = f" (and {len(findings) - 3} more)" if len(findings) > 3 else ""
                return Verdict(task.name, kind, "fail", {"static_check": detail + more},
                               message="the static checker refused it before it ran: " + detail + more)
        cases = self._cases(task)
        self._count += 1
        path = os.path.join(self.workdir, f"cand_{self._count}.py")
        with open(path, "w") as f:      # written here, read-only to the worker
            f.write(source)
        os.chmod(path, 0o444)
        deadline = time.monotonic() + self.time_limit_s
        left = lambda: max(deadline - time.monotonic(), 0.001)  # noqa: E731
        flags: dict[str, str] = {}
        worker = None
        solve_s = 0.0
        try:
            worker = self._ensure_worker()
            deadline = time.monotonic() + self.time_limit_s   # a worker's start does not count
            worker.events = {}
            reply = worker.request({"op": "load", "task": task.name, "path": path}, left())
            if reply.get("status") != "loaded":
                worker.request({"op": "end"}, left())
                return Verdict(task.name, kind, reply.get("status", "error"), message=str(reply.get("error", "")))
            results, reply = self._run_cases(worker, task, cases, left)
            solve_s = _seconds(reply.get("solve_s"))
            timing = None
            if self.timing and not any(r["error"] for r in results):
                timing = self._time(worker, task, left)
                solve_s = max(solve_s, _seconds(timing.get("solve_s")))   # cumulative over the turn
            try:
                ended = worker.request({"op": "end"}, left())
            except _WorkerDied as died:
                if died.status != "crashed":
                    raise
                # it answered, then it was gone: a worker does not exit after a reply
                raise _WorkerDied("fail", "the worker's process ended right after its reply: a reply "
                                  "written by the candidate, which then exited", "forged_reply") from None
            if ended.get("status") != "ended":
                raise _WorkerDied("fail", "the worker did not end the candidate's turn", "forged_reply")
        except _WorkerDied as died:
            dead = self._worker
            tail = dead.log_tail() if dead else ""
            events = dead.drain_events() if dead else {}
            verdict = Verdict(task.name, kind, died.status, message=died.message, log_tail=tail)
            if died.flag:
                verdict.flags[died.flag] = died.message
            for name, detail in events.items():
                if name in FLAGS:
                    verdict.flags.setdefault(name, detail)
            if dead is not None:
                dead.close()
                self._worker = None
                self.restarts += 1
            return verdict
        finally:
            os.remove(path)
        for name, detail in worker.drain_events().items():
            if name in FLAGS:
                flags.setdefault(name, detail)   # streamed as they happened: the candidate could not unsay them
        left_behind = worker.others()
        if left_behind:   # the parent counts them itself, then ends the whole tree
            flags["left_processes"] = (f"{len(left_behind)} process(es) the candidate started were still "
                                       "running after its runs: all were killed with the worker")
        if left_behind or set(flags) & _TAINTING:
            # a worker the candidate may have changed from inside serves no other candidate
            worker.close()
            self._worker = None
            self.restarts += 1
        verdict = self._judge(task, kind, cases, results, reply, flags, timing)
        total = time.perf_counter() - started
        self.last_overhead = {"total_s": total, "candidate_s": solve_s, "overhead_s": total - solve_s}
        return verdict

    def _run_cases(self, worker: _Worker, task: Task, cases, left):
        """The checked runs: inputs into the area, outputs back from it, compared here."""
        layout = _Layout()
        plan = []
        for c in cases:
            ins = [layout.slot(x.shape, x.dtype) for x in c["inputs"]]
            outs = [layout.slot(c["expected"].shape, c["expected"].dtype) for _ in range(c["runs"])]
            after = [layout.slot(x.shape, x.dtype) for x in c["inputs"]]
            plan.append({"inputs": ins, "outs": outs, "after": after})
        worker.ensure_area(layout.size)
        for c, p in zip(cases, plan):
            for x, slot in zip(c["inputs"], p["inputs"]):
                worker.view(slot).copy_(x)
            for slot in p["outs"] + p["after"]:
                view = worker.view(slot)
                if view.is_floating_point():
                    view.fill_(float("nan"))   # a run that never wrote back is NaN, not zeros
        reply = worker.request({"op": "run", "area_size": layout.size, "cases": plan}, left())
        if reply.get("status") != "ran":
            raise _WorkerDied(reply.get("status", "error"), str(reply.get("error", "")))
        for key in ("errors", "side_streams", "tampered"):
            if not isinstance(reply.get(key), list) or len(reply[key]) != len(cases):
                raise _WorkerDied("fail", f"the reply's {key!r} does not match the {len(cases)} cases asked "
                                  "for: not the worker's", "forged_reply")
        results = []
        for c, p, error, side, swapped in zip(cases, plan, reply["errors"], reply["side_streams"], reply["tampered"]):
            if swapped and not error:   # its values were never read: they would be computed on reading
                error = "the output was no longer a plain torch.Tensor after solve (not read)"
            outs = [] if error else [worker.view(slot).clone() for slot in p["outs"]]
            after = None if error else tuple(worker.view(slot).clone() for slot in p["after"])
            results.append({"outs": outs, "inputs_after": after, "error": error,
                            "side_stream": bool(side), "tampered": bool(swapped)})
        return results, reply

    def _time(self, worker: _Worker, task: Task, left) -> dict:
        """Timed runs of the candidate in the worker, each on fresh inputs and checked here;
        the reference timed here the same way; the host clock of this process against the
        worker's CUDA events."""
        shape = tuple(task.timing_shape if runtime.ON_GPU else task.shapes[0])
        runs = runtime.pick(sim=3, gpu=10)
        seed = secrets.randbelow(2**31)
        rtol, atol = task.tolerance
        with torch.no_grad():
            probe = task.reference(*task.device_inputs(shape, seed, runtime.device))
        layout = _Layout()
        slots = [layout.slot(probe.shape, probe.dtype) for _ in range(runs)]
        worker.ensure_area(layout.size)
        for slot in slots:
            worker.view(slot).fill_(float("nan"))
        t0 = time.perf_counter()
        reply = worker.request({"op": "time", "area_size": layout.size, "shape": list(shape), "seed": seed,
                                "outs": slots, "warmup": 2}, left())
        wall_s = time.perf_counter() - t0
        problems = []
        if reply.get("error"):
            problems.append(f"raised {reply['error']} in a timed run at shape {shape}")
            return {"shape": list(shape), "problems": problems, "record": reply.get("record") or {}}
        times = reply.get("times_ms")
        if not isinstance(times, list) or len(times) != runs or not all(isinstance(t, (int, float)) for t in times):
            raise _WorkerDied("fail", "the timing reply does not match the runs asked for: not the worker's",
                              "forged_reply")
        if reply.get("tampered"):
            problems.append(f"the output of timed run(s) {reply['tampered']} was no longer a plain tensor")
        with torch.no_grad():
            for i, slot in enumerate(slots):
                expected = task.reference(*task.device_inputs(shape, seed + i, runtime.device))
                got = worker.view(slot).to(runtime.device)
                # on the device first (harness.compare works on the CPU in float64: about
                # 0.3 s per 16M-element output on the H200's host, 2026-12-01); it only
                # writes the message for an output that is wrong here
                wrong = None if _close_on_device(got, expected, rtol, atol) else compare(got, expected, rtol, atol)[0]
                if wrong:
                    problems.append(f"timed run {i + 1} of {runs} (fresh inputs, shape {shape}) was wrong: {wrong}")
                    break
        ref = self._reference_timing(task, shape, runs)
        cand = summarize("candidate", times, reply.get("clock", ""))
        events_s, ref_gap = sum(times) / 1e3, ref["gap_s"]
        gap = wall_s - events_s
        mismatch = None
        if events_s > 1.05 * wall_s + 1e-3:
            mismatch = (f"the timed runs claim {events_s * 1e3:.4g} ms but only {wall_s * 1e3:.4g} ms passed "
                        "here: the timer was not the worker's")
        # the warm-up calls are in the gap too. Under the simulator the "events" are this
        # host's own clock around each call and a simulated launch's cost swings with the
        # machine's load (0.47 s of gap for an honest kernel's warm-ups in a loaded CI run),
        # so only a GPU's events get the tight slack
        elif gap > 4 * ref_gap + (0.25 if runtime.ON_GPU else 2.0) + 3 * max(times) / 1e3:
            mismatch = (f"{gap:.3g} s of host time outside the timed calls, against {ref_gap:.3g} s for the "
                        "reference timed the same way: work the events did not see")
        return {"shape": list(shape), "candidate": cand.as_dict(), "reference": ref["summary"].as_dict(),
                "problems": problems, "mismatch": mismatch, "wall_s": wall_s,
                "record": reply.get("record") or {}, "solve_s": reply.get("solve_s")}

    def _reference_timing(self, task: Task, shape, runs: int) -> dict:
        """The reference, timed in this process with the same protocol (cached per shape)."""
        key = (task.name, shape)
        if key not in self._reference_timings:
            seed = secrets.randbelow(2**31)
            probe = task.reference(*task.device_inputs(shape, seed, runtime.device))
            host = torch.empty(probe.shape, dtype=probe.dtype)

            def call(xs, out):
                task.reference(*xs)

            def new_out():
                return torch.full(probe.shape, float("nan"), dtype=probe.dtype, device=runtime.device)

            def sink(i, xs, out):
                host.copy_(out)   # the same copy-out the worker makes

            t0 = time.perf_counter()
            with torch.no_grad():
                result = timed_runs(call, lambda i: task.device_inputs(shape, seed + i, runtime.device),
                                    new_out, sink, runs=runs, warmup=2)
            wall = time.perf_counter() - t0
            summary = summarize("torch eager", result["times_ms"], result["clock"])
            self._reference_timings[key] = {"summary": summary, "gap_s": wall - sum(result["times_ms"]) / 1e3}
        return self._reference_timings[key]

    # -- judging
    def _judge(self, task: Task, kind: str, cases, results, reply, flags, timing) -> Verdict:
        rtol, atol = task.tolerance
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

        if any(r["tampered"] for r in results):
            flags["tampered_output"] = "after solve an output or input was no longer a plain torch.Tensor"
        record = _merge_records(reply.get("record") or {}, (timing or {}).get("record") or {})
        if record["reference_called"]:
            flags["calls_reference"] = record["reference_called"]
        ops, aten = set(record["torch_ops"]), set(record["aten_ops"])
        if kind == "numba":
            computing = sorted((ops - ALLOWED_FOR_KERNELS) | {f"aten.{a}" for a in aten - ALLOWED_ATEN_FOR_KERNELS})
            if computing:
                flags["calls_torch_op"] = "computed with torch: " + ", ".join(computing)
            if record["launches"] == 0 and not any(r["error"] for _, r in seed_cases):
                if record["empty_launches"]:
                    why = "launched only with an empty grid (no thread ran)"
                elif record["blind_launches"]:
                    why = "its kernels were never given the output"
                else:
                    why = "no @gpulab.kernel launch while solving"
                flags["no_kernel"] = why
        else:
            library = sorted((ops | aten) & set(task.library_ops))
            if library:
                flags["calls_torch_op"] = "called the task's own op: " + ", ".join(library)
        if record["streams"] or any(r.get("side_stream") for r in results):
            flags["side_stream"] = (f"created {record['streams']} stream(s); results must be "
                                    "complete when the current stream is")
        for name, detail in record["events"].items():
            if name in FLAGS:
                flags.setdefault(name, detail)

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
        if timing:
            self._add_timing(task, verdict, timing)
        if all(r["error"] for _, r in seed_cases) and not verdict.flags:
            verdict.status = "error"
        elif n_failed == 0 and not verdict.flags:
            verdict.status = "pass"
        verdict.message = problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "") \
            if problems else ""
        return verdict

    def _add_timing(self, task: Task, verdict: Verdict, timing: dict) -> None:
        from ..peaks import machine_peaks, trusted_peaks

        if timing.get("problems"):
            verdict.flags["wrong_when_timed"] = "; ".join(timing["problems"])
        if timing.get("mismatch"):
            verdict.flags["timing_mismatch"] = timing["mismatch"]
        if "candidate" not in timing:
            return
        verdict.timing = {k: timing[k] for k in ("shape", "candidate", "reference", "problems")}
        cand, ref = timing["candidate"]["median_ms"], timing["reference"]["median_ms"]
        verdict.speedup = ref / cand if cand > 0 else float("inf")
        shape = tuple(timing["shape"])
        if self._peaks is None:
            # measured here on a GPU, never read from a file the worker could rewrite; the
            # simulator's CPU figures bound nothing, so there the cache will do
            self._peaks = trusted_peaks() if runtime.ON_GPU else machine_peaks()
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


def _close_on_device(out: torch.Tensor, ref: torch.Tensor, rtol: float, atol: float) -> bool:
    """harness.compare's rule (float64, NaN where NaN is expected, equal infinities, no
    unwritten NaN), computed where the tensors are."""
    if out.shape != ref.shape:
        return False
    o, r = out.double(), ref.double()
    same = (o == r) | (torch.isnan(o) & torch.isnan(r))
    near = (o - r).abs() <= atol + rtol * r.abs()       # False wherever o or r is NaN
    near &= ~torch.isinf(r)                             # an infinite tolerance excuses nothing
    return bool((same | near).all())


def _seconds(value) -> float:
    """A duration the worker reported (for the overhead figure only: never for a verdict)."""
    return float(value) if isinstance(value, (int, float)) and value >= 0 else 0.0


def _merge_records(*records) -> dict:
    merged = {"torch_ops": [], "aten_ops": [], "launches": 0, "empty_launches": 0, "blind_launches": 0,
              "streams": 0, "reference_called": "", "events": {}}
    for rec in records:
        for key in ("torch_ops", "aten_ops"):
            merged[key] = sorted(set(merged[key]) | set(rec.get(key) or ()))
        for key in ("launches", "empty_launches", "blind_launches", "streams"):
            value = rec.get(key) or 0
            merged[key] += int(value) if isinstance(value, (int, float)) else 0
        merged["reference_called"] = merged["reference_called"] or str(rec.get("reference_called") or "")
        events = rec.get("events") or {}
        if isinstance(events, dict):
            for k, v in events.items():
                merged["events"].setdefault(str(k), str(v))
    return merged


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
