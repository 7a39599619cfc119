"""See what a kernel did: a memory-access tracer for kernels run on numba's CUDA simulator.

The simulator runs every CUDA thread of a kernel as a Python thread, so Python can watch
each one. Inside a ``trace()`` block every read and write of an argument array or a shared
array is recorded (which thread of which block, which element, the value, the thread's
step and barrier phase, whether it was part of an atomic, the kernel line):

    import gpulab
    with gpulab.trace() as t:                 # gpulab.trace is simtrace.trace
        kernel[grid, block](x, out)
    t.accesses()[:3]          # rows: space, kind, array, index, block, thread, phase, step, ...
    for finding in t.findings():              # what is wrong, one sentence each
        print(finding)
    # threads (3,0,0) and (35,0,0) of block (0,0,0) both wrote out[3] without an atomic

The analyses, each a list of :class:`Finding` (``str(finding)`` is the sentence):

* :meth:`Recording.out_of_bounds`: an index past the end of an array (the simulator raises
  IndexError, a GPU reads or writes whatever lies there), or a negative one (numba, like
  NumPy, counts it from the end: an ``i - 1`` at ``i = 0`` reads the last element);
* :meth:`Recording.races`: two threads wrote one element of a global array in one launch,
  at least one write not atomic (with ``reads=True`` also a plain read of an element another
  thread wrote); two threads of one block ordered by a barrier do not race;
* :meth:`Recording.divergent_barriers`: a ``cuda.syncthreads()`` only some threads of a
  block reached (a barrier inside a branch, threads that returned early);
* :meth:`Recording.unsynced_shared_reads`: in shared memory, a thread read (or wrote) an
  element another thread wrote in the same barrier phase: a missing ``cuda.syncthreads()``;
* :meth:`Recording.never_written`: elements of an output no thread wrote.

:meth:`Recording.findings` is the first four, what the checks engine rejects. Two more look
at performance, per *warp access* (the same access by the 32 threads of a warp: same line,
same array, the n-th time each thread made it, in one barrier phase):

* :meth:`Recording.bank_conflicts`: shared memory has 32 banks of 4 bytes; threads of a
  warp that hit different words of one bank are served one after the other;
* :meth:`Recording.coalescing`: the 32-byte sectors a warp's global access falls into,
  against the fewest its bytes could fill (:meth:`Recording.uncoalesced` keeps the bad ones).

Pictures of a trace are in :mod:`gpulab.traceviz`.

Where the simulator's picture is not a GPU's: it has no warps (threads are Python threads
that take turns, one block at a time, so "warp accesses" are reconstructed from program order,
and a race shows up as two writers, not as a wrong value); there is no timing (a trace says
how many sectors and bank wavefronts an access needs, not how long it takes); shared arrays
are separate NumPy arrays, so banks are counted from each array's first element; addresses
are host addresses of the same tensors (torch aligns CPU storage to 64 bytes, which keeps
32-byte sectors where the GPU's are); an out-of-bounds access stops the simulated kernel
with an IndexError, where a GPU reads or writes neighbouring memory.

Cost: nothing when not tracing (the simulator is patched only inside ``trace()``); while
tracing, some microseconds per array access, measured in
``benchmarks/results/simulator/simtrace_overhead.md``. Results do not change: every patched
method calls numba's own. On a real GPU kernels run as machine
code that Python cannot watch: there ``trace()`` records nothing, ``Recording.enabled`` is
False and every analysis returns ``[]``. This module knows no chapter.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import runtime

__all__ = ["trace", "record", "Recording", "LaunchTrace", "Access", "AccessRow", "Finding", "WarpAccess",
           "recording_active", "launches_in_open_recording", "WARP_SIZE", "BANKS", "BANK_BYTES",
           "SECTOR_BYTES"]

#: threads per warp, shared-memory banks and their width, global-memory sector size (bytes),
#: as on every NVIDIA GPU since Maxwell (CUDA C++ Programming Guide, compute capabilities)
WARP_SIZE = 32
BANKS = 32
BANK_BYTES = 4
SECTOR_BYTES = 32

_active: "Recording | None" = None
_install_lock = threading.Lock()


def recording_active() -> bool:
    """True while a :func:`trace` block is open (and the simulator is being watched)."""
    return _active is not None


def _dims(d) -> tuple[int, int, int]:
    return (int(d.x), int(d.y), int(d.z))


def _fmt(t: tuple) -> str:
    return "(" + ",".join(str(v) for v in t) + ")"


def _linear(index: tuple, dims: tuple) -> int:
    """x fastest, as CUDA numbers the threads of a block (and the warps they form)."""
    return index[0] + dims[0] * (index[1] + dims[1] * index[2])


# ------------------------------------------------------------------ records

class Access(NamedTuple):  # a tuple: cheap to make once per element access
    block: tuple
    thread: tuple
    phase: int           # barriers the thread had passed
    atomic: bool
    step: int = -1       # the thread's n-th recorded access: its program order
    line: int = -1       # the kernel's (or device function's) source line
    value: object = None  # the value read or written (None for a slice)


class AccessRow(NamedTuple):
    """One recorded access, as :meth:`Recording.accesses` lists them."""
    launch: int
    space: str           # "global" (an argument array) or "shared"
    kind: str            # "read" or "write"
    array: str
    index: tuple | None
    block: tuple
    thread: tuple
    phase: int
    step: int
    line: int
    atomic: bool
    value: object


class _OutOfBounds(NamedTuple):
    block: tuple
    thread: tuple
    kind: str            # "read" or "write"
    array: str
    index: tuple
    shape: tuple
    line: int
    shared: bool


@dataclass
class Finding:
    """One problem found in a launch; ``str(finding)`` is the sentence for a learner."""
    kind: str            # "out of bounds", "race", "divergent barrier", "unsynced shared read",
    kernel: str          # "never written"
    array: str
    index: tuple | None
    block: tuple | None
    threads: tuple
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass
class WarpAccess:
    """One access made by the threads of one warp together (see the module docstring)."""
    kernel: str
    space: str           # "global" or "shared"
    kind: str            # "read" or "write"
    array: str
    line: int
    block: tuple
    warp: int
    phase: int
    threads: list        # the threads of the warp that took part, in lane order
    indices: list        # the element each of them accessed
    cost: int            # global: 32-byte sectors; shared: bank wavefronts (serialised passes)
    ideal: int           # the fewest the same bytes could take
    lanes_per_bank: dict = field(default_factory=dict)  # shared: bank -> lanes hitting other words

    @property
    def ok(self) -> bool:
        return self.cost <= self.ideal

    def __str__(self) -> str:
        who = f"warp {self.warp} of block {_fmt(self.block)}, line {self.line}"
        first = ", ".join(_element(self.array, i) for i in self.indices[:4])
        more = ", ..." if len(self.indices) > 4 else ""
        if self.space == "shared" and self.ok:
            return (f"{self.kernel}: {who}: {len(self.threads)} threads {self.kind} {first}{more} "
                    f"(shared): no bank conflict, {self.cost} wavefront{'s' if self.cost > 1 else ''}")
        if self.space == "shared":
            worst = max(self.lanes_per_bank.items(), key=lambda kv: len(kv[1]), default=(0, []))
            return (f"{self.kernel}: {who}: {len(self.threads)} threads {self.kind} {first}{more} "
                    f"(shared): a {self.cost}-way bank conflict, {self.cost} wavefronts instead of "
                    f"{self.ideal} (bank {worst[0]} holds {len(worst[1])} different words they need)")
        verdict = "coalesced" if self.ok else f"uncoalesced: {self.ideal} would hold these bytes"
        return (f"{self.kernel}: {who}: {len(self.threads)} threads {self.kind} {first}{more}: "
                f"{self.cost} sectors of 32 bytes, {verdict}")


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

    def addresses(self) -> np.ndarray:
        """Every element's byte address, shaped like the array."""
        grids = np.indices(self.shape, dtype=np.int64) if self.shape else np.zeros((0,), np.int64)
        return self.base + sum((g * s for g, s in zip(grids, self.strides)), np.zeros(self.shape, np.int64))


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
    shared: dict = field(default_factory=dict)         # (block, base address) -> _Array
    writes: dict = field(default_factory=dict)         # address -> [Access]
    reads: dict = field(default_factory=dict)          # address -> [Access]
    shared_writes: dict = field(default_factory=dict)  # (block, address) -> [Access]
    shared_reads: dict = field(default_factory=dict)   # (block, address) -> [Access]
    barriers: dict = field(default_factory=dict)       # (block, phase) -> {thread: line}
    out_of_bounds: list = field(default_factory=list)  # _OutOfBounds
    _names: dict = field(default_factory=dict, repr=False)  # (shared?, address) -> (name, index)

    def _candidates(self, shared_array: bool, block) -> list:
        """Argument arrays, or the shared arrays of ``block`` (of every block if None): each
        block allocates its own, and a later block may get memory an earlier one freed."""
        if not shared_array:
            return self.arrays
        return [a for (b, _), a in self.shared.items() if block is None or b == block]

    def name_of(self, address: int, shared_array=False, block=None) -> tuple[str, tuple | None]:
        key = (shared_array, block, address)
        known = self._names.get(key)
        if known is None:
            known = ("an array", None)
            for arr in self._candidates(shared_array, block):
                index = arr.index_of(address)
                if index is not None:
                    known = (arr.name, index)
                    break
            self._names[key] = known
        return known

    def array_at(self, address: int, shared_array=False, block=None) -> _Array | None:
        """The array holding ``address`` (of ``block``'s shared arrays with ``shared_array``)."""
        for arr in self._candidates(shared_array, block):
            if arr.index_of(address) is not None:
                return arr
        return None

    def array(self, name: str) -> _Array:
        """The argument (or shared) array called ``name`` in the kernel's source."""
        for arr in [*self.arrays, *self.shared.values()]:
            if arr.name == name:
                return arr
        names = [a.name for a in [*self.arrays, *self.shared.values()]]
        raise KeyError(f"{self.kernel} has no array named {name!r}; its arrays: {names}")

    def array_of(self, ary: np.ndarray, shared_array=False, block=None) -> str:
        """The name of the launch's array that ``ary`` (an argument or a view of one) lies in."""
        address = ary.__array_interface__["data"][0]
        candidates = self._candidates(shared_array, block)
        for arr in candidates:
            if arr.base == address and arr.shape == ary.shape:
                return arr.name
        for arr in candidates:
            if arr.nbytes_span[0] <= address < max(arr.nbytes_span[1], arr.nbytes_span[0] + 1):
                return arr.name
        return "an array"

    @property
    def threads_per_block(self) -> int:
        return int(np.prod(self.block))


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
    """The launches seen inside one :func:`trace` block, and the analyses over them."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.launches: list[LaunchTrace] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        if not self.enabled:
            return "<Recording: nothing recorded (kernels ran on a GPU, where Python cannot watch them)>"
        kernels = ", ".join(f"{l.kernel}[{_fmt(l.grid)}, {_fmt(l.block)}]" for l in self.launches)
        return f"<Recording of {len(self.launches)} launch(es): {kernels}>"

    # -- the accesses, as rows
    def accesses(self, launch: int | None = None) -> list[AccessRow]:
        """Every recorded access as an :class:`AccessRow`, in each thread's program order
        (block, thread, step); ``launch`` picks one launch by its position."""
        rows = []
        picked = range(len(self.launches)) if launch is None else [launch]
        for n in picked:
            trace = self.launches[n]
            tables = [("global", "read", trace.reads, False), ("global", "write", trace.writes, False),
                      ("shared", "read", trace.shared_reads, True), ("shared", "write", trace.shared_writes, True)]
            for space, kind, table, shared in tables:
                for key, accesses in table.items():
                    address = key[1] if shared else key
                    name, index = trace.name_of(address, shared_array=shared, block=key[0] if shared else None)
                    for a in accesses:
                        rows.append(AccessRow(n, space, kind, name, index, a.block, a.thread, a.phase,
                                              a.step, a.line, a.atomic, a.value))
        rows.sort(key=lambda r: (r.launch, r.block[::-1], r.thread[::-1], r.step))
        return rows

    def summary(self) -> str:
        """A few lines per launch: its arrays, how many reads and writes, what was found."""
        if not self.enabled:
            return "nothing recorded: on a GPU kernels run as machine code that Python cannot watch"
        lines = []
        for n, trace in enumerate(self.launches):
            lines.append(f"launch {n}: {trace.kernel}, grid {_fmt(trace.grid)}, blocks of {_fmt(trace.block)}")
            counts: dict = {}
            for row in self.accesses(n):
                c = counts.setdefault((row.space, row.array), [0, 0, 0])
                c[0 if row.kind == "read" else 1] += 1
                c[2] += row.atomic
            for (space, name), (reads, writes, atomic) in counts.items():
                extra = f", {atomic} atomic" if atomic else ""
                lines.append(f"  {name} ({space}): {reads} reads, {writes} writes{extra}")
        problems = self.findings() + self.never_written()
        lines += [f"  {p}" for p in problems] or ["  no race, no missing barrier, no out-of-bounds access"]
        return "\n".join(lines)

    # -- analyses
    def out_of_bounds(self, limit: int = 5) -> list[Finding]:
        """Indexes past the end of an array, and negative ones (see the module docstring)."""
        found = []
        for trace in self.launches:
            for o in trace.out_of_bounds:
                space = " (shared)" if o.shared else ""
                verb = "read" if o.kind == "read" else "wrote"
                where = f"thread {_fmt(o.thread)} of block {_fmt(o.block)}"
                if any(i < 0 for i in o.index):
                    wrapped = tuple(i % n if n else i for i, n in zip(o.index, o.shape))
                    message = (f"{trace.kernel}: {where} {verb} {_element(o.array, o.index)}{space} at line "
                               f"{o.line}: a negative index, out of bounds; numba (like NumPy) counts it "
                               f"from the end, so it {verb} {_element(o.array, wrapped)} (an i - 1 at i = 0?)")
                else:
                    message = (f"{trace.kernel}: {where} {verb} {_element(o.array, o.index)}{space} at line "
                               f"{o.line}, out of bounds: past the end of {o.array} (shape "
                               f"{_fmt(o.shape) if len(o.shape) > 1 else o.shape[0]}); guard the access "
                               "with a bounds check")
                found.append(Finding("out of bounds", trace.kernel, o.array, o.index, o.block, (o.thread,),
                                     message))
                if len(found) >= limit:
                    return found
        return found

    def races(self, reads: bool = True, limit: int = 5) -> list[Finding]:
        """Global-memory conflicts between threads (see the module docstring). Kernels that
        order blocks on purpose (``threadfence`` plus an atomic counter) are reported too:
        pass ``reads=False`` for them."""
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
            if any(min(o.index) >= 0 for o in launch.out_of_bounds):
                continue  # its IndexError aborted the block's other threads wherever they were
            n_threads = launch.threads_per_block
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
                name, index = launch.name_of(address, shared_array=True, block=block)
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
        """What the checks engine rejects: out-of-bounds accesses, barriers not every thread
        reached, unsynced shared reads and races, in that order (each explains the next)."""
        return self.out_of_bounds() + self.divergent_barriers() + self.unsynced_shared_reads() + self.races()

    def never_written(self, array: str | None = None) -> list[Finding]:
        """Elements no thread wrote: of ``array`` (its name in the kernel), or by default of
        every argument array some thread wrote (an output the kernel forgot part of)."""
        found = []
        for launch in self.launches:
            written = np.fromiter(launch.writes.keys(), dtype=np.int64, count=len(launch.writes))
            for arr in launch.arrays:
                if (array is not None and arr.name != array) or not math.prod(arr.shape):
                    continue
                addresses = arr.addresses()
                missing = ~np.isin(addresses, written)
                if array is None and missing.all():
                    continue  # an input: nothing was meant to be written
                if not missing.any():
                    continue
                first = tuple(int(i) for i in np.argwhere(missing)[0])
                message = (f"{launch.kernel}: {int(missing.sum())} of {missing.size} elements of {arr.name} "
                           f"were never written, the first {_element(arr.name, first)}: did the grid "
                           "cover the whole output?")
                found.append(Finding("never written", launch.kernel, arr.name, first, None, (), message))
        return found

    def warp_accesses(self, space: str | None = None) -> list[WarpAccess]:
        """Every access grouped into warp accesses, with its cost (sectors or wavefronts)."""
        groups = []
        for launch in self.launches:
            groups += _warp_accesses(launch, space)
        return groups

    def coalescing(self) -> list[WarpAccess]:
        """Each global warp access: ``cost`` sectors of 32 bytes against ``ideal``."""
        return self.warp_accesses("global")

    def uncoalesced(self) -> list[WarpAccess]:
        """The global warp accesses that need more sectors than their bytes would fill."""
        return [w for w in self.coalescing() if not w.ok]

    def bank_conflicts(self) -> list[WarpAccess]:
        """The shared-memory warp accesses that need more wavefronts than their words do."""
        return [w for w in self.warp_accesses("shared") if not w.ok]

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


# ------------------------------------------------------------------ warp accesses

def _warp_accesses(launch: LaunchTrace, space: str | None) -> list[WarpAccess]:
    """Group a launch's accesses into warp accesses. The simulator has no warps; a GPU
    issues an instruction for the 32 threads of a warp at once, so the n-th access a thread
    makes at a line (to an array, in a barrier phase) is taken to be the same instruction
    as the n-th access each other thread of its warp makes there."""
    tables = []
    if space in (None, "global"):
        tables += [("global", "read", launch.reads, False), ("global", "write", launch.writes, False)]
    if space in (None, "shared"):
        tables += [("shared", "read", launch.shared_reads, True), ("shared", "write", launch.shared_writes, True)]
    rows = []
    for sp, kind, table, shared in tables:
        for key, accesses in table.items():
            address = key[1] if shared else key
            for a in accesses:
                if kind == "read" and a.atomic:
                    continue  # an atomic's read and write are one operation: count its write
                rows.append((a.block[::-1], a.thread[::-1], a.step, sp, kind, address, a))
    rows.sort(key=lambda r: r[:3])
    seen: dict = {}
    groups: dict = {}
    for _, _, _, sp, kind, address, a in rows:
        name, index = launch.name_of(address, shared_array=(sp == "shared"), block=a.block)
        site = (a.block, a.thread, sp, kind, a.line, name, a.phase)
        occurrence = seen[site] = seen.get(site, -1) + 1
        warp = _linear(a.thread, launch.block) // WARP_SIZE
        key = (a.block, warp, a.phase, sp, kind, a.line, name, occurrence)
        groups.setdefault(key, []).append((a.thread, index, address))
    result = []
    for (block, warp, phase, sp, kind, line, name, _), members in groups.items():
        arr = launch.array_at(members[0][2], sp == "shared", block)
        itemsize = arr.itemsize if arr is not None else 4
        members.sort(key=lambda m: _linear(m[0], launch.block))
        threads = [m[0] for m in members]
        indices = [m[1] for m in members]
        addresses = [m[2] for m in members]
        if sp == "shared":
            cost, ideal, banks = _bank_cost(addresses, arr.nbytes_span[0] if arr else 0, itemsize,
                                            [_linear(t, launch.block) % WARP_SIZE for t in threads])
        else:
            cost, ideal, banks = (*_sector_cost(addresses, itemsize), {})
        result.append(WarpAccess(launch.kernel, sp, kind, name, line, block, warp, phase, threads, indices,
                                 cost, ideal, banks))
    result.sort(key=lambda w: (w.block[::-1], w.warp, w.phase, w.line, w.space, w.kind))
    return result


def _sector_cost(addresses, itemsize) -> tuple[int, int]:
    """(32-byte sectors the accessed bytes fall into, the fewest that could hold them)."""
    sectors = set()
    for a in set(addresses):
        sectors.update(range(a // SECTOR_BYTES, (a + itemsize - 1) // SECTOR_BYTES + 1))
    ideal = math.ceil(len(set(addresses)) * itemsize / SECTOR_BYTES)
    return len(sectors), max(1, ideal)


def _bank_cost(addresses, array_start, itemsize, lanes) -> tuple[int, int, dict]:
    """(wavefronts, the fewest the words need, bank -> lanes) for one shared warp access.
    Threads reading one word share it (a broadcast); different words of one bank take one
    wavefront each. Banks are counted from the array's first element (see module doc)."""
    words_of_bank: dict = {}
    lanes_of_bank: dict = {}
    for address, lane in zip(addresses, lanes):
        first = (address - array_start) // BANK_BYTES
        for word in range(first, first + max(1, itemsize // BANK_BYTES)):
            bank = word % BANKS
            words_of_bank.setdefault(bank, set()).add(word)
            lanes_of_bank.setdefault(bank, set()).add(lane)
    words = sum(len(w) for w in words_of_bank.values())
    cost = max((len(w) for w in words_of_bank.values()), default=1)
    conflicted = {b: sorted(lanes_of_bank[b]) for b, w in words_of_bank.items() if len(w) > 1}
    return cost, max(1, math.ceil(words / BANKS)), conflicted


# ------------------------------------------------------------------ the hooks

def _kernel_line(skip: tuple) -> int:
    """The line of the kernel (or device function) that called into the simulator: the
    first frame up the stack whose file is not this module's or the simulator's."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if not name.startswith(skip):
            return frame.f_lineno
        frame = frame.f_back
    return -1


def _thread_state():
    """The simulated thread running now (it carries blockIdx and threadIdx), or None."""
    t = threading.current_thread()
    if getattr(t, "blockIdx", None) is None:
        return None
    return t


def _element_index(ary: np.ndarray, idx) -> tuple | None:
    """``idx`` as a tuple of ints when it names one element of ``ary``, else None."""
    if not isinstance(idx, tuple):
        idx = (idx,)
    if len(idx) == ary.ndim and all(isinstance(i, (int, np.integer)) for i in idx):
        return tuple(int(i) for i in idx)
    return None


def _element_address(ary: np.ndarray, index: tuple) -> int:
    address = ary.__array_interface__["data"][0]
    for d, i in enumerate(index):
        address += (i + ary.shape[d] if i < 0 else i) * ary.strides[d]
    return address


def _slice_addresses(ary: np.ndarray, idx) -> tuple:
    """Byte addresses of the elements a slice ``ary[idx]`` names."""
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


class _Hooks:
    """Installs the patches on numba's simulator classes and removes them again."""

    def __init__(self, rec: Recording):
        self.rec = rec
        self.saved = []
        self.current: LaunchTrace | None = None
        self.skip = (__file__,)

    # -- helpers
    def note(self, table, key, t, value, atomic_extra=False):
        ids = t.__dict__.get("_simtrace_ids")
        if ids is None:  # the thread's (block, thread) indices, made once per thread
            ids = t._simtrace_ids = (_dims(t.blockIdx), _dims(t.threadIdx))
        step = t.__dict__.get("_simtrace_step", 0)
        t._simtrace_step = step + 1
        access = Access(ids[0], ids[1], t.__dict__.get("_simtrace_phase", 0),
                        t.__dict__.get("_simtrace_atomic", 0) > 0 or atomic_extra, step,
                        _kernel_line(self.skip), value)
        # no lock: under the GIL setdefault and append are each atomic
        table.setdefault(key, []).append(access)

    def note_out_of_bounds(self, t, ary, index, kind, shared):
        launch = self.current
        if launch is None or index is None:
            return
        block = _dims(t.blockIdx)
        name = launch.array_of(ary, shared_array=shared, block=block)
        launch.out_of_bounds.append(_OutOfBounds(block, _dims(t.threadIdx), kind, name, index,
                                                 tuple(ary.shape), _kernel_line(self.skip), shared))

    def element(self, t, ary, idx, kind, shared):
        """The element ``idx`` names, noting a negative or too large index; None for a slice."""
        index = _element_index(ary, idx)
        if index is not None and any(i < 0 or i >= n for i, n in zip(index, ary.shape)):
            self.note_out_of_bounds(t, ary, index, kind, shared)
        return index

    def _patch(self, owner, name, new):
        self.saved.append((owner, name, owner.__dict__[name]))
        setattr(owner, name, new)

    def install(self):
        from numba.cuda.simulator import kernel as sim_kernel
        from numba.cuda.simulator import kernelapi
        from numba.cuda.simulator.cudadrv import devicearray

        self.skip = (__file__, str(Path(sim_kernel.__file__).parent))
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
            t = _thread_state()
            launch = hooks.current
            if t is None or launch is None:
                return orig_get(wrapper, idx)
            ary = wrapper._item._ary
            index = hooks.element(t, ary, idx, "read", False)
            value = orig_get(wrapper, idx)  # an index past the end raises IndexError here
            if index is not None:
                hooks.note(launch.reads, _element_address(ary, index), t, value)
            return value

        def traced_set(wrapper, idx, value):
            t = _thread_state()
            launch = hooks.current
            if t is None or launch is None:
                return orig_set(wrapper, idx, value)
            ary = wrapper._item._ary
            index = hooks.element(t, ary, idx, "write", False)
            orig_set(wrapper, idx, value)
            if index is not None:
                hooks.note(launch.writes, _element_address(ary, index), t, value)
            else:
                for address in _slice_addresses(ary, idx):
                    hooks.note(launch.writes, address, t, None)

        self._patch(Wrapped, "__init__", traced_init)
        self._patch(Wrapped, "__getitem__", traced_get)
        self._patch(Wrapped, "__setitem__", traced_set)

        # shared arrays are plain NumPy arrays: hand the kernel a watching proxy instead
        Shared = kernelapi.FakeCUDAShared
        orig_shared_array = Shared.__dict__["array"]

        def traced_shared_array(shared, shape, dtype, alignment=None):
            if shape == 0:  # dynamic shared memory: no line-based identity needed
                ary = orig_shared_array(shared, shape, dtype)
            else:
                # numba keys static allocations by the calling line; keep that key (the
                # caller is the kernel, one frame up from here)
                caller = sys._getframe(1)
                key = (caller.f_code.co_filename, caller.f_lineno)
                ary = shared._allocations.get(key)
                if ary is None:
                    if isinstance(dtype, _numba_types().Type):
                        dtype = _numpy_support().as_dtype(dtype)
                    # setdefault: two threads that both found none get the same array
                    # (gpulab.runtime says why a look-up then a store is not enough)
                    ary = shared._allocations.setdefault(key, np.empty(shape, dtype))
            launch = hooks.current
            if launch is not None:
                base = ary.__array_interface__["data"][0]
                key = (_dims(threading.current_thread().blockIdx), base)
                if key not in launch.shared:
                    name = _shared_name(sys._getframe(1)) or f"shared array {len(launch.shared)}"
                    with hooks.rec._lock:
                        launch.shared.setdefault(key, _describe_array(name, ary))
            return _SharedProxy(ary, hooks)

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
                    launch.barriers.setdefault(key, {})[_dims(thread.threadIdx)] = _kernel_line(hooks.skip)
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
        index = self._check(idx, "read")
        value = self._ary[idx]
        self._note(idx, index, "read", value)
        return value

    def __setitem__(self, idx, value):
        index = self._check(idx, "write")
        self._ary[idx] = value
        self._note(idx, index, "write", value)

    def _check(self, idx, kind):
        t = _thread_state()
        if t is None or self._hooks.current is None:
            return None
        return self._hooks.element(t, self._ary, idx, kind, True)

    def _note(self, idx, index, kind, value):
        hooks, t = self._hooks, _thread_state()
        launch = hooks.current
        if t is None or launch is None:
            return
        if index is None and kind == "read":
            return  # a slice read is a view: its elements are noted when they are accessed
        table = launch.shared_reads if kind == "read" else launch.shared_writes
        block = _dims(t.blockIdx)
        if index is not None:
            hooks.note(table, (block, _element_address(self._ary, index)), t, value)
        else:
            for address in _slice_addresses(self._ary, idx):
                hooks.note(table, (block, address), t, None)

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


#: the learner's name for the same switch: ``with gpulab.trace() as t: kernel[grid, block](...)``
trace = record
