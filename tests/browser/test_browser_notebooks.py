"""The course as a learner meets it: notebooks opened in JupyterLab (started by `make lab`),
Run > Run All Cells in headless Chromium, then the page is read: no cell failed, plotly
figures rendered, and moving a widget slider redraws its figure."""
import hashlib
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from labdriver import COURSE_ROOT as ROOT

pytestmark = pytest.mark.browser

START = "notebooks/00_start_here.ipynb"
SPLAT = "notebooks/06_gaussian_splatting.ipynb"  # the camera-orbit viewer (ipywidgets)


def _digest(relpath: str) -> str:
    return hashlib.sha256((ROOT / relpath).read_bytes()).hexdigest()


def _code_cells(relpath: str) -> int:
    nb = nbformat.read(ROOT / relpath, as_version=4)
    return sum(cell.cell_type == "code" for cell in nb.cells)


def _run_all(notebook, relpath: str, timeout: float):
    """Open a notebook, Run All Cells, and check every cell ran without an error in the page."""
    notebook.open(relpath)
    notebook.run_all()
    seconds = notebook.wait_run_finished(timeout)
    print(f"{relpath}: Run All Cells took {seconds:.1f} s in the browser")
    assert notebook.error_outputs() == [], f"{relpath}: a cell shows an error"
    assert notebook.unrun_cells() == [], f"{relpath}: cells that did not run: {notebook.prompts()}"
    assert len(notebook.prompts()) == _code_cells(relpath)  # every cell of the file is in the page


def test_start_notebook_in_jupyterlab(notebook, save_screenshot):
    before = _digest(START)
    _run_all(notebook, START, timeout=300)

    figures = notebook.plotly_figures()
    assert figures.count() >= 2, "the start page draws the thread grid and the reduction tree"
    tree = notebook.locator(".js-plotly-plot", has=notebook.page.locator(".gtitle", has_text="Tree reduction"))
    assert tree.locator(".scatterlayer .trace").count() > 0, "the reduction tree figure has no traces"

    # The thread-grid explorer: two sliders; moving `n` redraws the figure for the new n.
    grid = notebook.interact_box("block")
    assert grid.locator(".widget-slider").count() == 2
    title = notebook.figure_title(grid)
    assert re.match(r"21 elements, blocks of 8 threads", title), title
    old, new = notebook.move_slider("n", "ArrowRight")
    assert (old, new) == ("21", "22")
    notebook.wait_for(lambda: notebook.figure_title(grid).startswith("22 elements, blocks of 8"),
                      "the thread grid to be redrawn for n = 22", timeout=60)
    # 22 elements in blocks of 8: 3 blocks, so 2 threads of the last block are stopped (x marks)
    assert grid.locator(".scatterlayer .trace").count() == 2

    grid.scroll_into_view_if_needed()
    save_screenshot("00_start_here", notebook)
    assert _digest(START) == before, "the browser run must not save into the course's notebook"


@pytest.mark.skipif(not (ROOT / SPLAT).exists(), reason=f"{SPLAT} has not landed")
def test_splatting_viewer_orbits_the_camera(notebook, save_screenshot):
    before = _digest(SPLAT)
    _run_all(notebook, SPLAT, timeout=300)

    viewer = notebook.interact_box("azimuth")
    assert viewer.count() == 1, "chapter 06 has a camera-orbit viewer with an azimuth slider"
    notebook.wait_for(lambda: notebook.figure_image(viewer), "the viewer's first image", timeout=60)
    first = notebook.figure_image(viewer)
    save_screenshot("06_gaussian_splatting_viewer_before", notebook, viewer)
    old, new = notebook.move_slider("azimuth", "ArrowRight", presses=3)
    assert float(new) > float(old)
    notebook.wait_kernel_idle(180)  # each key press queued a render: let the last one finish
    notebook.wait_for(lambda: notebook.figure_image(viewer) not in ("", first),
                      "the rendered image to change after the camera moved", timeout=120)

    viewer.scroll_into_view_if_needed()
    save_screenshot("06_gaussian_splatting_viewer_after", notebook)
    assert _digest(SPLAT) == before


def test_a_failing_cell_is_caught(notebook):
    """The error check can fail: a planted exception is found, and the run stops there."""
    folder = ROOT / "build" / "browser-check"
    folder.mkdir(parents=True, exist_ok=True)
    planted = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell("raise ValueError('planted failure')"),
        nbformat.v4.new_code_cell("print('never reached')"),
    ])
    planted.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(planted, folder / "planted_error.ipynb")
    try:
        notebook.open("build/browser-check/planted_error.ipynb")
        notebook.run_all()
        notebook.wait_run_finished(120)
        errors = notebook.error_outputs()
        assert len(errors) == 1 and "ValueError" in errors[0] and "planted failure" in errors[0]
        assert notebook.unrun_cells() == [2]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
