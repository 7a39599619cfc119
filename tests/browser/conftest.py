"""Browser tests: JupyterLab started by `make lab`, driven in headless Chromium.

They run when asked for (`make test-browser`, `pytest -m browser`, or `pytest tests/browser`),
not inside `make test` (which would run them twice in CI, in parallel with the notebooks), and
they skip with the reason when Chromium, Playwright or make is missing.
"""
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import labdriver  # noqa: E402

ROOT = labdriver.COURSE_ROOT
BROWSER_DIR = Path(__file__).resolve().parent
SCREENSHOTS = ROOT / "build" / "screenshots"  # build/ is git-ignored


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: end-to-end in JupyterLab and headless Chromium "
                                       "(run with `make test-browser` or `pytest -m browser`)")
    config.stash[_saved] = []


_saved = pytest.StashKey[list]()


def _asked_for(config) -> bool:
    markexpr = config.getoption("markexpr", "") or ""
    if "browser" in markexpr and "not browser" not in markexpr:
        return True
    for arg in config.args:
        path = Path(arg.split("::")[0]).resolve()
        if path == BROWSER_DIR or BROWSER_DIR in path.parents:
            return True
    return os.environ.get("GPULAB_BROWSER_TESTS") == "1"


def _missing() -> str | None:
    if labdriver.chromium_path() is None:
        where = os.environ.get("GPULAB_CHROMIUM") or labdriver.DEFAULT_CHROMIUM
        return (f"no Chromium at {where} (install Debian's `chromium`, or set GPULAB_CHROMIUM; "
                "`make test-browser` installs it when run as root)")
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (`make test-browser` installs it; no browser download)"
    if shutil.which("make") is None:
        return "needs make (the test starts JupyterLab with `make lab`)"
    return None


def pytest_collection_modifyitems(config, items):
    ours = [item for item in items if "browser" in item.keywords]
    if not ours:
        return
    if not _asked_for(config):
        reason = "browser test: run with `make test-browser` or `pytest -m browser`"
    else:
        reason = _missing()
    if reason:
        for item in ours:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def pytest_terminal_summary(terminalreporter, config):
    saved = config.stash.get(_saved, [])
    if saved:
        terminalreporter.section("browser screenshots")
        for path in saved:
            terminalreporter.write_line(str(path))


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """JupyterLab as `make lab` starts it, for the whole session; stopped at the end."""
    venv = Path(sys.executable).parent.parent  # the environment running the tests
    log = tmp_path_factory.mktemp("lab") / "jupyterlab.log"
    with labdriver.running_lab(ROOT, venv, log_path=log) as server:
        yield server


@pytest.fixture
def save_screenshot(request):
    """save_screenshot(name, notebook[, element]) -> path under build/screenshots/, printed."""
    def save(name, notebook, element=None):
        path = notebook.screenshot(SCREENSHOTS / f"{name}.png", element)
        request.config.stash[_saved].append(path)
        print(f"screenshot: {path}")
        return path
    return save


@pytest.fixture
def notebook(request, lab):
    """A fresh headless Chromium showing JupyterLab; on failure a screenshot is kept."""
    with labdriver.headless_chromium(labdriver.chromium_path()) as page:
        nb = labdriver.NotebookPage(page, lab)
        try:
            yield nb
        finally:
            report = getattr(request.node, "rep_call", None)
            if report is not None and report.failed:
                path = nb.screenshot(SCREENSHOTS / f"FAILED-{request.node.name}.png")
                request.config.stash[_saved].append(path)
            lab.shutdown_kernels()  # free the CPU for the next notebook
