"""The verifier's child process: runs untrusted candidates, one request at a time.

Started by :class:`gpulab.kernelagent.verifier.Verifier` as
``python -m gpulab.kernelagent.worker``. The process starts as a *keeper* that forks the
real worker into a PID namespace of its own (see :mod:`.isolation`); the worker loads
torch, numba and the CUDA context, drops to a user id of its own when it was started as
root, and then serves requests.

Channels, all made by the parent:

* requests arrive as JSON lines on stdin;
* replies leave through a **private pipe**: an inherited descriptor whose number comes in
  the environment and is removed from it at once (GPU MODE's eval does the same with
  ``POPCORN_FD``); fds 1 and 2 go to a log file, so ``print`` cannot forge a reply;
* tensors go both ways through one **shared memory area** (a ``memfd`` the parent made):
  the parent writes each case's inputs there and says where each output goes; it reads
  the outputs back and compares them itself, value by value.

What the child does *not* have is the point: the expected outputs, and (until it needs
it) the seed of the timed runs' inputs. That seed comes in the ``time`` request, not in
the environment: ``os.unsetenv`` does not clear ``/proc/self/environ``, which keeps the
environment the process was started with. Requests come in order: ``load`` (the candidate's
module runs, with no inputs anywhere in the process yet), ``run`` (the checked cases),
``time`` (fresh inputs drawn here from a seed sent only now), ``end`` (the candidate is
forgotten; the parent then counts the processes left).

Everything recorded here (torch calls, launches, audit events) is only as honest as the
process: a candidate that rewrites the worker can rewrite the record. The static checker
(:mod:`.static_check`) refuses the means to do that, and the parent trusts the record
only to make a verdict *worse*: a pass rests on what the parent checked itself.
"""
from __future__ import annotations

import gc
import importlib.util
import json
import mmap
import os
import resource
import secrets
import sys
import threading
import time
import traceback

_CLOCK = time.perf_counter         # taken before any candidate could replace it

ZYGOTE_FD_ENV = "GPULAB_VERIFIER_ZYGOTE_FD"
WORKER_NAMESPACE_ENV = "GPULAB_VERIFIER_WORKER_NAMESPACE"
ATTEMPT_ENV = "GPULAB_VERIFIER_ATTEMPT"
#: for tests of the fallback: start attempts (by name) that must fail as a GPU's would
FAIL_ATTEMPTS_ENV = "GPULAB_VERIFIER_TEST_FAIL_ATTEMPTS"
REPLY_FD_ENV = "GPULAB_VERIFIER_REPLY_FD"
EVENT_FD_ENV = "GPULAB_VERIFIER_EVENT_FD"
AREA_FD_ENV = "GPULAB_VERIFIER_AREA_FD"


class _Hooks:
    """What a candidate did while it ran: torch calls (two levels), launches, streams, and
    the audit events it raised."""

    def __init__(self):
        self.reset()
        self.active = False          # a candidate is running
        self.paused = 0              # inside the worker's own code called by the candidate
        self.candidate_file = ""
        self.out_range = (0, 0)      # the output's device addresses, for the launch check

    def reset(self):
        self.torch_ops: set[str] = set()
        self.aten_ops: set[str] = set()
        self.launches = 0            # non-empty launches that were given the output
        self.empty_launches = 0      # launches with an empty grid or block
        self.blind_launches = 0      # non-empty launches that were not given the output
        self.streams = 0
        self.reference_called = ""
        self.events: dict[str, str] = {}   # audit-based flag -> first detail

    def record(self) -> dict:
        return {"torch_ops": sorted(self.torch_ops), "aten_ops": sorted(self.aten_ops),
                "launches": self.launches, "empty_launches": self.empty_launches,
                "blind_launches": self.blind_launches, "streams": self.streams,
                "reference_called": self.reference_called, "events": dict(self.events)}


def _op_name(func) -> str:
    name = getattr(func, "__name__", str(func))
    name = name.strip("_")
    if name.startswith("r") and name[1:] in ("add", "sub", "mul", "truediv", "matmul", "pow"):
        name = name[1:]  # __radd__ is add
    if name.startswith("i") and name[1:] in ("add", "sub", "mul", "truediv"):
        name = name[1:]  # __iadd__ is add
    return name.rstrip("_")


