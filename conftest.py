"""pytest set-up for the whole checkout (here, not in tests/, so that a run of notebooks
alone, `pytest -m ch06 --nbval-lax notebooks/06_gaussian_splatting.ipynb`, gets the chapter
markers and the time budgets too): GPU-only tests skipped without a GPU, one marker per
chapter of the registry, and the budgets of tests/budgets.py."""
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("GPULAB_QUIET", "1")

import pytest  # noqa: E402

import gpulab  # noqa: E402  (before numba: it picks GPU or simulator)
from gpulab.course.registry import CHAPTERS  # noqa: E402

# tests/ holds the shared test modules (budgets, helpers) that tests import by name
sys.path.insert(0, str(Path(__file__).resolve().parent / "tests"))

import budgets  # noqa: E402  (tests/budgets.py: time budgets that fail the run)

# tests/chNN_slug/... and notebooks/NN_slug.ipynb (solutions, exercises) belong to chapter NN
_CHAPTER_OF_PATH = re.compile(r"(?:^|/)(?:tests/ch(\d\d)_[a-z0-9_]+/|(?:notebooks|solutions|exercises)/(\d\d)_)")


def pytest_configure(config):
    budgets.install(config, on_gpu=gpulab.ON_GPU)
    for ch in CHAPTERS:
        config.addinivalue_line("markers", f"{ch.marker}: chapter {ch.number} ({ch.slug})")


def chapter_of(path: Path) -> str | None:
    """The two-digit chapter a test file or notebook belongs to, or None (core, course)."""
    match = _CHAPTER_OF_PATH.search(Path(path).resolve().as_posix())
    return (match.group(1) or match.group(2)) if match else None


def pytest_collection_modifyitems(config, items):
    for item in items:
        number = chapter_of(item.path)
        if number:
            item.add_marker(getattr(pytest.mark, f"ch{number}"))
    if gpulab.ON_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (gpulab runs on the simulator here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
