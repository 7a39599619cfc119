"""Start N training processes on this machine and run functions in all of them.

    from gpulab.dist.launch import Workers
    with Workers(4) as world:                  # 4 processes on 127.0.0.1: gloo on CPU
        losses = world.run(ddp.by_hand_step, config)   # one result per rank, rank 0 first

The same code runs on a laptop (N CPU processes over gloo) and on a machine with N GPUs
(NCCL, one GPU per process). Spawning a process and importing torch costs seconds, so a
``Workers`` pool starts its processes once and runs many functions in them: a notebook or
a test session keeps one pool. A function sent to the workers must be importable by name
(a module-level function of a package), because each worker imports it afresh.

What the launcher takes care of:

* a free TCP port on 127.0.0.1 for the rendezvous (``MASTER_ADDR``/``MASTER_PORT``);
* the backend: ``"gloo"`` on CPU; ``"nccl"`` with one GPU per process when CUDA has at
  least N GPUs (``backend="auto"``);
* in CPU mode, GPUs hidden from the workers (``CUDA_VISIBLE_DEVICES=""``, and
  ``GPULAB_MODE=sim`` so gpulab does not ask for the GPU it cannot see): ``fully_shard``
  under a gloo group otherwise moves its modules to the default CUDA device;
* ``NCCL_NVLS_ENABLE=0`` and ``TORCH_SYMM_MEM_DISABLE_MULTICAST=1``: NVLink multicast
  (NVLS) is off, as the machines this course runs on require;
* timeouts: the process group's own (a hung collective raises in the worker) and the
  pool's (a run that does not answer in time raises ``TimeoutError`` naming the silent
  ranks, and the pool is torn down so the next run starts fresh).
"""
from __future__ import annotations

import contextlib
import datetime
import importlib
import multiprocessing as mp
import os
import socket
import traceback
from typing import Any, Callable

__all__ = ["Workers", "RankError", "free_port", "pick_backend", "rank_env", "init_rank",
           "world", "SAFE_ENV", "CPU_WORKER_ENV"]

#: environment every worker gets: NVLink multicast off (NVLS in NCCL, multicast in
#: torch's symmetric memory), which the course's machines do not allow
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}


class RankError(RuntimeError):
    """A function raised in a worker; the message holds the rank and its traceback."""


#: what a CPU (gloo) worker sees from its first import on: no GPU, and gpulab's kernels on the
#: simulator (a parent in GPU mode would otherwise make gpulab insist on a GPU it cannot see)
CPU_WORKER_ENV = {"CUDA_VISIBLE_DEVICES": "", "GPULAB_MODE": "sim"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick_backend(world_size: int, backend: str = "auto") -> str:
    """``"nccl"`` when CUDA has at least ``world_size`` GPUs (one per process), else ``"gloo"``."""
    if backend not in ("auto", "gloo", "nccl"):
        raise ValueError(f"backend must be 'auto', 'gloo' or 'nccl', got {backend!r}")
    if backend != "auto":
        return backend
    import torch

    return "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world_size else "gloo"


def rank_env(rank: int, world_size: int, port: int, backend: str) -> dict[str, str]:
    """The environment of one worker: rendezvous, rank, NVLink multicast off, and in CPU
    (gloo) mode no visible GPU."""
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
           "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank), **SAFE_ENV}
    if backend == "gloo":
        env.update(CPU_WORKER_ENV)
    return env


def init_rank(backend: str, timeout_s: float):
    """Join the process group (environment already set) and return this rank's device."""
    import torch
    import torch.distributed as dist

    if backend == "nccl":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                            **({"device_id": device} if backend == "nccl" else {}))
    return device


_WORLD: dict[str, Any] = {}


def world() -> dict[str, Any]:
    """Inside a worker: ``{"rank", "world_size", "backend", "device"}`` of this process."""
    if not _WORLD:
        raise RuntimeError("gpulab.dist.launch.world() is only defined inside a Workers process")
    return dict(_WORLD)


def _worker_main(rank: int, world_size: int, port: int, backend: str, timeout_s: float, inbox, outbox):
    os.environ.update(rank_env(rank, world_size, port, backend))
    try:
        device = init_rank(backend, timeout_s)
        _WORLD.update(rank=rank, world_size=world_size, backend=backend, device=device)
        outbox.put((rank, "ready", None))
    except Exception:  # noqa: BLE001 (reported to the parent, which raises)
        outbox.put((rank, "error", traceback.format_exc()))
        return
    import torch.distributed as dist

    while True:
        job = inbox.get()
        if job is None:
            break
        module, name, args, kwargs = job
        try:
            fn = getattr(importlib.import_module(module), name)
            outbox.put((rank, "ok", fn(*args, **kwargs)))
        except Exception:  # noqa: BLE001
            outbox.put((rank, "error", traceback.format_exc()))
    with contextlib.suppress(Exception):
        dist.destroy_process_group()


