"""Binder (binder/) builds the same course as `pip install .`: its pinned requirements satisfy
pyproject.toml, and its postBuild installs the package and writes the exercises."""
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
BINDER = ROOT / "binder"


def _pins(text: str) -> dict[str, Requirement]:
    """Requirements of a requirements.txt (options such as --extra-index-url skipped)."""
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name not in pins, f"{req.name} is pinned twice in binder/requirements.txt"
        pins[name] = req
    return pins


def _disagreements(pyproject: dict, pins: dict[str, Requirement]) -> list[str]:
    """What is wrong between pyproject's dependencies and binder's pins ([] when they agree)."""
    problems = []
    for spec in pyproject["project"]["dependencies"]:
        wanted = Requirement(spec)
        pin = pins.get(canonicalize_name(wanted.name))
        if pin is None:
            problems.append(f"{wanted.name}: in pyproject.toml but not in binder/requirements.txt")
            continue
        exact = [s for s in pin.specifier if s.operator == "=="]
        if len(exact) != 1:
            problems.append(f"{pin}: not pinned to one version (want {wanted.name}==X)")
        elif exact[0].version not in wanted.specifier:
            problems.append(f"{pin} does not satisfy pyproject.toml's {wanted}")
    return problems


def _postbuild_commands() -> list[list[str]]:
    """postBuild's commands, one word list each (comments, blank lines and `set` left out)."""
    commands = []
    for line in (BINDER / "postBuild").read_text().splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] != "set":
            commands.append(words)
    return commands


def _installs_this_package(words: list[str]) -> bool:
    if words[:4] not in (["python", "-m", "pip", "install"], ["python3", "-m", "pip", "install"]) \
            and words[:2] != ["pip", "install"]:
        return False
    return "." in words  # `pip install [-e] .`: the course checkout Binder cloned


def test_binder_pins_satisfy_pyproject():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = _pins((BINDER / "requirements.txt").read_text())
    assert _disagreements(pyproject, pins) == []


def test_the_agreement_check_catches_drift():
    """Planted drifts: a missing pin, a pin outside the range, and a range instead of a pin."""
    pyproject = {"project": {"dependencies": ["numpy>=1.26,<2.5", "plotly>=5.20", "tqdm>=4.66"]}}
    pins = _pins("numpy==2.5.0\ntqdm>=4.66\n")
    problems = _disagreements(pyproject, pins)
    assert any(p.startswith("plotly: in pyproject.toml but not") for p in problems)
    assert any("numpy==2.5.0 does not satisfy" in p for p in problems)
    assert any(p.startswith("tqdm>=4.66: not pinned") for p in problems)
    assert _disagreements(pyproject, _pins("numpy==2.4.6\nplotly==7.1.0\ntqdm==4.70.1\n")) == []
    with pytest.raises(AssertionError, match="pinned twice"):
        _pins("numpy==2.4.6\nNumPy==2.4.5\n")


def test_postbuild_installs_the_package_then_builds_the_exercises():
    commands = _postbuild_commands()
    install = [i for i, words in enumerate(commands) if _installs_this_package(words)]
    exercises = [i for i, words in enumerate(commands) if words[:2] == ["gpulab", "exercises"]]
    assert install, f"postBuild does not `pip install .`: {commands}"
    assert exercises, f"postBuild does not run `gpulab exercises`: {commands}"
    assert install[0] < exercises[0], "the gpulab command exists only after the install"
    # requirements.txt brings every dependency: the install must not resolve them again
    assert "--no-deps" in commands[install[0]]
    assert os.access(BINDER / "postBuild", os.X_OK) and os.access(BINDER / "start", os.X_OK)


def test_install_detection():
    assert _installs_this_package(["python", "-m", "pip", "install", "--no-deps", "-e", "."])
    assert _installs_this_package(["pip", "install", "."])
    assert not _installs_this_package(["pip", "install", "gpulab"])  # from PyPI, not this checkout
    assert not _installs_this_package(["python", "-m", "pip", "install", "-r", "binder/requirements.txt"])


def test_binder_start_runs_the_simulator():
    out = subprocess.run([str(BINDER / "start"), sys.executable, "-c",
                          "import os; print(os.environ['GPULAB_MODE'])"],
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "sim"


def _course_copy(dest: Path) -> Path:
    """What Binder clones, minus the generated exercises/ and the build leftovers."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".ipynb_checkpoints", "build")
    for name in ("gpulab", "solutions", "notebooks", "binder"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "gpulab_cli.py"):
        shutil.copy2(ROOT / name, dest / name)
    return dest


def test_postbuild_effect_in_a_copy(tmp_path):
    """Do what postBuild does, in a copy: build the package (a wheel, without touching this
    environment) and generate the exercises."""
    course = _course_copy(tmp_path / "course")
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(course)], check=True, timeout=300,
                   capture_output=True, text=True)
    (wheel,) = wheels.glob("gpulab-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert {"gpulab/course/cli.py", "gpulab/__init__.py", "gpulab_cli.py"} <= set(names)
    assert re.search(r"^gpulab\s*=\s*gpulab_cli:main", entry_points, re.M)

    gpulab_cli = Path(sys.executable).with_name("gpulab")
    cmd = [str(gpulab_cli)] if gpulab_cli.exists() else [sys.executable, "-m", "gpulab_cli"]
    run = subprocess.run([*cmd, "exercises", "--root", str(course)], cwd=course, check=True,
                         timeout=300, capture_output=True, text=True,
                         env=dict(os.environ, GPULAB_MODE="sim"))
    solutions = sorted(p.name for p in (course / "solutions").glob("*.ipynb"))
    exercises = sorted(p.name for p in (course / "exercises").glob("*.ipynb"))
    assert solutions and exercises == solutions, run.stdout
    for name in exercises:
        text = (course / "exercises" / name).read_text()
        assert "BEGIN SOLUTION" not in text, f"exercises/{name} still holds a solution"
        assert "YOUR CODE HERE" in text, f"exercises/{name} has no task left to the learner"
