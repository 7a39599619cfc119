"""The grading sandbox (gpulab.sandbox): blocked folders, no programs, trusted helpers only.

An audit hook cannot be removed once installed, so every case runs in a fresh Python.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent("""
    import json, os, subprocess, sys
    from gpulab import sandbox
    blocked, secret = sys.argv[1], sys.argv[2]
    results = {}

    def attempt(name, action):
        try:
            action()
            results[name] = "ok"
        except PermissionError as error:
            results[name] = "refused: " + str(error)
        except ValueError as error:
            results[name] = "invalid: " + str(error)

    sandbox.trust_helper("gpulab.sandbox")        # a module of the package that exits at once
    sandbox.install([blocked])
    helper = [sys.executable, "-m", "gpulab.sandbox"]
    attempt("read_solution", lambda: open(secret).read())
    attempt("cat", lambda: subprocess.run(["cat", secret], check=True))
    attempt("os_system", lambda: os.system("true"))
    attempt("helper", lambda: subprocess.run(helper, check=True))
    attempt("helper_env_stripped", lambda: subprocess.run(helper, env={}, check=True))
    attempt("helper_extra_args", lambda: subprocess.run(helper + ["x"], check=True))
    attempt("trust_outside_package", lambda: sandbox.trust_helper("json.tool"))
    attempt("trust_missing_module", lambda: sandbox.trust_helper("gpulab.no_such_module"))
    print(json.dumps(results))
""")


def _run(tmp_path):
    blocked = tmp_path / "solutions"
    blocked.mkdir()
    secret = blocked / "answer.txt"
    secret.write_text("42")
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(blocked), str(secret)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_sandbox_blocks_solutions_and_programs_but_runs_trusted_helpers(tmp_path):
    results = _run(tmp_path)
    assert results["read_solution"].startswith("refused: reading the reference solutions")
    for name in ("cat", "os_system", "helper_env_stripped", "helper_extra_args"):
        assert results[name].startswith("refused: starting other programs"), (name, results[name])
    assert results["helper"] == "ok", results["helper"]
    assert results["trust_outside_package"].startswith("invalid: only a module of the gpulab package")
    assert results["trust_missing_module"].startswith("invalid:")


def test_helper_installs_the_parents_guard(tmp_path):
    blocked = tmp_path / "solutions"
    blocked.mkdir()
    secret = blocked / "answer.txt"
    secret.write_text("42")
    child = ("from gpulab import sandbox; sandbox.enter_helper(); "
             "import sys; print(open(sys.argv[1]).read())")
    env = dict(os.environ, **{"GPULAB_GRADING_BLOCKED": str(blocked)})
    guarded = subprocess.run([sys.executable, "-c", child, str(secret)], capture_output=True,
                             text=True, env=env, timeout=300)
    assert guarded.returncode != 0 and "reading the reference solutions is not allowed" in guarded.stderr
    env.pop("GPULAB_GRADING_BLOCKED")
    free = subprocess.run([sys.executable, "-c", child, str(secret)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert free.returncode == 0 and free.stdout.strip() == "42", free.stderr[-2000:]


_GRADED_VERIFIER = textwrap.dedent('''
    import json, sys
    from gpulab import sandbox
    sandbox.install([sys.argv[1]])               # as the grader's hidden first cell does
    from gpulab.kernelagent import Verifier       # declares its worker as a trusted helper
    GOOD = """
    import math
    import numba
    from numba import cuda
    import gpulab

    @gpulab.kernel
    def axpy_kernel(x, y, out):
        i = cuda.grid(1)
        if i < out.size:
            out[i] = numba.float32(2.5) * x[i] + y[i]

    def solve(x, y, out):
        axpy_kernel[math.ceil(out.numel() / 32), 32](x, y, out)
    """
    PEEK = "SECRET = open(%r).read()\\n" % sys.argv[2] + GOOD
    # the static checker would refuse open() before the worker runs it: off, so that the
    # worker's own guard is what is tested
    with Verifier(seed=3, static_check=False) as verifier:
        good, peek = verifier.verify("axpy", GOOD), verifier.verify("axpy", PEEK)
    print(json.dumps({"good": good.status, "peek": peek.status, "peek_message": peek.message}))
''')


def test_chapter17_worker_runs_under_the_grading_sandbox_and_is_guarded_too(tmp_path):
    # The verifier (a family) starts its worker while a notebook is graded: the sandbox
    # lets it start because the verifier declared it, and the worker guards itself, so a
    # candidate that reads the solutions fails there as well.
    blocked = tmp_path / "solutions"
    blocked.mkdir()
    secret = blocked / "answer.txt"
    secret.write_text("42")
    done = subprocess.run([sys.executable, "-c", _GRADED_VERIFIER, str(blocked), str(secret)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["good"] == "pass", result
    assert result["peek"] != "pass" and "not allowed while grading" in result["peek_message"], result
