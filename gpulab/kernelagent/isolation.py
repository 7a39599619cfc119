"""Keeping the verifier's child away from its parent, and ending everything it started.

A candidate runs in the worker process (:mod:`.worker`). Whatever it does there, three
things must hold, and none of them may rest on code that runs in the worker after the
candidate has been loaded (from then on that process is the candidate's):

1. **It cannot read the parent.** Linux lets a process read another's memory through
   ``/proc/<pid>/mem`` when it may ptrace it: same user and a *dumpable* target, or
   ``CAP_SYS_PTRACE``. So, when the verifier runs as root, the worker drops to a user id
   of its own (no capabilities left, ``PR_SET_NO_NEW_PRIVS``) after it has loaded torch,
   numba and the CUDA context and before it reads a candidate; otherwise the parent makes
   itself non-dumpable (``PR_SET_DUMPABLE 0``), which refuses the same user too.
2. **It cannot write what the parent reads.** The parent reads only the pipes it made and
   the shared memory areas whose contents it checks value by value; the candidate's
   module file is written by the parent, read-only to the worker; the roofline peaks are
   measured in the parent (:func:`gpulab.peaks.trusted_peaks`), never read from a file.
3. **Nothing it starts outlives the verdict.** The worker starts as a small *keeper*
   that forks the real worker as process 1 of a new PID namespace (Linux kills every
   process of a namespace when its process 1 ends) with ``PR_SET_PDEATHSIG`` (the worker
   dies with its keeper). Where namespaces are not allowed, the keeper is a
   *subreaper* (``PR_SET_CHILD_SUBREAPER``): orphans of the worker's tree are re-parented
   to it instead of to init, so the parent still finds them as the keeper's descendants.
   Either way the parent lists the tree from ``/proc`` itself after every candidate.

The parent side is :class:`Isolation` (what this machine allows, chosen once); the
worker side is :func:`enter_namespace` (in the keeper) and :func:`drop_privileges` (in
the worker, once it is warm). gpu-mode's ``pygpubench`` draws the same line between the
"untainted" parent and a child it cannot trust once user code has run.
"""
from __future__ import annotations

import ctypes
import os
import signal
import time
from dataclasses import dataclass

__all__ = ["Isolation", "detect", "enter_namespace", "drop_privileges", "descendants",
           "kill_tree", "processes_in_namespace", "namespace_of", "make_undumpable", "make_dumpable",
           "ISOLATED_UID_BASE"]

# prctl options (linux/prctl.h)
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
# clone flags (linux/sched.h)
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000

#: the worker's own user ids start here: high, so no real account has one; one per
#: verifier process (pid-based), so two verifiers never share a uid
ISOLATED_UID_BASE = 61000


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: int) -> None:
    if _libc().prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}, {arg}) failed: {os.strerror(err)}")


@dataclass(frozen=True)
class Isolation:
    """What the parent asks of its worker (decided once per process by :func:`detect`).

    ``uid``: the user id the worker drops to (``None``: it keeps the parent's, and the
    parent is non-dumpable instead). The keeper picks the namespace it may have:
    ``"pid"``, ``"user+pid"`` or ``"subreaper"``.
    """
    uid: int | None
    namespace: str = "auto"

    def env(self) -> dict:
        """The worker's environment variables that carry this choice."""
        return {} if self.uid is None else {"GPULAB_ISOLATION_UID": str(self.uid)}

    def describe(self, namespace: str | None = None) -> str:
        who = (f"worker as uid {self.uid} (no capabilities, no new privileges)" if self.uid is not None
               else "worker as the same user, parent non-dumpable")
        tree = {"pid": "its own PID namespace", "user+pid": "its own user and PID namespace",
                "subreaper": "a subreaper keeper (no namespaces allowed here)"}.get(
                    namespace or self.namespace, "a namespace or subreaper keeper")
        return f"{who}; {tree}"


_DETECTED: list[Isolation] = []


