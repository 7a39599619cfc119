"""Record what simulated CUDA threads did, and find the races the simulator's order hides.

numba's CUDA simulator runs a kernel one block at a time, each thread as a Python thread.
A kernel with a race (two threads writing one element without an atomic, a missing
``cuda.syncthreads()``) often gives the right answer there, because the threads happen to
run in a friendly order. This module watches the launch instead of its result:

    from gpulab import simtrace
    with simtrace.record() as rec:
        kernel[grid, block](x, out)
    for finding in rec.findings():    # or rec.races(), rec.divergent_barriers(),
        print(finding)                # rec.unsynced_shared_reads()
    # threads (3,0,0) and (35,0,0) of block (0,0,0) both wrote out[3] without an atomic

What is recorded, per kernel launch: every element of an argument array or a shared array
that a thread read or wrote (by memory address, so views and windows of one buffer agree),
whether the access was part of an atomic, and the barrier phase the thread was in (how
many ``cuda.syncthreads()`` it had passed); and, per barrier, which threads reached it and
from which line.

The analyses:

* :meth:`Recording.races`: two different threads wrote one element of a global array in
  one launch and at least one write was not atomic (a plain ``+=`` histogram, a result
  written by every thread); two threads of one block ordered by a barrier do not race.
  With ``reads=True`` (the default) also a plain read of an element that another thread
  wrote plainly (a row "claimed" by reading a flag and then setting it). Kernels that
  order blocks on purpose (``threadfence`` plus an atomic counter) are reported too:
  pass ``reads=False`` for them.
* :meth:`Recording.divergent_barriers`: a ``cuda.syncthreads()`` that only some threads
  of a block reached (a barrier inside a branch, or threads that returned early), or
  threads that met at different barrier lines.
* :meth:`Recording.unsynced_shared_reads`: in a shared array, a thread read (or wrote) an
  element that another thread wrote in the same barrier phase: a ``cuda.syncthreads()`` is
  missing between them.

Cost: nothing when not recording (the simulator is patched only inside ``record()``);
while recording, a few microseconds per array access. Results do not change: every
patched method calls numba's own.

On a real GPU kernels run as machine code that Python cannot watch: there ``record()``
records nothing, ``Recording.enabled`` is False and every analysis returns ``[]``.
This module knows no chapter; it only needs numba's simulator.
"""
from __future__ import annotations

import contextlib
import inspect
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import runtime

__all__ = ["record", "Recording", "LaunchTrace", "Finding", "recording_active", "launches_in_open_recording"]

_active: "Recording | None" = None
_install_lock = threading.Lock()


def recording_active() -> bool:
    """True while a :func:`record` block is open (and the simulator is being watched)."""
    return _active is not None


def _dims(d) -> tuple[int, int, int]:
    return (int(d.x), int(d.y), int(d.z))


def _fmt(t: tuple) -> str:
    return "(" + ",".join(str(v) for v in t) + ")"


# ------------------------------------------------------------------ records

class Access(NamedTuple):  # a tuple: cheap to make once per element access
    block: tuple
    thread: tuple
    phase: int
    atomic: bool


@dataclass
class Finding:
    """One problem found in a launch; ``str(finding)`` is the sentence for a learner."""
    kind: str            # "race", "divergent barrier" or "unsynced shared read"
    kernel: str
    array: str
    index: tuple | None
    block: tuple | None
    threads: tuple
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass
class _Array:
    name: str
    base: int
    shape: tuple
    strides: tuple
    itemsize: int
    nbytes_span: tuple  # lowest and one-past-highest byte address

    def index_of(self, address: int) -> tuple | None:
        """The element index at ``address``, or None when it lies outside this array."""
        lo, hi = self.nbytes_span
        if not lo <= address < hi:
            return None
        offset = address - self.base
        order = sorted(range(len(self.shape)), key=lambda d: -abs(self.strides[d]))
        index = [0] * len(self.shape)
        for d in order:
            stride = self.strides[d]
            if stride == 0:
                continue
            index[d], offset = divmod(offset, stride)
            if not 0 <= index[d] < self.shape[d]:
                return None
        return tuple(index) if offset == 0 else None


