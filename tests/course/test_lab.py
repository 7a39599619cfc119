"""What a new user meets first: `make lab` prints the start page's address (with the token)
also with --no-browser, serves it, and Ctrl-C on make stops JupyterLab (no server left
behind); `gpulab --help` answers without importing torch."""
import os
import pty
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
START_PAGE = "/lab/tree/notebooks/00_start_here.ipynb"
VENV = Path(sys.prefix)  # the environment running the tests


def _lab_skip_reason() -> str | None:
    """Why `make lab` can't be run from here (None when it can)."""
    if shutil.which("make") is None:
        return "needs make"
    if sys.prefix == sys.base_prefix:
        return f"the tests do not run in a venv ({sys.executable}): `make lab VENV=...` needs one"
    missing = [name for name in ("gpulab", "jupyter") if not (VENV / "bin" / name).exists()]
    if missing:
        return f"{VENV} has no {', '.join(missing)} command: it is not a course venv"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except OSError:
        return False


def _wait(condition, seconds: float, what: str, proc, log: Path) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return
        if proc.poll() is not None and what != "make to exit":
            raise RuntimeError(f"make lab exited early:\n{log.read_text()}")
        time.sleep(0.5)
    raise TimeoutError(f"waited {seconds} s for {what}:\n{log.read_text()}")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.skipif(_lab_skip_reason() is not None, reason=str(_lab_skip_reason()))
def test_make_lab_prints_the_start_page_and_ctrl_c_stops_it(tmp_path):
    port, token = _free_port(), "gpulab-test-token"
    log = tmp_path / "make-lab.log"
    cmd = ["make", "-s", "lab", f"VENV={VENV}", f"PORT={port}",
           f"LAB_ARGS=--no-browser --IdentityProvider.token={token} --ServerApp.ip=127.0.0.1",
           # the venv exists already: don't let make re-install into it
           "-o", f"{VENV}/.installed-dev"]
    # stdin a terminal, as for a person: Jupyter then handles Ctrl-C by asking for confirmation
    terminal, terminal_end = pty.openpty()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, GPULAB_MODE="sim"),
                                stdin=terminal_end, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    os.close(terminal_end)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _answers(f"{base}/api/status?token={token}"), 120, "JupyterLab", proc, log)
        # the address it prints opens the start page (a token given in config shows as "...")
        _wait(lambda: f"127.0.0.1:{port}{START_PAGE}?token=" in log.read_text(), 20,
              "the start page's address", proc, log)
        with urllib.request.urlopen(f"{base}{START_PAGE}?token={token}", timeout=30) as response:
            assert response.status == 200 and "JupyterLab" in response.read().decode()
        api = f"{base}/api/contents/notebooks/00_start_here.ipynb?token={token}&content=0"
        with urllib.request.urlopen(api, timeout=30) as response:
            assert re.search(r'"name":\s*"00_start_here.ipynb"', response.read().decode())

        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
        _wait(lambda: proc.poll() is not None, 30, "make to exit", proc, log)
        # Jupyter resumes 5 s after an unanswered confirmation: wait past that
        time.sleep(7)
        assert not _answers(f"{base}/api/status?token={token}"), \
            f"JupyterLab still runs after Ctrl-C on make:\n{log.read_text()}"
        assert not _group_alive(proc.pid), "a process of make lab outlived Ctrl-C"
    finally:
        os.close(terminal)
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_lab_skip_reason_names_what_is_missing(monkeypatch):
    monkeypatch.setattr(sys, "base_prefix", sys.prefix)
    assert "do not run in a venv" in _lab_skip_reason()


def test_gpulab_help_does_not_import_torch():
    """`gpulab --help` is the first thing a new user types: it answers at once (torch and numba
    take seconds to import), so the command's parser lives in gpulab_cli.py."""
    probe = ("import sys, runpy; sys.argv = ['gpulab', '--help']\n"
             "try:\n    runpy.run_module('gpulab_cli', run_name='__main__')\n"
             "except SystemExit as stop:\n    code = stop.code\n"
             "heavy = sorted(m for m in ('torch', 'numba', 'gpulab.runtime') if m in sys.modules)\n"
             "print('HEAVY', heavy, 'EXIT', code)\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, GPULAB_MODE="sim"))
    assert "usage: gpulab" in out.stdout, out.stdout + out.stderr
    assert "HEAVY [] EXIT 0" in out.stdout, out.stdout + out.stderr
