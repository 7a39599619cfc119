"""The verifier's child process: runs untrusted candidates, one request at a time.

Started by :class:`gpulab.kernelagent.verifier.Verifier` as
``python -m gpulab.kernelagent.worker``. It speaks JSON lines: one request per line on
stdin, one reply per line on a private copy of the original stdout (fd 1 itself is
pointed at stderr, so a candidate's ``print`` cannot forge a reply by accident).

What the child does *not* have is the point: the expected outputs. The parent draws the
inputs, writes them to a file, keeps the reference outputs to itself and compares what
the child sends back. So a candidate that looks for the answer (in memory, in files)
finds nothing to copy. The child does run the reference once between the two runs of the
candidate (as the candidate's process would in a naive harness): a candidate that reads
the reference's leftover memory is right only after it, and that difference is flagged.

What runs here can be subverted by a candidate written to attack the verifier (it shares
the process): the hooks below catch the common loopholes, the parent keeps the answer,
and the roofline bounds the timing. That is defence in depth, not a proof.
"""
from __future__ import annotations

import gc
import importlib.util
import json
import os
import resource
import sys
import threading
import traceback


def _send(stream, obj) -> None:
    stream.write(json.dumps(obj) + "\n")
    stream.flush()


class _Hooks:
    """What a candidate did while it ran: torch ops, kernel launches, streams, snooping."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.torch_ops: set[str] = set()
        self.launches = 0
        self.streams = 0
        self.snooped = False
        self.reference_called = ""


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
    reshape numpy size dim numel stride is_contiguous data_ptr element_size len copy fill zero
    to float cpu cuda clone setitem getitem unsqueeze squeeze flatten t expand as_strided
    storage_offset untyped_storage is_floating_point type dtype device shape cuda_array_interface
    array_interface nbytes itemsize
""".split())


def _install_hooks(hooks: _Hooks):
    """Count kernel launches and stream creations; record gc snooping."""
    import torch
    from numba import cuda

    from gpulab import launch

    real_launch = launch.Kernel.launch

    def counted_launch(self, *args, **kwargs):
        hooks.launches += 1
        return real_launch(self, *args, **kwargs)

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

    for name in ("get_objects", "get_referrers", "get_referents"):
        real = getattr(gc, name)

        def snooping(*args, _real=real, **kwargs):
            hooks.snooped = True
            return _real(*args, **kwargs)

        setattr(gc, name, snooping)