def _describe_array(name: str, ary: np.ndarray) -> _Array:
    base = ary.__array_interface__["data"][0]
    lo = hi = base
    if ary.size:  # the lowest and highest byte any element touches (strides may be negative)
        lo += sum(min(0, (n - 1) * s) for n, s in zip(ary.shape, ary.strides))
        hi += sum(max(0, (n - 1) * s) for n, s in zip(ary.shape, ary.strides)) + ary.itemsize
    return _Array(name, base, tuple(ary.shape), tuple(ary.strides), ary.itemsize, (lo, hi))


@dataclass
class LaunchTrace:
    """What one simulated launch did."""
    kernel: str
    grid: tuple
    block: tuple
    arrays: list = field(default_factory=list)         # _Array per argument array
    shared: dict = field(default_factory=dict)         # base address -> _Array
    writes: dict = field(default_factory=dict)         # address -> [Access]
    reads: dict = field(default_factory=dict)          # address -> [Access]
    shared_writes: dict = field(default_factory=dict)  # (block, address) -> [Access]
    shared_reads: dict = field(default_factory=dict)   # (block, address) -> [Access]
    barriers: dict = field(default_factory=dict)       # (block, phase) -> {thread: line}
    finished: dict = field(default_factory=dict)       # block -> {thread: phases passed}

    def name_of(self, address: int, shared_array=False) -> tuple[str, tuple | None]:
        candidates = self.shared.values() if shared_array else self.arrays
        for arr in candidates:
            index = arr.index_of(address)
            if index is not None:
                return arr.name, index
        return "an array", None


def _element(name: str, index: tuple | None) -> str:
    if index is None:
        return name
    return f"{name}[{', '.join(str(i) for i in index)}]"


def _who(a: Access, b: Access) -> str:
    if a.block == b.block:
        return f"threads {_fmt(a.thread)} and {_fmt(b.thread)} of block {_fmt(a.block)}"
    return (f"thread {_fmt(a.thread)} of block {_fmt(a.block)} and thread {_fmt(b.thread)} "
            f"of block {_fmt(b.block)}")


def _ordered(a: Access, b: Access) -> bool:
    """True when a barrier orders the two accesses (same block, different phases)."""
    return a.block == b.block and a.phase != b.phase


