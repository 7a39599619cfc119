"""Drive the course the way a learner meets it: `make lab`, then JupyterLab in headless Chromium.

Three pieces, each a context manager that stops what it started, also when a test fails:

    running_lab(root, venv)      `make lab` on a free localhost port with a token
    headless_chromium(path)      Debian's chromium driven by Playwright (no browser download)
    NotebookPage(page, lab)      open a notebook, Run All Cells, wait, read the outputs

The page is read through JupyterLab's and ipywidgets' DOM classes (jp-*, widget-*, noUi-*),
which are stable across JupyterLab 4.x and ipywidgets 8.x.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Headless, and nothing that dials out: the CI network may be closed, and Chromium waits on
# connections it cannot make (updates, sync, QUIC probes) unless told not to make them.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
DEFAULT_CHROMIUM = "/usr/bin/chromium"
TOKEN = "gpulab-browser-test"
COURSE_ROOT = Path(__file__).resolve().parents[2]

# JupyterLab user settings for the test's own settings folder (so a developer's settings do
# not leak in, and the test cannot write into the repository):
LAB_SETTINGS = {
    # never save: a run would otherwise store outputs into the course's notebooks
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    # put every cell in the page: by default cells outside the viewport are not in the DOM
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    # no news pop-up over the screenshot, no request to the internet
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}

# In JupyterLab an error output is rendered as stderr text holding IPython's traceback.
_TRACEBACK = re.compile(r"Traceback \(most recent call last\)|^\s*Cell In\[\d+\], line \d+", re.M)


def chromium_path() -> str | None:
    """The Chromium to drive: $GPULAB_CHROMIUM, else Debian's /usr/bin/chromium; None if absent."""
    path = os.environ.get("GPULAB_CHROMIUM") or DEFAULT_CHROMIUM
    found = shutil.which(path)
    return found if found and os.access(found, os.X_OK) else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Lab:
    base: str
    token: str
    proc: subprocess.Popen

    def url(self, path: str) -> str:
        sep = "&" if "?" in path else "?"
        return f"{self.base}/{path.lstrip('/')}{sep}token={self.token}"

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(self.url(f"api/{path}"), method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read().decode()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        """End every notebook session (and its kernel) the browser opened."""
        for session in self.api("sessions"):
            self.api(f"sessions/{session['id']}", method="DELETE")


def _stamps(venv: Path) -> list[str]:
    """Every install stamp `make` might look for, so that it never re-installs into `venv`."""
    names = {str(venv / ".installed-dev"), *glob.glob(str(venv / ".installed-*"))}
    return [arg for name in sorted(names) for arg in ("-o", name)]


@contextmanager
def running_lab(root: Path, venv: Path, timeout: float = 120, log_path: Path | None = None):
    """`make lab` headless on a free port; yields a Lab; shuts the server and its kernels down."""
    port = free_port()
    state = Path(tempfile.mkdtemp(prefix="gpulab-lab-state-"))
    for plugin, values in LAB_SETTINGS.items():
        path = state / "settings" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    lab_args = (f"--no-browser --IdentityProvider.token={TOKEN} --ServerApp.ip=127.0.0.1 "
                f"--LabApp.user_settings_dir={state / 'settings'} --LabApp.workspaces_dir={state / 'workspaces'}")
    cmd = ["make", "-s", "lab", f"VENV={venv}", f"PORT={port}", f"LAB_ARGS={lab_args}", *_stamps(venv)]
    log_path = log_path or Path(tempfile.mkstemp(prefix="gpulab-lab-", suffix=".log")[1])
    log = open(log_path, "w")
    env = dict(os.environ, GPULAB_MODE=os.environ.get("GPULAB_MODE", "sim"))
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own process group: we stop all of it
    lab = Lab(f"http://127.0.0.1:{port}", TOKEN, proc)
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"make lab exited early ({proc.returncode}):\n{log_path.read_text()}")
            try:
                lab.api("status")
                break
            except OSError:
                if time.time() > deadline:
                    raise TimeoutError(f"JupyterLab did not answer at {lab.base}:\n{log_path.read_text()}")
                time.sleep(0.5)
        yield lab
    finally:
        _stop_lab(lab)
        log.close()
        shutil.rmtree(state, ignore_errors=True)


def _stop_lab(lab: Lab) -> None:
    """Ask the server to shut down (it stops its kernels), then end make's process group."""
    try:
        lab.api("shutdown", method="POST")
        lab.proc.wait(timeout=20)
    except Exception:
        pass
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        if lab.proc.poll() is not None:
            break
        try:
            os.killpg(lab.proc.pid, sig)
            lab.proc.wait(timeout=wait)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