def _packed(t):
    t = t.detach().cpu().contiguous()
    return {"bytes": t.numpy().tobytes(), "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}


def _load_candidate(source: str, path: str):
    with open(path, "w") as f:
        f.write(source)
    name = "candidate_" + os.path.basename(path).removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    solve = getattr(module, "solve", None)
    if not callable(solve):
        raise TypeError("the candidate must define solve(*inputs, out)")
    return module, solve


def _forget(module) -> None:
    """Drop a finished candidate's globals, so the next one cannot find its state."""
    if module is not None:
        module.__dict__.clear()
    gc.collect()


class _Runner:
    def __init__(self, hooks: _Hooks):
        import torch
        from torch.overrides import TorchFunctionMode

        import gpulab

        self.torch, self.gpulab, self.hooks = torch, gpulab, hooks
        self.ref_timings: dict = {}
        self.last_module = None

        class Recorder(TorchFunctionMode):
            def __torch_function__(mode, func, types, args=(), kwargs=None):
                hooks.torch_ops.add(_op_name(func))
                return func(*args, **(kwargs or {}))

        self.Recorder = Recorder

    def _poisoned(self, shape, dtype):
        out = self.torch.empty(shape, dtype=dtype, device=self.gpulab.device)
        return out.fill_(float("nan"))

    def run_candidate(self, solve, inputs, out_shape, out_dtype):
        """One run on fresh copies of the inputs; returns (out, inputs after, side-stream?)."""
        torch, gpulab = self.torch, self.gpulab
        xs = tuple(x.to(gpulab.device).clone() for x in inputs)
        out = self._poisoned(out_shape, out_dtype)
        side_stream = False
        with gpulab.harness.candidate_running("candidate"), self.Recorder():
            solve(*xs, out=out)
        if gpulab.ON_GPU:
            # the answer must be complete once the *current* stream is done: work queued on
            # another stream and not joined would still be running (or not yet started)
            torch.cuda.current_stream().synchronize()
            snapshot = out.clone()
            torch.cuda.synchronize()
            side_stream = not torch.equal(snapshot.nan_to_num(), out.nan_to_num())
        # as raw bytes, not tensors: a later candidate that searches memory for tensors
        # shaped like the answer must not find the outputs of earlier runs
        return _packed(out), tuple(_packed(x) for x in xs), side_stream

    def run_reference(self, task, inputs):
        xs = tuple(x.to(self.gpulab.device).clone() for x in inputs)
        expected = task.reference(*xs)
        self.gpulab.synchronize()
        del expected, xs  # the answer is gone again, but its memory may be handed out next

    def time(self, task, solve, seed=1234):
        """KernelBench-style timing of candidate and reference at the task's timing shape.

        The timing shape is never among the checked shapes, so a candidate could behave
        differently there (or while called again and again). Two checks close that: the
        output left by the timed runs must match the reference, and one more run at the
        timing shape is watched like the checked runs (guard on the reference, torch
        calls recorded). What they find is returned as ``problems``.
        """
        torch, gpulab = self.torch, self.gpulab
        from .timing import kernelbench_time
        from .verifier import compare

        shape = task.timing_shape if gpulab.ON_GPU else task.shapes[0]
        xs = tuple(x.to(gpulab.device) for x in task.inputs(shape, seed))
        rtol, atol = task.tolerance
        problems = []
        with torch.no_grad():
            expected = task.reference(*xs)
            out = self._poisoned(expected.shape, expected.dtype)
            cand = kernelbench_time(lambda: solve(*xs, out=out), name="candidate")
            gpulab.synchronize()
            wrong = compare(out, expected, rtol, atol)[0]
            if wrong:
                problems.append(f"wrong after the timed runs at shape {tuple(shape)}: {wrong}")
            watched = self._poisoned(expected.shape, expected.dtype)
            try:
                with gpulab.harness.candidate_running("candidate"), self.Recorder():
                    solve(*xs, out=watched)
                gpulab.synchronize()
                wrong = compare(watched, expected, rtol, atol)[0]
                if wrong:
                    problems.append(f"wrong at the timing shape {tuple(shape)}: {wrong}")
            except gpulab.harness.ReferenceCalledError:
                raise
            except Exception as exc:
                problems.append(f"raised {type(exc).__name__} at the timing shape {tuple(shape)}: {exc}")
            key = (task.name, tuple(shape))
            if key not in self.ref_timings:
                self.ref_timings[key] = kernelbench_time(lambda: task.reference(*xs), name="torch eager")
            ref = self.ref_timings[key]
        return {"shape": list(shape), "candidate": cand.as_dict(), "reference": ref.as_dict(),
                "problems": problems}


def _verify(runner: _Runner, hooks: _Hooks, req: dict) -> dict:
    import torch

    from gpulab.harness import ReferenceCalledError

    from .tasks import get_task

    task = get_task(req["task"])
    hooks.reset()
    try:
        return _verify_loaded(runner, hooks, req, task)
    finally:
        _forget(runner.last_module)
        runner.last_module = None


def _verify_loaded(runner, hooks, req, task) -> dict:
    import torch

    from gpulab.harness import ReferenceCalledError
    reply = {"status": "ran", "cases": [], "error": None}
    try:
        runner.last_module, solve = _load_candidate(req["source"], req["module_path"])
    except MemoryError:
        return {"status": "out_of_memory", "error": "MemoryError while loading the candidate"}
    except Exception:
        return {"status": "error", "error": "loading the candidate failed:\n" + traceback.format_exc(limit=4)}
    cases = torch.load(req["inputs_path"], weights_only=True)
    results = []
    for case in cases:
        record = {"outs": [], "inputs_after": None, "error": None, "side_stream": False}
        try:
            for run in range(case["runs"]):
                if run == 1:
                    runner.run_reference(task, case["inputs"])
                out, after, side = runner.run_candidate(solve, case["inputs"], case["out_shape"],
                                                        getattr(torch, case["out_dtype"]))
                record["outs"].append(out)
                record["inputs_after"] = after
                record["side_stream"] |= side
        except ReferenceCalledError as exc:
            hooks.reference_called = str(exc)
            record["error"] = f"ReferenceCalledError: {exc}"
        except MemoryError:
            return {"status": "out_of_memory", "error": "the candidate raised MemoryError "
                    "(it asked for more memory than the verifier allows)"}
        except Exception as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
            if type(exc).__name__ == "NotImplementedError":
                return {"status": "error", "error": f"NotImplementedError: {exc}"}
        results.append(record)
    torch.save(results, req["results_path"])
    if req.get("time") and all(r["error"] is None for r in results):
        try:                        # before the hooks are read: the timing shape's run is watched too
            reply["timing"] = runner.time(task, solve)
        except ReferenceCalledError as exc:
            hooks.reference_called = str(exc)
        except Exception as exc:
            reply["timing_error"] = f"{type(exc).__name__}: {exc}"
    reply["torch_ops"] = sorted(hooks.torch_ops)
    reply["launches"] = hooks.launches
    reply["streams"] = hooks.streams
    reply["snooped"] = hooks.snooped
    reply["reference_called"] = hooks.reference_called
    return reply


def _limit_memory(megabytes: int, simulator: bool) -> None:
    """Cap the address space under the simulator (a CUDA context needs a huge one, so on a
    GPU the parent watches the resident memory instead)."""
    if megabytes <= 0 or not simulator:
        return
    with open("/proc/self/statm") as f:
        vm_bytes = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    cap = vm_bytes + megabytes * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def _warm_up_cuda() -> None:
    """Create the CUDA contexts (torch's and numba's) and load the kernel compiler now, so
    that the parent's memory baseline, taken when this process says it is ready, already
    holds them: the memory limit then measures what a candidate allocates, not the
    hundreds of megabytes a first kernel costs any process."""
    import numpy as np
    import torch
    from numba import cuda

    import gpulab

    @gpulab.kernel
    def _touch(out):
        i = cuda.grid(1)
        if i < out.shape[0]:
            out[i] = i

    out = torch.empty(32, device="cuda")
    _touch[1, 32](out)
    torch.cuda.synchronize()
    assert np.allclose(out.cpu().numpy(), np.arange(32))


def main() -> None:
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)                       # the candidate's prints go to stderr
    sys.stdout = sys.stderr
    os.environ.setdefault("GPULAB_QUIET", "1")
    import gpulab
    from gpulab import sandbox

    sandbox.enter_helper()    # while a notebook is graded: no peeking from here either

    # the simulator runs each CUDA thread as a Python thread: small stacks keep a block of
    # 1024 threads inside the address-space cap
    threading.stack_size(1 << 20)
    import torch
    if gpulab.ON_GPU:
        _warm_up_cuda()
        # a candidate that fills the GPU through torch's allocator stops at this share of it,
        # so the notebook or grader sharing the GPU keeps room (numba's own allocations are
        # not covered: they go to the driver directly)
        torch.cuda.set_per_process_memory_fraction(float(os.environ.get("GPULAB_VERIFIER_GPU_FRACTION", "0.5")))
    hooks = _Hooks()
    _install_hooks(hooks)
    runner = _Runner(hooks)
    _limit_memory(int(os.environ.get("GPULAB_VERIFIER_MEMORY_MB", "0")), gpulab.SIMULATOR)
    _send(proto, {"ready": True, "mode": gpulab.MODE, "pid": os.getpid()})
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("op") == "verify":
            reply = _verify(runner, hooks, req)
            if gpulab.ON_GPU:
                torch.cuda.empty_cache()   # hand the candidate's cached blocks back to the GPU
        elif req.get("op") == "ping":
            reply = {"pong": True}
        else:
            reply = {"status": "error", "error": f"unknown request {req.get('op')!r}"}
        _send(proto, reply)


if __name__ == "__main__":
    main()