#: torch calls a numba candidate may make: allocation, views, metadata, copies.
#: Anything else is computing with torch instead of with a kernel.
ALLOWED_FOR_KERNELS = frozenset("""
    get empty empty_like zeros zeros_like new_empty new_zeros full full_like detach contiguous view
    reshape size dim numel stride is_contiguous data_ptr element_size len copy fill zero
    to float cpu cuda clone setitem getitem unsqueeze squeeze flatten t expand as_strided
    storage_offset untyped_storage is_floating_point type dtype device shape cuda_array_interface
    nbytes itemsize
""".split())

#: the same at the level of ATen operators (what torch's dispatcher runs), where a torch
#: call made with the function-level recorder switched off still shows
ALLOWED_ATEN_FOR_KERNELS = frozenset("""
    empty empty_like empty_strided zeros zeros_like full full_like new_empty new_zeros new_full
    new_empty_strided fill_ zero_ copy_ _to_copy clone view _unsafe_view reshape _reshape_alias
    as_strided unsqueeze squeeze t transpose permute expand select slice detach alias lift_fresh
    lift_fresh_copy resize_ contiguous
""".split())

_CTYPES_EVENTS = ("ctypes.dlopen", "ctypes.dlsym", "ctypes.string_at", "ctypes.wstring_at", "ctypes.cdata",
                  "ctypes.cdata/buffer", "ctypes.addressof", "ctypes.create_string_buffer")