@contextmanager
def headless_chromium(executable: str, viewport=(1400, 1000)):
    """A fresh headless Chromium (own profile folder, deleted afterwards); yields a Playwright page."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="gpulab-chromium-")
    try:
        with sync_playwright() as pw:
            # A persistent context is Playwright's way to give Chromium --user-data-dir.
            context = pw.chromium.launch_persistent_context(
                profile, executable_path=executable, headless=True, args=CHROMIUM_FLAGS,
                viewport={"width": viewport[0], "height": viewport[1]})
            try:
                page = context.pages[0] if context.pages else context.new_page()
                yield page
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


class NotebookPage:
    """One notebook open in JupyterLab."""

    def __init__(self, page, lab: Lab):
        self.page, self.lab = page, lab
        self.panel = page.locator(".jp-NotebookPanel:visible")  # the notebook tab in front

    def locator(self, selector: str, **kwargs):
        """Elements of the open notebook (not of other tabs)."""
        return self.panel.locator(selector, **kwargs)

    # --- opening and running -------------------------------------------------------------
    def open(self, path: str, timeout: float = 120) -> "NotebookPage":
        # A workspace of its own, so no tab of an earlier browser session is restored
        workspace = f"test-{time.time_ns()}"
        self.page.goto(self.lab.url(f"lab/workspaces/{workspace}/tree/{path}"), timeout=timeout * 1000)
        self.page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=timeout * 1000)
        self.wait_kernel_idle(timeout)
        return self

    def kernel_states(self) -> list[str]:
        return [k["execution_state"] for k in self.lab.api("kernels")]

    def wait_kernel_idle(self, timeout: float) -> None:
        """The notebook's kernel is started and idle (asked of the server, not guessed from the page)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            states = self.kernel_states()
            if states and all(s == "idle" for s in states):
                return
            time.sleep(0.5)
        raise TimeoutError(f"kernel not idle after {timeout} s: {self.kernel_states()}")

    def run_all(self) -> None:
        """Run > Run All Cells, through the menu as a learner would."""
        self.page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
        self.page.locator('.lm-Menu-item[data-command="runmenu:run-all"]',
                          has_text="Run All Cells").click()

    def prompts(self) -> list[str]:
        """The execution prompt of every code cell: '[3]:' once run, '[*]:' while queued or running."""
        return [t.strip() for t in self.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()]

    def wait_run_finished(self, timeout: float) -> float:
        """Wait until Run All is over: the first code cell has run, none is queued or running
        ('[*]:'), and the kernel is idle. Returns the seconds taken. A cell that fails stops
        the run: the cells after it keep an empty prompt."""
        start = time.time()
        deadline = start + timeout
        while time.time() < deadline:
            prompts = self.prompts()
            if prompts and re.fullmatch(r"\[\d+\]:", prompts[0]) and "[*]:" not in prompts:
                self.wait_kernel_idle(max(1.0, deadline - time.time()))
                if "[*]:" not in self.prompts():
                    return time.time() - start
            time.sleep(1)
        raise TimeoutError(f"Run All not finished after {timeout} s; prompts: {self.prompts()}")

    def unrun_cells(self) -> list[int]:
        """Indices (among code cells) of cells without an execution count."""
        return [i for i, p in enumerate(self.prompts()) if not re.fullmatch(r"\[\d+\]:", p)]

    # --- reading the page ----------------------------------------------------------------
    def error_outputs(self) -> list[str]:
        """The text of every rendered error (a traceback) in the notebook, widget outputs included."""
        texts = self.locator(
            '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').all_inner_texts()
        return [t for t in texts if _TRACEBACK.search(t)]

    def plotly_figures(self):
        """Rendered plotly figures: a .js-plotly-plot holding plotly's svg."""
        return self.locator(".jp-OutputArea .js-plotly-plot:has(svg.main-svg)")

    def slider(self, label: str):
        """The ipywidgets slider whose description is `label` (its noUiSlider handle)."""
        widget = self.locator(".widget-slider", has=self.page.locator(".widget-label", has_text=label))
        return widget.first

    def move_slider(self, label: str, key: str = "ArrowRight", presses: int = 1) -> tuple[str, str]:
        """Focus a slider's handle and press a key, as a keyboard user would; returns the
        readout before and after."""
        widget = self.slider(label)
        widget.scroll_into_view_if_needed()
        readout = widget.locator(".widget-readout")
        before = readout.inner_text()
        handle = widget.locator(".noUi-handle")
        handle.focus()
        for _ in range(presses):
            handle.press(key)
        self.page.wait_for_function(
            "([el, old]) => el.innerText !== old", arg=[readout.element_handle(), before], timeout=10_000)
        return before, readout.inner_text()

    def interact_box(self, label: str):
        """The `interact`/`interactive` widget that has a control labelled `label`."""
        return self.locator(".widget-interact", has=self.page.locator(".widget-label", has_text=label)).first

    def figure_title(self, box) -> str:
        """The title of the plotly figure a widget box shows ('' while there is none)."""
        titles = box.locator(".js-plotly-plot .gtitle")
        return titles.first.text_content() if titles.count() else ""

    def figure_image(self, box) -> str:
        """The pixels of the image trace (a data: URL) of the plotly figure a widget box shows."""
        image = box.locator(".js-plotly-plot svg image")
        if not image.count():
            return ""
        return image.first.get_attribute("href") or image.first.get_attribute("xlink:href") or ""

    def wait_for(self, condition, what: str, timeout: float) -> None:
        """Poll `condition()` (a Python callable reading the page) until it is true."""
        deadline = time.time() + timeout
        while not condition():
            if time.time() > deadline:
                raise TimeoutError(f"after {timeout} s still waiting for {what}")
            time.sleep(0.5)

    def screenshot(self, path: Path, element=None) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        (element or self.page).screenshot(path=str(path))
        return path