class Workers:
    """A pool of ``world_size`` processes in one process group, started on first use.

    ``run(fn, *args)`` calls ``fn(*args)`` in every rank and returns the results in rank
    order; ``fn`` must be a module-level function (it is sent by name). ``timeout_s`` bounds
    each run and each collective; the pool restarts itself after a timeout, or after an
    error that left other ranks stuck.
    """

    def __init__(self, world_size: int, backend: str = "auto", timeout_s: float = 60.0):
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be a positive int, got {world_size!r}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.world_size, self.timeout_s = world_size, float(timeout_s)
        self.backend = pick_backend(world_size, backend)
        self._procs: list = []

    # ---------------------------------------------------------------- life cycle

    def start(self) -> "Workers":
        if self._procs:
            return self
        ctx = mp.get_context("spawn")   # never fork a process that may hold CUDA or threads
        port = free_port()
        self._inboxes = [ctx.Queue() for _ in range(self.world_size)]
        self._outbox = ctx.Queue()
        saved = {k: os.environ.get(k) for k in CPU_WORKER_ENV}
        try:
            if self.backend == "gloo":   # the child must not see GPUs from its first import on
                os.environ.update(CPU_WORKER_ENV)
            self._procs = [ctx.Process(target=_worker_main, daemon=True, name=f"gpulab-rank{r}",
                                       args=(r, self.world_size, port, self.backend, self.timeout_s,
                                             self._inboxes[r], self._outbox))
                           for r in range(self.world_size)]
            for p in self._procs:
                p.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self._collect("start the process group", None, timeout_s=self.timeout_s + 60)
        return self

    def close(self) -> None:
        """Stop the workers (politely, then by force)."""
        procs, self._procs = self._procs, []
        for box in getattr(self, "_inboxes", [])[:len(procs)]:
            with contextlib.suppress(Exception):
                box.put(None)
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)

    def __enter__(self) -> "Workers":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- running

    def run(self, fn: Callable, *args, timeout_s: float | None = None, **kwargs) -> list:
        """``[fn(*args, **kwargs) on rank 0, on rank 1, ...]``."""
        module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
        if not module or module == "__main__" or "<" in name or "." in name:
            raise TypeError(f"Workers.run needs a module-level function of an importable module, got "
                            f"{module}.{name}: a function defined in a notebook or inside another "
                            "function cannot be sent to the worker processes")
        self.start()
        for box in self._inboxes:
            box.put((module, name, args, kwargs))
        return self._collect(f"{module}.{name}", name, timeout_s or self.timeout_s)

    def _collect(self, what: str, name, timeout_s: float) -> list:
        import queue

        results: dict[int, Any] = {}
        errors: dict[int, str] = {}
        deadline = timeout_s
        import time

        start = time.monotonic()
        while len(results) + len(errors) < self.world_size:
            try:
                rank, status, value = self._outbox.get(timeout=1.0)
            except queue.Empty:
                dead = [(r, p.exitcode) for r, p in enumerate(self._procs) if not p.is_alive()]
                if dead and not errors:
                    self.close()
                    raise RankError(f"{what}: worker processes died: " + ", ".join(
                        f"rank {r} (exit code {code})" for r, code in dead) + ". A script that starts "
                        "Workers must do so under `if __name__ == '__main__':` (each worker imports the "
                        "main module again)") from None
                if time.monotonic() - start < deadline:
                    continue
                silent = sorted(set(range(self.world_size)) - set(results) - set(errors))
                self.close()
                if errors:   # the silent ranks wait for the one that failed
                    break
                raise TimeoutError(f"{what}: ranks {silent} did not answer within {timeout_s:.0f} s "
                                   "(a collective that not every rank entered, or a send without its "
                                   "recv?); the workers were stopped") from None
            if status == "error":
                errors[rank] = value
                deadline = min(deadline, time.monotonic() - start + 10.0)   # the others may be stuck in a collective with it
            else:
                results[rank] = value
        if errors:
            if len(results) + len(errors) < self.world_size:
                self.close()      # some ranks are stuck (in a collective with the failed one)
            first = min(errors)
            raise RankError(f"{what} failed on rank {first} (of {sorted(errors)}):\n{errors[first]}")
        return [results[r] for r in range(self.world_size)]