def detect() -> Isolation:
    """What to ask of the worker here: its own uid when we are root (remembered). Which
    namespace it gets, the keeper finds out by trying (see :func:`enter_namespace`)."""
    if not _DETECTED:
        uid = ISOLATED_UID_BASE + os.getpid() % 4000 if os.geteuid() == 0 else None
        _DETECTED.append(Isolation(uid, "auto"))
    return _DETECTED[0]


def make_undumpable() -> None:
    """This process (the parent) refuses ptrace and /proc/<pid>/mem to its own user too."""
    _prctl(PR_SET_DUMPABLE, 0)


def make_dumpable() -> None:
    """Undo :func:`make_undumpable` in a child that has nothing to hide (a fork inherits it)."""
    _prctl(PR_SET_DUMPABLE, 1)


# ---------------------------------------------------------------- worker side

def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _try_namespace(libc, allow_namespaces: bool = True) -> str:
    uid, gid = os.getuid(), os.getgid()
    if not allow_namespaces:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        return "subreaper"
    if libc.unshare(CLONE_NEWPID) == 0:
        return "pid"
    if uid != 0 and libc.unshare(CLONE_NEWUSER | CLONE_NEWPID) == 0:
        # map our own ids into the new user namespace (no others: we gain nothing)
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
        return "user+pid"
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    return "subreaper"


def enter_namespace(report_fd: int | None = None, allow_namespaces: bool = True) -> str:
    """In the keeper: make the next child process 1 of a new PID namespace (or, where
    that is not allowed or ``allow_namespaces`` is off, make the keeper a subreaper),
    fork it, and return the kind in the child. The keeper never returns: it reaps until
    the worker ends, writes the worker's exit status to ``report_fd`` (``{"exited":
    code}``), and exits."""
    namespace = _try_namespace(_libc(), allow_namespaces)
    keeper = os.getpid()
    child = os.fork()
    if child == 0:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if namespace == "subreaper" and os.getppid() != keeper:
            os._exit(1)               # the keeper died before the line above: follow it
        return namespace
    # the keeper: hold nothing the worker uses, reap everything re-parented to us
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    if report_fd is not None:
        os.dup2(report_fd, 3)
    os.closerange(4 if report_fd is not None else 3, 65536)
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(0)
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            if namespace == "subreaper":      # take the orphans with us
                kill_tree(os.getpid(), include_root=False)
            if report_fd is not None:
                try:
                    os.write(3, ('{"exited": %d}\n' % code).encode())
                except OSError:
                    pass
            os._exit(code if code >= 0 else 128 - code)


def drop_privileges(uid: int) -> None:
    """In the worker, once warm: become ``uid`` with no groups and no capabilities, and
    never regain them (no setuid binaries, no file capabilities)."""
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)            # from root to another uid: every capability is cleared
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    if os.getuid() != uid or os.geteuid() != uid:
        raise RuntimeError(f"dropping to uid {uid} failed")


# ---------------------------------------------------------------- parent side

def _ppid_map() -> dict[int, int]:
    parents = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name is in parentheses and may hold spaces: split after the last ')'
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] in "ZX":
            continue          # ended, waiting to be reaped: nothing left running
        parents[int(name)] = int(fields[1])
    return parents


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (from /proc, read by the caller)."""
    parents = _ppid_map()
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def namespace_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def processes_in_namespace(namespace_id: str) -> list[int]:
    """Every process whose PID namespace is ``namespace_id`` (``pid:[inode]``)."""
    running = _ppid_map()
    return [pid for pid in running if namespace_of(pid) == namespace_id]


def kill_tree(root: int, include_root: bool = True, rounds: int = 20) -> None:
    """SIGKILL every descendant of ``root`` (and ``root``), again until none is left:
    a process that forks while we kill is found on the next round."""
    for _ in range(rounds):
        pids = descendants(root)
        if include_root and os.path.exists(f"/proc/{root}"):
            pids.append(root)
        alive = []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                alive.append(pid)
            except (ProcessLookupError, PermissionError):
                pass
        if not alive:
            return
        time.sleep(0.01)
