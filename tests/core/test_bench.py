"""The benchmark harness (gpulab.benchmark) and the results every benchmark script records."""
import ast
import importlib.util
import json
from pathlib import Path

import pytest
import torch

import gpulab
import gpulab.benchmark as gb
from gpulab.course.registry import BUILT, CHAPTERS

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
RESULTS = sorted((BENCHMARKS / "results").glob("*.json"))
SCRIPTS = sorted(BENCHMARKS.glob("[0-9][0-9]_*.py"))
# a built chapter has not met a GPU yet: its script exists, its results come with its GPU run
AWAITING_GPU = {Path(ch.benchmark).stem for ch in CHAPTERS if ch.status == BUILT}
RECORDED_SCRIPTS = [p for p in SCRIPTS if (BENCHMARKS / "results" / f"{p.stem}.json").exists()]


def _load_script(path: Path):
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_results_and_scripts():
    assert len(SCRIPTS) >= 5 and len(RESULTS) >= 5
    scripts, results = {p.stem for p in SCRIPTS}, {p.stem for p in RESULTS}
    assert results <= scripts, f"results without a script: {sorted(results - scripts)}"
    missing = scripts - results - AWAITING_GPU
    assert not missing, f"scripts without recorded results (only a built chapter's may wait): {sorted(missing)}"


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.stem)
def test_results_follow_the_schema(path):
    results = gb.load(path)
    assert gb.validate(results) == [], gb.validate(results)
    assert results["schema"] == gb.SCHEMA and results["stem"] == path.stem
    assert results["gpu"] and results["date"] and results["headline"]
    for row in results["headline"]:
        assert set(gb.HEADLINE_KEYS) <= set(row), row
        if row["peer_value"] is not None:
            assert row["ratio"] == pytest.approx(row["ours"] / row["peer_value"], rel=1e-9)
        else:
            assert row["ratio"] is None


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.stem)
def test_markdown_is_the_rendering_of_the_json(path):
    assert path.with_suffix(".md").read_text() == gb.render(gb.load(path)), \
        f"{path.with_suffix('.md').name} was edited by hand or is stale: rerender it with gpulab.benchmark.render"


@pytest.mark.parametrize("path", RECORDED_SCRIPTS, ids=lambda p: p.stem)
def test_script_rebuilds_its_recorded_report_from_the_measurements(path):
    """Headline rows and sections are derived from the raw data by the script itself."""
    saved = gb.load(BENCHMARKS / "results" / f"{path.stem}.json")
    rebuilt = _load_script(path).report(saved["data"], saved["metadata"], quick=saved["quick"]).to_dict()
    assert json.loads(json.dumps(rebuilt, default=str)) == saved


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.stem)
def test_script_uses_the_harness_and_writes_nothing_itself(path):
    source = path.read_text()
    imports = {alias.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Import)
               for alias in node.names}
    assert "gpulab.benchmark" in imports
    for own_plumbing in ("json.dumps", "write_text", "datetime", "get_device_properties", "ON_GPU"):
        assert own_plumbing not in source, f"{path.name} still has its own {own_plumbing}"
    assert "gb.require_gpu(" in source and "gb.parse_args(" in source and ".write(args.out)" in source


def test_validate_catches_an_inconsistent_row():
    row = gb.headline_row("m", 2.0, "torch", 4.0, goal=1.5)
    results = {"title": "t", "gpu": "g", "date": "2026-01-02", "metadata": {"gpu": "g"}, "headline": [row],
               "sections": []}
    assert gb.validate(results) == []
    assert any("ratio" in p for p in gb.validate({**results, "headline": [{**row, "ratio": 0.9}]}))
    assert any("met" in p for p in gb.validate({**results, "headline": [{**row, "met": False}]}))
    assert any("date" in p for p in gb.validate({**results, "date": "yesterday"}))
    assert any("keys" in p for p in gb.validate({**results, "headline": [{"metric": "m"}]}))


def test_headline_goals():
    assert gb.headline_row("t", 3.0, "p", 2.0, goal=1.5)["met"] is True       # 1.5x of the peer's time
    assert gb.headline_row("t", 3.1, "p", 2.0, goal=1.5)["met"] is False
    assert gb.headline_row("bw", 0.95, goal=0.9, lower_is_better=False)["goal_on"] == "ours"
    assert gb.headline_row("x", 1.0)["met"] is None
    with pytest.raises(gb.GoalError, match="peer_value"):
        gb.headline_row("t", 1.0, "p", 0.0)
    with pytest.raises(gb.GoalError, match="finite"):
        gb.headline_row("t", float("nan"))


@pytest.mark.skipif(gpulab.ON_GPU, reason="checks the message given without a GPU")
def test_require_gpu_says_clearly_why_it_stops():
    with pytest.raises(SystemExit, match="needs a CUDA GPU.*simulator"):
        gb.require_gpu("benchmarks/99_x.py")


def test_sweep_times_lines_side_by_side_and_records_missing_peers():
    swept = gb.sweep("n", [1, 5], lambda n: (torch.ones(n),),
                     {"ours": torch.relu, "absent": gb.peer("no_such_library_xyz", lambda lib: lib.relu),
                      "broken": lambda x: x.no_such_method()})
    assert [row["n"] for row in swept.rows] == [1, 5]
    assert all(row["ours"] > 0 for row in swept.rows)
    assert swept.clock.startswith("cuda events" if gpulab.ON_GPU else "cpu wall time")
    assert "no_such_library_xyz" in swept.missing["absent"] and swept.value(5, "absent") is None
    assert len(swept.errors) == 2 and "AttributeError" in swept.errors[0]["error"]
    table = swept.table()
    assert table["columns"][0] == "n" and table["rows"][0][2] == "-"
    with pytest.raises(TypeError, match="line 'bad'"):
        gb.sweep("n", [1], lambda n: (), {"bad": 3})


def test_results_write_json_then_rendered_md(tmp_path):
    results = gb.Results("99_demo", "Demo", meta={"gpu": "test GPU", "date": "2026-01-02"}, data={"x": [1, 2]})
    results.headline("time (ms)", 1.0, "torch", 2.0, goal=1.5)
    results.section("Numbers", "a paragraph", table={"columns": ["a", "b"], "rows": [["1", "2"]]})
    json_path, md_path = results.write(tmp_path)
    assert md_path.read_text() == gb.render(gb.load(json_path))
    assert "| time (ms) | 1 | torch | 2 | 0.5 | ratio <= 1.5: met |" in md_path.read_text()
    with pytest.raises(ValueError, match="cells"):
        results.section("bad", table={"columns": ["a"], "rows": [["1", "2"]]})


def test_quick_runs_do_not_overwrite_recorded_results():
    assert gb.parse_args("", ["--quick"]).out != gb.RESULTS_DIR
    assert gb.parse_args("", []).out == gb.RESULTS_DIR


def test_gpulab_bench_still_times_a_function_after_the_module_is_imported():
    timing = gpulab.bench(lambda: torch.ones(3).sum(), name="tiny")
    assert timing.name == "tiny" and timing.times_ms


def test_metadata_names_the_machine_and_versions():
    meta = gb.metadata()
    for key in ("date", "host", "gpu", "torch", "numba", "numba-cuda", "triton", "python"):
        assert meta.get(key), key
