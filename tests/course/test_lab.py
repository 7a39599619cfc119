"""`make lab` starts JupyterLab serving the start page (then the test stops it)."""
import os
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, deadline: float, proc) -> int:
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"make lab exited early:\n{proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"nothing answered at {url}")


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_lab_serves_the_start_page():
    venv = Path(sys.executable).parent.parent  # the environment running the tests
    port, token = _free_port(), "gpulab-test-token"
    env = dict(os.environ, GPULAB_MODE="sim")
    cmd = ["make", "-s", "lab", f"VENV={venv}", f"PORT={port}",
           f"LAB_ARGS=--no-browser --IdentityProvider.token={token} --ServerApp.ip=127.0.0.1",
           # the venv exists already: don't let make re-install into it
           "-o", f"{venv}/.installed-dev"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for(f"{base}/api/status?token={token}", time.time() + 120, proc)
        page = f"{base}/lab/tree/notebooks/00_start_here.ipynb?token={token}"
        with urllib.request.urlopen(page, timeout=30) as response:
            assert response.status == 200
            assert "JupyterLab" in response.read().decode()
        api = f"{base}/api/contents/notebooks/00_start_here.ipynb?token={token}&content=0"
        with urllib.request.urlopen(api, timeout=30) as response:
            assert re.search(r'"name":\s*"00_start_here.ipynb"', response.read().decode())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