_PROC_SECRETS = ("mem", "maps", "smaps", "pagemap", "environ", "fd", "root", "cwd", "auxv", "task")
_FRAME_ATTRIBUTES = ("tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back")
_AUDIT_PROCESS_EVENTS = ("os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                         "subprocess.Popen", "pty.spawn")


def _install_audit(hooks: _Hooks, event_fd: int):
    """An audit hook (PEP 578: it cannot be removed from Python) that notes what a running
    candidate asks of the interpreter: frames, the heap, other processes, files, classes.

    Each finding is written to the parent's event pipe at once, *before* the call that
    raised it returns: a candidate that walks the stack to erase the worker's record has
    already been reported when it holds the first frame. (``os.write`` is the function
    object taken here; rebinding ``os.write`` later changes nothing.)"""
    own_pid = str(os.getpid())
    busy = threading.local()
    write = os.write

    def from_candidate() -> bool:
        # the frame that raised the event: sys._getframe(1) is the caller of the C function
        frame = sys._getframe(2)
        return frame is not None and frame.f_code.co_filename == hooks.candidate_file

    def note(flag: str, detail: str) -> None:
        if flag not in hooks.events:
            hooks.events[flag] = detail
            write(event_fd, (json.dumps({flag: detail}) + "\n").encode())

    def audit(event, args):
        if not hooks.active or getattr(busy, "on", False):
            return
        busy.on = True
        try:
            if event in ("sys._getframe", "sys._current_frames") and from_candidate():
                note("inspects_worker", f"called {event}: walked up the stack into the worker")
            elif event == "object.__getattr__" and len(args) > 1 and args[1] in _FRAME_ATTRIBUTES \
                    and from_candidate():
                note("inspects_worker", f"read .{args[1]}: took a frame, the way up the stack")
            elif event in ("gc.get_objects", "gc.get_referrers", "gc.get_referents"):
                note("inspects_memory", f"called {event} while solving")
            elif event == "object.__setattr__" and args and (isinstance(args[0], type) or args[1] == "__class__"):
                what = getattr(args[0], "__name__", type(args[0]).__name__)
                note("patches_objects", f"set {what}.{args[1]} (patched a class, or swapped an object's class)")
            elif event in _AUDIT_PROCESS_EVENTS:
                note("starts_processes", f"{event}: started another process")
            elif event == "open" and args and isinstance(args[0], (str, bytes)):
                path = os.fsdecode(args[0])
                parts = path.split("/")
                if (len(parts) > 3 and parts[1] == "proc" and parts[2].isdigit() and parts[2] != own_pid
                        and parts[3] in _PROC_SECRETS):
                    note("reads_parent", f"opened {path}: another process's memory or files")
                mode = args[1] if len(args) > 1 else "r"
                flags = args[2] if len(args) > 2 else 0
                writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                    (isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
                if writes and from_candidate():
                    note("writes_files", f"opened {path} for writing")
            elif event in _CTYPES_EVENTS and not hooks.paused:
                note("raw_memory", f"{event}: reached memory through ctypes")
        except Exception:
            pass
        finally:
            busy.on = False

    sys.addaudithook(audit)
    return note


def _watched_objects():
    """(owner, attribute) pairs the worker relies on after a candidate ran: the timers, the
    copies out, the launch counter. Replacing class attributes raises no audit event, so
    they are compared with what they were before any candidate, after every call."""
    import time as time_module

    import torch

    import gpulab
    from gpulab import harness, launch

    pairs = [(time_module, n) for n in ("perf_counter", "time", "monotonic", "sleep")]
    pairs += [(torch.Tensor, n) for n in ("copy_", "clone", "fill_", "cpu", "to", "data_ptr", "numel")]
    pairs += [(torch.cuda, n) for n in ("synchronize", "current_stream", "Event", "Stream")]
    pairs += [(torch.cuda.Event, n) for n in ("record", "elapsed_time", "synchronize", "query")]
    pairs += [(launch.Kernel, "launch"), (harness, "candidate_running"), (gpulab, "synchronize"),
              (torch, "empty"), (torch, "equal"), (json, "dumps"), (os, "write")]
    return [(owner, name, owner.__dict__.get(name, getattr(owner, name, None))) for owner, name in pairs]


def _check_integrity(watched, hooks: _Hooks, note) -> None:
    for owner, name, original in watched:
        now = owner.__dict__.get(name, getattr(owner, name, None))
        if now is not original:
            label = getattr(owner, "__name__", str(owner))
            note("patches_objects", f"replaced {label}.{name}")
            return


def _install_hooks(hooks: _Hooks):
    """Count kernel launches (and what they were given) and stream creations."""
    import torch
    from numba import cuda

    from gpulab import launch

    real_launch = launch.Kernel.launch

    def counted_launch(self, grid, block, shared, args, stream=None):
        cells = grid[0] * grid[1] * grid[2] * block[0] * block[1] * block[2]
        if cells == 0:
            hooks.empty_launches += 1
        else:
            lo, hi = hooks.out_range
            given_out = any(isinstance(a, torch.Tensor) and a.numel() > 0 and lo <= a.data_ptr() < hi
                            for a in args)
            if given_out:
                hooks.launches += 1
            else:
                hooks.blind_launches += 1
        hooks.paused += 1           # the launch's own tensor calls are not the candidate's
        try:
            return real_launch(self, grid, block, shared, args, stream)
        finally:
            hooks.paused -= 1

    launch.Kernel.launch = counted_launch

    real_numba_stream = cuda.stream

    def counted_numba_stream(*args, **kwargs):
        hooks.streams += 1
        return real_numba_stream(*args, **kwargs)

    cuda.stream = counted_numba_stream

    if torch.cuda.is_available():
        real_stream_cls = torch.cuda.Stream

        class CountedStream(real_stream_cls):
            def __new__(cls, *args, **kwargs):
                # torch wraps streams that already exist (current_stream(), an event's
                # record()) by passing their stream_id: only a stream made anew counts
                if "stream_id" not in kwargs:
                    hooks.streams += 1
                return super().__new__(cls, *args, **kwargs)

        torch.cuda.Stream = CountedStream


def _load_candidate(path: str, hooks: _Hooks):
    name = "candidate_" + os.path.basename(path).removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    hooks.candidate_file = path
    hooks.active = True
    try:
        spec.loader.exec_module(module)
    finally:
        hooks.active = False
    solve = getattr(module, "solve", None)
    if not callable(solve):
        raise TypeError("the candidate must define solve(*inputs, out)")
    return module, solve


def _forget(module) -> None:
    """Drop a finished candidate's globals, so the next one cannot find its state."""
    if module is not None:
        module.__dict__.clear()
    gc.collect()


class _Area:
    """The shared memory area: a view per (offset, shape, dtype) the parent names."""

    def __init__(self, fd: int):
        self.fd = fd
        self.map = None

    def open(self, size: int):
        import torch

        self.torch = torch
        if self.map is None or len(self.map) < size:
            if self.map is not None:
                try:
                    self.map.close()
                except BufferError:     # a view is still alive: it goes when that view does
                    pass
            self.map = mmap.mmap(self.fd, max(size, 1))

    def view(self, slot: dict):
        torch = self.torch
        dtype = getattr(torch, slot["dtype"])
        count = 1
        for s in slot["shape"]:
            count *= s
        if count == 0:
            return torch.empty(slot["shape"], dtype=dtype)
        flat = torch.frombuffer(self.map, dtype=dtype, count=count, offset=slot["offset"])
        return flat.view(slot["shape"])


class _Runner:
    def __init__(self, hooks: _Hooks, area: _Area):
        import torch
        from torch.overrides import TorchFunctionMode
        from torch.utils._python_dispatch import TorchDispatchMode

        import gpulab

        self.torch, self.gpulab, self.hooks, self.area = torch, gpulab, hooks, area
        self.module = None
        self.solve = None
        self.task = None
        self.note = None              # set once the audit hook is in
        self.solve_s = 0.0            # time inside the candidate's calls (for the overhead figure)
        self.watched = []
        self.copy = torch.Tensor.copy_         # captured before any candidate: a C method
        self.plain_tensor = torch.Tensor

        class Recorder(TorchFunctionMode):
            def __torch_function__(mode, func, types, args=(), kwargs=None):
                if not hooks.paused:
                    hooks.torch_ops.add(_op_name(func))
                return func(*args, **(kwargs or {}))

        class AtenRecorder(TorchDispatchMode):
            # below torch's function modes: what runs here runs, recorder switched off or not
            def __torch_dispatch__(mode, func, types, args=(), kwargs=None):
                if not hooks.paused:
                    hooks.aten_ops.add(func.overloadpacket.__name__)
                return func(*args, **(kwargs or {}))

        self.Recorder, self.AtenRecorder = Recorder, AtenRecorder

    def _poisoned(self, shape, dtype):
        out = self.torch.empty(shape, dtype=dtype, device=self.gpulab.device)
        return out.fill_(float("nan"))

    def _tampered(self, tensors) -> bool:
        return any(type(t) is not self.plain_tensor for t in tensors)

    def call(self, xs, out, watched: bool = True):
        """One call of the candidate: watched (recorders, the reference guard, an integrity
        check after it), or, in timed runs, bare: the reference guard is a trace hook and
        the recorders run Python on every torch call, both far slower than a small kernel,
        so a timed call has only the audit hook around it (its output is still checked)."""
        hooks, harness = self.hooks, self.gpulab.harness
        hooks.out_range = (out.data_ptr(), out.data_ptr() + out.numel() * out.element_size())
        hooks.active = True
        started = _CLOCK()
        try:
            if watched:
                with harness.candidate_running("candidate"), self.AtenRecorder(), self.Recorder():
                    self.solve(*xs, out=out)
            else:
                self.solve(*xs, out=out)
        finally:
            self.solve_s += _CLOCK() - started
            hooks.active = False
            if watched and self.note is not None:
                _check_integrity(self.watched, hooks, self.note)

    def run_candidate(self, inputs, out_slot, after_slots=None) -> tuple[bool, bool]:
        """One run on fresh copies of the inputs; returns (side stream?, tampered?).
        With ``after_slots`` the inputs as the candidate left them go back too."""
        torch, gpulab = self.torch, self.gpulab
        xs = tuple(x.to(gpulab.device).clone() for x in inputs)
        out = self._poisoned(out_slot["shape"], getattr(torch, out_slot["dtype"]))
        keep = (out, *xs)                 # the objects we made, whatever solve rebinds
        self.call(xs, out)
        side_stream = False
        if self._tampered(keep):
            return side_stream, True
        if gpulab.ON_GPU:
            # the answer must be complete once the *current* stream is done: work queued on
            # another stream and not joined would still be running (or not yet started)
            torch.cuda.current_stream().synchronize()
            snapshot = out.clone()
            torch.cuda.synchronize()
            side_stream = not torch.equal(snapshot.nan_to_num(), out.nan_to_num())
        self.copy(self.area.view(out_slot), out)
        for slot, x in zip(after_slots or (), xs):
            self.copy(self.area.view(slot), x)
        return side_stream, False

    def run_reference(self, inputs):
        xs = tuple(x.to(self.gpulab.device).clone() for x in inputs)
        expected = self.task.reference(*xs)
        self.gpulab.synchronize()
        del expected, xs  # the answer is gone again, but its memory may be handed out next


def _load(runner: _Runner, hooks: _Hooks, req: dict) -> dict:
    from .tasks import get_task

    hooks.reset()
    runner.solve_s = 0.0
    runner.task = get_task(req["task"])
    try:
        try:
            runner.module, runner.solve = _load_candidate(req["path"], hooks)
        finally:
            _check_integrity(runner.watched, hooks, runner.note)
    except MemoryError:
        return {"status": "out_of_memory", "error": "MemoryError while loading the candidate"}
    except Exception:
        return {"status": "error", "error": "loading the candidate failed:\n" + traceback.format_exc(limit=4)}
    return {"status": "loaded"}


def _run(runner: _Runner, hooks: _Hooks, req: dict) -> dict:
    import torch

    from gpulab.harness import ReferenceCalledError

    runner.area.open(req["area_size"])
    errors, side_streams, tampered = [], [], []
    for case in req["cases"]:
        inputs = [runner.area.view(slot).clone() for slot in case["inputs"]]
        error, side, swapped = None, False, False
        try:
            last = len(case["outs"]) - 1
            for run, out_slot in enumerate(case["outs"]):
                if run == 1:
                    runner.run_reference(inputs)
                s, t = runner.run_candidate(inputs, out_slot, case["after"] if run == last else None)
                side, swapped = side or s, swapped or t
                if t:
                    break
        except ReferenceCalledError as exc:
            hooks.reference_called = str(exc)
            error = f"ReferenceCalledError: {exc}"
        except MemoryError:
            return {"status": "out_of_memory", "error": "the candidate raised MemoryError "
                    "(it asked for more memory than the verifier allows)"}
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            if type(exc).__name__ == "NotImplementedError":
                return {"status": "error", "error": f"NotImplementedError: {exc}"}
        errors.append(error)
        side_streams.append(side)
        tampered.append(swapped)
    return {"status": "ran", "errors": errors, "side_streams": side_streams, "tampered": tampered,
            "record": hooks.record(), "solve_s": runner.solve_s}


def _time(runner: _Runner, hooks: _Hooks, req: dict) -> dict:
    """Timed runs, each on fresh inputs drawn from the seed sent with this request (so
    none could be computed in advance), each output copied to the area for the parent to
    check. The clock is :func:`.timing.timed_runs`, whose CUDA-event methods were taken
    from torch's C extension before any candidate ran."""
    from .timing import timed_runs

    torch, gpulab, task = runner.torch, runner.gpulab, runner.task
    runner.area.open(req["area_size"])
    shape, seed = tuple(req["shape"]), int(req["seed"])
    slots = req["outs"]
    dtype = getattr(torch, slots[0]["dtype"])
    tampered = []

    def inputs_for(i):
        return task.device_inputs(shape, seed + i, gpulab.device)

    def new_out():
        return runner._poisoned(slots[0]["shape"], dtype)

    def call(xs, out):
        runner.call(xs, out, watched=False)

    def sink(i, xs, out):
        if runner._tampered((out, *xs)):
            tampered.append(i)
            return
        runner.copy(runner.area.view(slots[i]), out)

    hooks.active = False
    try:
        result = timed_runs(call, inputs_for, new_out, sink, runs=len(slots), warmup=req.get("warmup", 2))
    except Exception as exc:
        _check_integrity(runner.watched, hooks, runner.note)
        return {"status": "timed", "error": f"{type(exc).__name__}: {exc}", "times_ms": [], "clock": "",
                "tampered": tampered, "record": hooks.record()}
    _check_integrity(runner.watched, hooks, runner.note)      # once, after the timed calls
    return {"status": "timed", "error": None, "times_ms": result["times_ms"], "clock": result["clock"],
            "tampered": tampered, "record": hooks.record(), "solve_s": runner.solve_s}


def _limit_memory(megabytes: int, simulator: bool) -> None:
    """Cap the address space under the simulator (a CUDA context needs a huge one, so on a
    GPU the parent watches the resident memory instead)."""
    if megabytes <= 0 or not simulator:
        return
    with open("/proc/self/statm") as f:
        vm_bytes = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    cap = vm_bytes + megabytes * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def _warm_up() -> None:
    """Load what candidates use now, while this process may still read every file: the
    CUDA contexts (torch's and numba's), the kernel compiler or the simulator, and the
    modules a first launch imports. On a GPU the parent's memory baseline, taken when this
    process says it is ready, then already holds them, so the memory limit measures what a
    candidate allocates."""
    import torch

    import gpulab
    import gpulab.harness  # noqa: F401
    from gpulab.basics import vector_add_kernel   # a kernel defined at module level
    from . import tasks, timing  # noqa: F401

    a = torch.arange(33, dtype=torch.float32, device=gpulab.device)
    out = torch.empty_like(a)
    vector_add_kernel[2, 32](a, a, out)
    gpulab.synchronize()
    assert torch.equal(out.cpu(), 2 * a.cpu())
    torch.softmax(out, -1)
    if gpulab.ON_GPU:
        torch.cuda.Event(enable_timing=True)
        timing.flush_l2()


def _private_reply_channel():
    """The reply pipe, moved to a descriptor number of its own choosing, its variable gone."""
    fd = int(os.environ.pop(REPLY_FD_ENV))
    hidden = os.dup2(fd, 100 + secrets.randbelow(800), inheritable=False)
    os.close(fd)
    return os.fdopen(hidden, "w")


def _worker_main(namespace: str) -> None:
    """The worker proper, once it is process 1 of its namespace (or below a subreaper)."""
    from . import isolation

    proto = _private_reply_channel()
    area = _Area(int(os.environ.pop(AREA_FD_ENV)))
    uid = os.environ.pop("GPULAB_ISOLATION_UID", None)
    os.environ.setdefault("GPULAB_QUIET", "1")
    import gpulab
    from gpulab import sandbox

    sandbox.enter_helper()    # while a notebook is graded: no peeking from here either

    # the simulator runs each CUDA thread as a Python thread: small stacks keep a block of
    # 1024 threads inside the address-space cap
    threading.stack_size(1 << 20)
    import torch
    attempt = os.environ.pop(ATTEMPT_ENV, "")
    if attempt and attempt in os.environ.get(FAIL_ATTEMPTS_ENV, "").split(","):
        raise RuntimeError(f"simulated start failure of attempt {attempt!r} (as CUDA's error 304 would be)")
    _warm_up()
    if gpulab.ON_GPU:
        # a candidate that fills the GPU through torch's allocator stops at this share of it,
        # so the notebook or grader sharing the GPU keeps room (numba's own allocations are
        # not covered: they go to the driver directly)
        torch.cuda.set_per_process_memory_fraction(float(os.environ.get("GPULAB_VERIFIER_GPU_FRACTION", "0.5")))
    hooks = _Hooks()
    _install_hooks(hooks)
    runner = _Runner(hooks, area)
    with runner.AtenRecorder(), runner.Recorder():   # their first use imports more modules
        torch.softmax(torch.zeros(3, device=gpulab.device) + 1, -1)
    hooks.reset()
    _limit_memory(int(os.environ.get("GPULAB_VERIFIER_MEMORY_MB", "0")), gpulab.SIMULATOR)
    if uid is not None:
        isolation.drop_privileges(int(uid))
        resource.setrlimit(resource.RLIMIT_NPROC, (4096, 4096))  # per uid: a fork bomb stops here
        _warm_up()          # the GPU still works for the new uid (else: fail now, not per candidate)
    runner.watched = _watched_objects()
    runner.note = _install_audit(hooks, int(os.environ.pop(EVENT_FD_ENV)))
    ready = {"ready": True, "mode": gpulab.MODE, "namespace": namespace, "uid": os.getuid(),
             "start_s": round(time.perf_counter() - _STARTED[0], 3) if _STARTED else None}
    proto.write(json.dumps(ready) + "\n")
    proto.flush()
    handlers = {"load": _load, "run": _run, "time": _time}
    for line in sys.stdin:
        req = json.loads(line)
        op = req.get("op")
        if op in handlers:
            reply = handlers[op](runner, hooks, req)
        elif op == "end":
            _forget(runner.module)
            runner.module = runner.solve = None
            if gpulab.ON_GPU:
                torch.cuda.empty_cache()   # hand the candidate's cached blocks back to the GPU
            reply = {"status": "ended"}
        else:
            reply = {"status": "error", "error": f"unknown request {op!r}"}
        reply["nonce"] = req.get("nonce")
        proto.write(json.dumps(reply) + "\n")
        proto.flush()
    os._exit(0)


_STARTED: list[float] = []


def _serve(request: dict, fds: list[int]) -> None:
    """In a fresh child of the zygote: take the worker's descriptors, become its keeper,
    and run the worker below it (never returns)."""
    from . import isolation

    _STARTED.append(time.perf_counter())
    if os.geteuid() != 0:
        isolation.make_dumpable()     # the zygote is not; its workers need not hide
    stdin_r, reply_w, events_w, area_fd, log_fd = fds
    os.dup2(stdin_r, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(stdin_r)
    os.close(log_fd)
    sys.stdin = open(0, "r", closefd=False)
    os.environ.update({REPLY_FD_ENV: str(reply_w), EVENT_FD_ENV: str(events_w), AREA_FD_ENV: str(area_fd),
                       "GPULAB_VERIFIER_MEMORY_MB": str(request.get("memory_mb", 0)),
                       "HOME": request.get("home") or os.environ.get("HOME", "/")})
    if request.get("uid") is not None and request.get("drop", True):
        os.environ["GPULAB_ISOLATION_UID"] = str(request["uid"])
    if request.get("cwd"):
        os.chdir(request["cwd"])
    if request.get("blocked"):
        from gpulab import sandbox

        os.environ[sandbox.BLOCKED_ENV] = request["blocked"]
    os.environ[ATTEMPT_ENV] = str(request.get("attempt", ""))
    os.environ[FAIL_ATTEMPTS_ENV] = str(request.get("fail_attempts") or "")
    try:
        namespace = isolation.enter_namespace(report_fd=reply_w,       # the keeper stays in there
                                              allow_namespaces=request.get("namespaces", True))
        if request.get("exec"):
            # a fresh interpreter instead of this fork of the zygote: nothing of the zygote's
            # state (CUDA's included) is inherited; slower to start
            for fd in (0, 1, 2, reply_w, events_w, area_fd):
                os.set_inheritable(fd, True)
            os.environ[WORKER_NAMESPACE_ENV] = namespace
            os.execv(sys.executable, [sys.executable, "-m", __spec__.name])
        _worker_main(namespace)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
    os._exit(1)


def _zygote(sock_fd: int) -> None:
    """The process the verifier starts once: it imports torch, numba and gpulab (and, under
    the simulator, runs a kernel), then forks a fresh worker for each request. It never
    runs a candidate itself, so every worker starts from a clean copy in milliseconds
    instead of a new interpreter's seconds. No CUDA context is made here (a context does not
    survive a fork): on a GPU each worker makes its own."""
    import signal
    import socket

    sock = socket.socket(fileno=sock_fd)
    from . import isolation
    if os.geteuid() != 0:
        isolation.make_undumpable()   # same user as its workers: they may not read it either
    os.environ.setdefault("GPULAB_QUIET", "1")
    import gpulab
    import gpulab.harness  # noqa: F401
    import torch  # noqa: F401
    import torch.overrides  # noqa: F401
    import torch.utils._python_dispatch  # noqa: F401
    from numba import cuda  # noqa: F401

    from . import tasks, timing  # noqa: F401
    if gpulab.SIMULATOR:
        _warm_up()
    # the first torch dispatch mode imports much of torch (seconds): once, here, on the CPU
    runner = _Runner(_Hooks(), None)
    with runner.AtenRecorder(), runner.Recorder():
        torch.softmax(torch.zeros(3) + 1, -1)

    def reap(*_):
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    signal.signal(signal.SIGCHLD, reap)
    # everything loaded so far is the zygote's for good: a worker's collections skip it (and
    # so do not touch, and copy, every page it shares with the zygote)
    gc.collect()
    gc.freeze()
    sock.sendall(b'{"zygote": true}\n')
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 1 << 16, 8)
        except OSError:
            os._exit(0)
        if not msg:
            os._exit(0)           # the verifier is gone
        request = json.loads(msg)
        if torch.cuda.is_initialized():      # a CUDA context does not survive a fork
            sock.sendall(b'{"error": "the zygote has initialised CUDA: it cannot fork workers"}\n')
            continue
        keeper = os.fork()
        if keeper == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            sock.close()
            _serve(request, fds)
        for fd in fds:
            os.close(fd)
        sock.sendall((json.dumps({"keeper": keeper}) + "\n").encode())


def main() -> None:
    if WORKER_NAMESPACE_ENV in os.environ:     # exec'd by a keeper: be its worker
        _STARTED.append(time.perf_counter())
        _worker_main(os.environ.pop(WORKER_NAMESPACE_ENV))
    _zygote(int(os.environ.pop(ZYGOTE_FD_ENV)))


if __name__ == "__main__":
    main()
