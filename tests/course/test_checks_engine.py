"""The checks engine on small kernels. The race recorder it uses (gpulab.simtrace) is tested
with the tracer, in tests/core/test_trace.py."""
import pytest
import torch

import gpulab  # noqa: I001  (before numba: it picks GPU or simulator)
from numba import cuda
from gpulab.course.checks.engine import FUNCTION, KERNEL, Hint, Sizes, Task
from gpulab.course.feedback import TaskFailed

# ------------------------------------------------------------------ the engine

@gpulab.reference
def _double_reference(x):
    return 2 * x


def _double_task(**overrides):
    spec = dict(chapter="xx", number=overrides.pop("number", 1), title="double", kind=KERNEL,
                reference=_double_reference, make_inputs=lambda n, gen: torch.rand(n, generator=gen),
                sizes=Sizes(sim=[1, 33]),
                launch=lambda k, inputs, outputs, n: k[(n + 31) // 32, 32](*inputs, *outputs))
    spec.update(overrides)
    return Task(**spec)


@gpulab.kernel
def double_right(x, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = 2 * x[i]


@gpulab.kernel
def double_forgets_the_last(x, out):
    i = cuda.grid(1)
    if i < out.size - 1:
        out[i] = 2 * x[i]


def test_engine_accepts_a_right_kernel_and_names_a_mistake_through_a_hint(capsys):
    task = _double_task(hints=[Hint(lambda case: bool(case.unwritten[-1]), "the last element is unwritten")])
    task.run(double_right)
    assert "✅ Task 1 (double): passed" in capsys.readouterr().out
    with pytest.raises(TaskFailed, match="never written.*the last element is unwritten"):
        task.run(double_forgets_the_last)


@gpulab.kernel
def double_reads_the_pad(x, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = 2 * x[i] + x[i] * 0.0


def test_engine_refuses_stubs_non_kernels_and_host_compute():
    task = _double_task()
    with pytest.raises(TaskFailed, match="decorated with @gpulab.kernel"):
        task.run(lambda x, out: None)
    fn_task = _double_task(number=2, kind=FUNCTION, launch=None, kernel_only=True)

    def doubled_on_the_host(x):
        return x * 2

    with pytest.raises(TaskFailed, match="computed with torch.Tensor.mul on the host"):
        fn_task.run(doubled_on_the_host)

    def by_kernel(x):
        out = torch.empty_like(x)
        double_right[(x.numel() + 31) // 32, 32](x, out)
        return out

    fn_task.run(by_kernel)

    def launches_then_returns_a_fresh_tensor(x):
        out = torch.empty_like(x)
        double_right[(x.numel() + 31) // 32, 32](x, out)
        return torch.zeros_like(x)

    with pytest.raises(TaskFailed, match="not written by your kernels"):
        fn_task.run(launches_then_returns_a_fresh_tensor)


def test_engine_rejects_a_bad_declaration():
    with pytest.raises(ValueError, match="kind must be one of"):
        _double_task(number=3, kind="magic")
    with pytest.raises(ValueError, match="needs launch"):
        _double_task(number=4, launch=None)


# ------------------------------------------------------------------ a checker the candidate cannot touch

def _by_kernel(x):
    out = torch.empty_like(x)
    double_right[(x.numel() + 31) // 32, 32](x, out)
    return out


def _tensors_in_frames():
    """Every tensor held by a local of any frame of any thread."""
    import sys

    found = []
    for frame in sys._current_frames().values():
        while frame is not None:
            for value in frame.f_locals.values():
                for item in value if isinstance(value, (tuple, list)) else (value,):
                    if isinstance(item, torch.Tensor):
                        found.append(item)
            frame = frame.f_back
    return found


def test_no_frame_holds_the_expected_output_while_the_candidate_runs():
    seen = []

    def looks_for_the_answer(x):
        seen.append(any(t.shape == x.shape and t.device == x.device and not t.is_meta
                        and torch.equal(t.cpu(), 2 * x.cpu()) for t in _tensors_in_frames()))
        return _by_kernel(x)

    fn_task = _double_task(number=5, kind=FUNCTION, launch=None)   # host torch allowed: it searches
    fn_task.run(looks_for_the_answer)
    assert seen and not any(seen), "the checker's frames held the expected output"

    @gpulab.kernel
    def kernel_looks_for_the_answer(x, out):
        i = cuda.grid(1)
        if i == 0:
            seen.append(any(t.shape == x.shape and torch.equal(t, 2 * torch.as_tensor(x))
                            for t in _tensors_in_frames() if t.device.type == "cpu" and not t.is_meta))
        if i < out.size:
            out[i] = 2 * x[i]

    if gpulab.SIMULATOR:  # only the simulator runs a kernel's Python
        seen.clear()
        _double_task(number=6).run(kernel_looks_for_the_answer)
        assert seen and not any(seen), "the checker's frames held the expected output"


def _patched(what):
    """A right answer that also changes the checker while it runs."""
    def answer(x):
        what()
        return _by_kernel(x)
    return answer


def test_a_candidate_that_patches_the_checker_fails_and_the_checker_is_put_back():
    import gpulab.course.checks.engine as engine
    import gpulab.harness as harness
    from gpulab.course import feedback

    fn_task = _double_task(number=7, kind=FUNCTION, launch=None, kernel_only=True)
    originals = (engine.compare, harness.compare, harness.compare.__code__, feedback.require, Task._fail)
    patches = {
        "gpulab.course.checks.engine.compare": lambda: setattr(engine, "compare", lambda *a, **k: (None, 0, 0)),
        # the engine's name for it is checked first (and put back, so it is the one named)
        "engine.compare": lambda: setattr(harness.compare, "__code__", (lambda *a, **k: (None, 0, 0)).__code__),
        "gpulab.course.feedback.require": lambda: setattr(feedback, "require", lambda *a, **k: None),
        "gpulab.course.checks.engine.Task._fail": lambda: setattr(Task, "_fail", lambda *a, **k: None),
        "gpulab.harness.len": lambda: setattr(harness, "len", lambda x: 0),   # shadows a builtin
        "Task 7 (double)'s reference": lambda: setattr(fn_task, "reference", lambda x: x),
        "(as the engine sees it)": lambda: Task.run.__globals__.__setitem__("compare", lambda *a, **k: (None, 0, 0)),
    }
    for name, patch in patches.items():
        with pytest.raises(TaskFailed, match=r"changed the checker \(.*" + __import__("re").escape(name)):
            fn_task.run(_patched(patch))
        assert (engine.compare, harness.compare, harness.compare.__code__, feedback.require, Task._fail) == originals
        assert not hasattr(harness, "len")
    fn_task.run(_by_kernel)  # the originals judge again


def test_a_patched_allow_list_is_not_what_the_engine_consults():
    import gpulab.course.checks.engine as engine

    fn_task = _double_task(number=8, kind=FUNCTION, launch=None, kernel_only=True)

    def allows_itself_then_computes(x):
        engine._allowed = lambda name: True        # the engine's own _allowed is bound privately
        try:
            return x * 2
        finally:
            del engine._allowed                    # and no trace left behind
    original = engine._allowed
    with pytest.raises(TaskFailed, match="changed the checker|computed with torch.Tensor.mul"):
        fn_task.run(allows_itself_then_computes)
    assert engine._allowed is original


def test_kernel_only_host_code_gets_no_raw_memory():
    import ctypes

    import numpy as np

    fn_task = _double_task(number=9, kind=FUNCTION, launch=None, kernel_only=True)

    def finished_by(route):
        def answer(x):
            out = _by_kernel(x)   # the launcher's own data_ptr and storage calls are allowed
            route(out)
            return out
        return answer

    routes = {
        "torch.Tensor.data_ptr": lambda t: ctypes.c_float.from_address(t.data_ptr()),
        "torch.Tensor.untyped_storage": lambda t: t.untyped_storage(),
        "torch.Tensor.__array__": lambda t: np.asarray(t),
        "torch.Tensor.__cuda_array_interface__": lambda t: t.__cuda_array_interface__,
        "torch.utils.dlpack.to_dlpack": lambda t: torch.utils.dlpack.to_dlpack(t),
        "DisableTorchFunction": lambda t: torch._C.DisableTorchFunction(),
    }
    for name, route in routes.items():
        with pytest.raises(TaskFailed, match=__import__("re").escape(name)):
            fn_task.run(finished_by(route))
    fn_task.run(_by_kernel)


def test_a_tensor_subclass_is_not_compared():
    class AlwaysEqual(torch.Tensor):
        pass

    fn_task = _double_task(number=10, kind=FUNCTION, launch=None)
    with pytest.raises(TaskFailed, match="tensor subclass"):
        fn_task.run(lambda x: (2 * x).as_subclass(AlwaysEqual))