class Recording:
    """The launches seen inside one :func:`record` block, and the analyses over them."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.launches: list[LaunchTrace] = []
        self._lock = threading.Lock()

    # -- analyses
    def races(self, reads: bool = True, limit: int = 5) -> list[Finding]:
        """Global-memory conflicts between threads (see the module docstring)."""
        found = []
        for launch in self.launches:
            for address, writes in launch.writes.items():
                conflict = _first_write_conflict(writes)
                kind = "wrote"
                if conflict is None and reads:
                    conflict = _first_read_conflict(writes, launch.reads.get(address, ()))
                    kind = "read"
                if conflict is None:
                    continue
                a, b = conflict
                name, index = launch.name_of(address)
                if kind == "wrote":
                    message = f"{_who(a, b)} both wrote {_element(name, index)} without an atomic"
                else:
                    message = (f"thread {_fmt(b.thread)} of block {_fmt(b.block)} read "
                               f"{_element(name, index)}, which thread {_fmt(a.thread)} of block "
                               f"{_fmt(a.block)} wrote without an atomic in the same launch: "
                               "the value it gets depends on which runs first")
                found.append(Finding("race", launch.kernel, name, index,
                                     a.block if a.block == b.block else None, (a.thread, b.thread),
                                     f"{launch.kernel}: {message}"))
                if len(found) >= limit:
                    return found
        return found

    def divergent_barriers(self, limit: int = 5) -> list[Finding]:
        """Barriers that not every thread of a block reached together."""
        found = []
        for launch in self.launches:
            n_threads = int(np.prod(launch.block))
            for (block, phase), arrivals in sorted(launch.barriers.items()):
                lines = sorted(set(arrivals.values()))
                if len(arrivals) < n_threads:
                    missing = _first_missing_thread(launch.block, arrivals)
                    line = lines[0]
                    message = (f"{launch.kernel}: only {len(arrivals)} of the {n_threads} threads of block "
                               f"{_fmt(block)} reached the cuda.syncthreads() at line {line}; thread "
                               f"{_fmt(missing)} never did (a barrier inside a branch, or a thread that "
                               "returned before it): every thread of a block must reach every barrier")
                elif len(lines) > 1:
                    by_line = {}
                    for thread, ln in arrivals.items():
                        by_line.setdefault(ln, thread)
                    (l1, t1), (l2, t2) = list(sorted(by_line.items()))[:2]
                    message = (f"{launch.kernel}: in block {_fmt(block)} thread {_fmt(t1)} waited at the "
                               f"cuda.syncthreads() of line {l1} while thread {_fmt(t2)} waited at line {l2}: "
                               "a barrier inside a branch; every thread must reach the same barriers")
                else:
                    continue
                found.append(Finding("divergent barrier", launch.kernel, "", None, block, (),
                                     message))
                if len(found) >= limit:
                    return found
        return found

    def unsynced_shared_reads(self, limit: int = 5) -> list[Finding]:
        """Shared-memory accesses that a missing ``cuda.syncthreads()`` leaves unordered."""
        found = []
        for launch in self.launches:
            for key, writes in launch.shared_writes.items():
                block, address = key
                conflict = _first_read_conflict(writes, launch.shared_reads.get(key, ()),
                                                same_block_only=True)
                verb = "read"
                if conflict is None:
                    conflict = _first_write_conflict(writes, same_block_only=True)
                    verb = "also wrote"
                if conflict is None:
                    continue
                a, b = conflict
                name, index = launch.name_of(address, shared_array=True)
                message = (f"{launch.kernel}: thread {_fmt(b.thread)} of block {_fmt(block)} {verb} "
                           f"{_element(name, index)} (shared) in the same barrier phase as thread "
                           f"{_fmt(a.thread)} wrote it: a cuda.syncthreads() is missing between the "
                           "write and the read")
                found.append(Finding("unsynced shared read", launch.kernel, name, index, block,
                                     (a.thread, b.thread), message))
                if len(found) >= limit:
                    return found
        return found

    def findings(self) -> list[Finding]:
        """Every finding of the three analyses, barriers first (they explain the others)."""
        return self.divergent_barriers() + self.unsynced_shared_reads() + self.races()

    # -- recording (called from simulator threads)
    def _start_launch(self, launch: LaunchTrace) -> None:
        with self._lock:
            self.launches.append(launch)


def _first_write_conflict(writes, same_block_only=False):
    """Two writes by different threads, not both atomic, that no barrier orders."""
    first_by_thread = {}
    for w in writes:
        first_by_thread.setdefault((w.block, w.thread, w.phase, w.atomic), w)
    distinct = list(first_by_thread.values())
    for i, a in enumerate(distinct):
        for b in distinct[i + 1:]:
            if (a.block, a.thread) == (b.block, b.thread) or (a.atomic and b.atomic):
                continue
            if same_block_only and a.block != b.block:
                continue
            if not _ordered(a, b):
                return a, b
        if i > 64:  # enough to name one conflict; keep the analysis linear-ish
            break
    return None


def _first_read_conflict(writes, reads, same_block_only=False):
    """A read by one thread of an element another thread wrote (plainly) unordered."""
    plain = [w for w in writes if not w.atomic]
    if not plain or not reads:
        return None
    seen = set()
    for r in reads:
        key = (r.block, r.thread, r.phase)
        if key in seen:
            continue
        seen.add(key)
        for w in plain:
            if (w.block, w.thread) == (r.block, r.thread):
                continue
            if same_block_only and w.block != r.block:
                continue
            if r.atomic and w.atomic:
                continue
            if not _ordered(w, r):
                return w, r
    return None


def _first_missing_thread(block_dim, arrivals):
    for z in range(block_dim[2]):
        for y in range(block_dim[1]):
            for x in range(block_dim[0]):
                if (x, y, z) not in arrivals:
                    return (x, y, z)
    return None


# ------------------------------------------------------------------ the hooks

_SIM_DIR = None


def _kernel_line() -> int:
    """The line of the kernel (or device function) that called into the simulator."""
    frame = sys._getframe(1)
    here = Path(__file__)
    while frame is not None:
        path = Path(frame.f_code.co_filename)
        if path != here and not (_SIM_DIR is not None and path.is_relative_to(_SIM_DIR)):
            return frame.f_lineno
        frame = frame.f_back
    return -1


def _thread_state():
    """(block, thread, phase, atomic depth) of the simulated thread running now, or None."""
    t = threading.current_thread()
    block_idx = getattr(t, "blockIdx", None)
    if block_idx is None:
        return None
    return t


def _addresses(ary: np.ndarray, idx):
    """Byte addresses of the elements ``ary[idx]`` names (one for an element index)."""
    if not isinstance(idx, tuple):
        idx = (idx,)
    if len(idx) == ary.ndim and all(isinstance(i, (int, np.integer)) for i in idx):
        address = ary.__array_interface__["data"][0]
        for d, i in enumerate(idx):
            i = int(i)
            if i < 0:
                i += ary.shape[d]
            address += i * ary.strides[d]
        return (address,)
    try:
        view = ary[idx]
    except Exception:
        return ()
    if not isinstance(view, np.ndarray):
        return ()
    if view.base is None and not np.shares_memory(view, ary):
        return ()  # a copy (fancy indexing): no element of ary is addressed directly
    base = view.__array_interface__["data"][0]
    return tuple(base + sum(i * s for i, s in zip(ix, view.strides)) for ix in np.ndindex(view.shape))


def _is_element_read(ary: np.ndarray, idx) -> bool:
    if not isinstance(idx, tuple):
        idx = (idx,)
    return len(idx) == ary.ndim and all(isinstance(i, (int, np.integer)) for i in idx)


class _Hooks:
    """Installs the patches on numba's simulator classes and removes them again."""

    def __init__(self, rec: Recording):
        self.rec = rec
        self.saved = []
        self.current: LaunchTrace | None = None

    # -- helpers
    def _access(self, table, key, t, atomic_extra=False):
        ids = t.__dict__.get("_simtrace_ids")
        if ids is None:  # the thread's (block, thread) indices, made once per thread
            ids = t._simtrace_ids = (_dims(t.blockIdx), _dims(t.threadIdx))
        access = Access(ids[0], ids[1], t.__dict__.get("_simtrace_phase", 0),
                        t.__dict__.get("_simtrace_atomic", 0) > 0 or atomic_extra)
        # no lock: under the GIL setdefault and append are each atomic
        table.setdefault(key, []).append(access)

    def _patch(self, owner, name, new):
        self.saved.append((owner, name, owner.__dict__[name]))
        setattr(owner, name, new)

    def install(self):
        global _SIM_DIR
        from numba.cuda.simulator import kernel as sim_kernel
        from numba.cuda.simulator import kernelapi
        from numba.cuda.simulator.cudadrv import devicearray

        _SIM_DIR = Path(sim_kernel.__file__).parent
        hooks = self
        Wrapped = devicearray.FakeWithinKernelCUDAArray
        orig_get, orig_set, orig_init = Wrapped.__getitem__, Wrapped.__setitem__, Wrapped.__init__

        def traced_init(wrapper, item):
            orig_init(wrapper, item)
            # the launch wraps each argument array on the main thread, in argument order
            launch = hooks.current
            if launch is not None and _thread_state() is None:
                names = launch._pending_names
                name = names.pop(0) if names else f"argument {len(launch.arrays)}"
                launch.arrays.append(_describe_array(name, item._ary))

        def traced_get(wrapper, idx):
            value = orig_get(wrapper, idx)
            t = _thread_state()
            launch = hooks.current
            if t is not None and launch is not None:
                ary = wrapper._item._ary
                if _is_element_read(ary, idx):
                    for address in _addresses(ary, idx):
                        hooks._access(launch.reads, address, t)
            return value

        def traced_set(wrapper, idx, value):
            orig_set(wrapper, idx, value)
            t = _thread_state()
            launch = hooks.current
            if t is not None and launch is not None:
                for address in _addresses(wrapper._item._ary, idx):
                    hooks._access(launch.writes, address, t)

        self._patch(Wrapped, "__init__", traced_init)
        self._patch(Wrapped, "__getitem__", traced_get)
        self._patch(Wrapped, "__setitem__", traced_set)

        # shared arrays are plain NumPy arrays: hand the kernel a watching proxy instead
        Shared = kernelapi.FakeCUDAShared

        def traced_shared_array(shared, shape, dtype):
            if shape == 0:  # dynamic shared memory: no line-based identity needed
                ary = _ORIG_SHARED_ARRAY(shared, shape, dtype)
            else:
                # numba keys static allocations by the calling line; keep that key (the
                # caller is the kernel, one frame up from here)
                caller = sys._getframe(1)
                key = (caller.f_code.co_filename, caller.f_lineno)
                ary = shared._allocations.get(key)
                if ary is None:
                    if isinstance(dtype, _numba_types().Type):
                        dtype = _numpy_support().as_dtype(dtype)
                    ary = np.empty(shape, dtype)
                    shared._allocations[key] = ary
            launch = hooks.current
            if launch is not None:
                base = ary.__array_interface__["data"][0]
                if base not in launch.shared:
                    caller = sys._getframe(1)
                    name = _shared_name(caller) or f"shared array {len(launch.shared)}"
                    with hooks.rec._lock:
                        launch.shared.setdefault(base, _describe_array(name, ary))
            return _SharedProxy(ary, hooks)

        _ORIG_SHARED_ARRAY = Shared.__dict__["array"]
        self._patch(Shared, "array", traced_shared_array)

        # atomics: mark the accesses they make as atomic
        Atomic = kernelapi.FakeCUDAAtomic
        for op in ("add", "sub", "and_", "or_", "xor", "inc", "dec", "exch", "max", "min",
                   "nanmax", "nanmin", "compare_and_swap", "cas"):
            if op in Atomic.__dict__:
                self._patch(Atomic, op, _atomic_wrapper(Atomic.__dict__[op]))

        # barriers: count phases, note who arrived from which line
        Thread = sim_kernel.BlockThread
        orig_sync = Thread.__dict__["syncthreads"]

        def traced_sync(thread):
            launch = hooks.current
            phase = getattr(thread, "_simtrace_phase", 0)
            if launch is not None:
                key = (_dims(thread.blockIdx), phase)
                with hooks.rec._lock:
                    launch.barriers.setdefault(key, {})[_dims(thread.threadIdx)] = _kernel_line()
            orig_sync(thread)
            thread._simtrace_phase = phase + 1

        self._patch(Thread, "syncthreads", traced_sync)

        # launches: one LaunchTrace per kernel call (device functions are not launches)
        Kernel = sim_kernel.FakeCUDAKernel
        orig_call = Kernel.__dict__["__call__"]

        def traced_call(kern, *args):
            if kern._device or hooks.current is not None:
                return orig_call(kern, *args)
            from numba.cuda.args import ArgHint

            params = list(inspect.signature(kern.fn).parameters)
            launch = LaunchTrace(kern.fn.__name__, tuple(kern.grid_dim), tuple(kern.block_dim))
            launch._pending_names = [
                params[i] if i < len(params) else f"argument {i}" for i, a in enumerate(args)
                if (isinstance(a, np.ndarray) and a.ndim > 0) or isinstance(a, ArgHint)
                or isinstance(a, devicearray.FakeCUDAArray) or isinstance(a, np.void)]
            hooks.rec._start_launch(launch)
            hooks.current = launch
            try:
                return orig_call(kern, *args)
            finally:
                hooks.current = None

        self._patch(Kernel, "__call__", traced_call)

    def uninstall(self):
        for owner, name, original in reversed(self.saved):
            setattr(owner, name, original)
        self.saved.clear()


