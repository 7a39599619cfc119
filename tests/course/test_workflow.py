"""The GitHub workflow for forks (.github/workflows/ci.yml) parses and runs what the Makefile has:
a CPU job with `make test` and `make test-browser`, and a GPU job, on a self-hosted runner
labelled gpu, that runs `make test-gpu` only when asked for and never for pull requests."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"


def _make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))


def _make_calls(text: str) -> list[str]:
    """The make targets a piece of shell runs (`make test PYTHON=python` -> 'test')."""
    return re.findall(r"\bmake\s+(?:-\S+\s+)*([A-Za-z][\w-]*)", text)


@pytest.fixture(scope="module")
def workflow():
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: the YAML is not parsed")
    data = yaml.safe_load(WORKFLOW.read_text())
    # YAML 1.1 reads the key `on` as the boolean True
    data["on"] = data.pop(True, data.get("on"))
    return data


def _runs(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def test_workflow_mentions_make_test_and_only_real_targets():
    text = WORKFLOW.read_text()
    calls = _make_calls(text)
    assert "test" in calls and "test-browser" in calls and "test-gpu" in calls
    assert set(calls) <= _make_targets(), f"targets missing from the Makefile: {set(calls) - _make_targets()}"


def test_make_calls_finds_targets():
    assert _make_calls("make test PYTHON=python JOBS=4\nmake -s test-gpu") == ["test", "test-gpu"]
    assert "nosuch" not in _make_targets() and {"test", "test-gpu", "test-browser", "lab"} <= _make_targets()


def test_cpu_job(workflow):
    assert {"push", "pull_request", "workflow_dispatch"} <= set(workflow["on"])
    cpu = workflow["jobs"]["cpu"]
    assert cpu["runs-on"] == "ubuntu-latest"
    setup = next(s for s in cpu["steps"] if s.get("uses", "").startswith("actions/setup-python"))
    assert str(setup["with"]["python-version"]) == "3.11" and setup["with"]["cache"] == "pip"
    calls = _make_calls(_runs(cpu))
    assert calls.index("test") < calls.index("test-browser")


def test_gpu_job_is_opt_in_on_a_self_hosted_gpu_runner(workflow):
    gpu = workflow["jobs"]["gpu"]
    assert {"self-hosted", "gpu"} <= set(gpu["runs-on"])
    assert "test-gpu" in _make_calls(_runs(gpu))
    condition = gpu["if"]
    assert "workflow_dispatch" in condition and "vars." in condition
    assert "github.event_name != 'pull_request'" in condition


def test_jobs_install_the_locks(workflow):
    """The CPU job gets the Makefile's default, the CPU lock (no index for every package); the
    GPU job names the GPU lock, with extras that match it."""
    cpu, gpu = workflow["jobs"]["cpu"], workflow["jobs"]["gpu"]
    assert not {"LOCK", "TORCH", "PIP_EXTRA_INDEX_URL"} & set(cpu.get("env", {}))
    setup = next(s for s in cpu["steps"] if s.get("uses", "").startswith("actions/setup-python"))
    assert setup["with"]["cache-dependency-path"] == "requirements/cpu.txt"
    assert gpu["env"]["LOCK"] == "requirements/gpu-cu13.txt" and (ROOT / gpu["env"]["LOCK"]).exists()
    assert "'dev,cu13'" in gpu["env"]["EXTRAS"]