def _numba_types():
    from numba.core import types

    return types


def _numpy_support():
    from numba.np import numpy_support

    return numpy_support


def _shared_name(frame) -> str | None:
    """The variable name a kernel line assigns its shared array to (``cache = ...``)."""
    try:
        line = inspect.getframeinfo(frame).code_context[0]
    except (TypeError, IndexError, OSError):
        return None
    left = line.split("=", 1)[0].strip() if "=" in line else ""
    return left if left.isidentifier() else None


def _atomic_wrapper(original):
    def atomic(self, array, *args):
        t = threading.current_thread()
        t._simtrace_atomic = getattr(t, "_simtrace_atomic", 0) + 1
        try:
            return original(self, array, *args)
        finally:
            t._simtrace_atomic -= 1

    return atomic


class _SharedProxy:
    """A shared array as the kernel sees it while recording: NumPy's, with each element
    access noted. Anything else (shape, size, dtype, len) goes to the array itself."""

    __slots__ = ("_ary", "_hooks")

    def __init__(self, ary, hooks):
        self._ary = ary
        self._hooks = hooks

    def __getitem__(self, idx):
        value = self._ary[idx]
        self._note(idx, "read")
        return value

    def __setitem__(self, idx, value):
        self._ary[idx] = value
        self._note(idx, "write")

    def _note(self, idx, kind):
        hooks, t = self._hooks, _thread_state()
        launch = hooks.current
        if t is None or launch is None:
            return
        if kind == "read" and not _is_element_read(self._ary, idx):
            return
        table = launch.shared_reads if kind == "read" else launch.shared_writes
        block = _dims(t.blockIdx)
        for address in _addresses(self._ary, idx):
            hooks._access(table, (block, address), t)

    def __getattr__(self, name):
        return getattr(self._ary, name)

    def __len__(self):
        return len(self._ary)

    def __array__(self, dtype=None, copy=None):
        return self._ary if dtype is None else self._ary.astype(dtype)



@contextlib.contextmanager
def launches_in_open_recording():
    """Yields a list that holds, after the block, the :class:`LaunchTrace` of each launch made
    inside it, taken from the recording already open (a check's own rule on top of the
    engine's); stays empty when none is open (on a GPU, or with the recorder off)."""
    launches = []
    if not recording_active():
        yield launches
        return
    with record() as rec:   # joins the open recording
        start = len(rec.launches)
        yield launches
        launches.extend(rec.launches[start:])

@contextlib.contextmanager
def record():
    """Watch every simulated kernel launch inside the block; yields a :class:`Recording`.

    Under a real GPU this records nothing (``rec.enabled`` is False). One recording at a
    time: a nested ``record()`` joins the open one.
    """
    global _active
    if not runtime.SIMULATOR:
        yield Recording(enabled=False)
        return
    if _active is not None:
        yield _active
        return
    rec = Recording(enabled=True)
    hooks = _Hooks(rec)
    with _install_lock:
        hooks.install()
        _active = rec
    try:
        yield rec
    finally:
        with _install_lock:
            hooks.uninstall()
            _active = None
