"""Chapter 17: the runnable stand-ins for CudaForge's Judge, CUDA-LLM's FSR, CUDA-L1's
contrastive prompt and ConCuR's curation (gpulab.kernelagent.workflows)."""
import dataclasses
import math

import pytest

from gpulab.kernelagent import Verifier, workflows
from gpulab.kernelagent.search import SPACE, baseline_genome
from gpulab.kernelagent.verifier import Verdict


@pytest.fixture(scope="module")
def verifier():
    with Verifier(seed=29, perturb=False) as v:
        yield v


def _verdict(status="pass", flags=None, message=""):
    return Verdict("chain4", "numba", status, dict(flags or {}), message=message, cases=5)


def test_the_judge_fixes_correctness_before_speed_and_names_the_bottleneck():
    g = baseline_genome()
    nan = workflows.judge("chain4", g, _verdict("fail", message="3 elements were never written (still NaN)"))
    assert nan.change == {"tail": True}
    shape = workflows.judge("chain4", g, _verdict("fail", {"shape_dependent": "right on (32,) only"}))
    assert shape.change == {"tail": True}
    cheat = workflows.judge("chain4", g, _verdict("fail", {"calls_torch_op": "relu"}))
    assert cheat.change == {} and "calls_torch_op" in cheat.diagnosis
    unfused = workflows.judge("chain4", g, _verdict())
    assert unfused.change == {"fuse": True} and "kernels each read and write" in unfused.diagnosis
    strided = dataclasses.replace(g, fuse=True, layout="contiguous", items=4)
    assert workflows.judge("chain4", strided, _verdict()).change == {"layout": "strided"}


def test_the_coder_applies_only_the_judges_change():
    g = baseline_genome()
    critique = workflows.Critique("x", {"fuse": True})
    assert workflows.coder(g, critique) == dataclasses.replace(g, fuse=True)


def test_forge_loop_repairs_the_rounded_down_grid_then_speeds_up(verifier):
    start = dataclasses.replace(baseline_genome(), tail=False)
    steps = workflows.forge_loop("chain4", verifier, rounds=3, start=start)
    assert steps[0]["status"] == "fail" and steps[0]["critique"].change == {"tail": True}
    assert steps[1]["status"] == "pass" and steps[1]["critique"].change == {"fuse": True}
    assert steps[2]["speedup"] > steps[1]["speedup"] > 0


def test_feature_search_reinforces_the_fastest_correct_candidate(verifier):
    log = workflows.feature_search_and_reinforce("chain2", verifier, rounds=2, width=2)
    first = log[0]
    assert len(first["tried"]) == 2 and all(row["status"] == "pass" for row in first["tried"])
    best = max(first["tried"], key=lambda row: row["speedup"])["genome"]
    # round 1 tries only neighbours of round 0's best (one step in block or items)
    for row in log[1]["tried"]:
        g = row["genome"]
        steps = sum(abs(SPACE[k].index(getattr(g, k)) - SPACE[k].index(getattr(best, k))) for k in ("block", "items"))
        assert steps == 1
    assert log[-1]["best_speedup"] >= log[0]["best_speedup"]


def _records():
    base = {"task": "chain2", "clock": "modelled (not measured)", "genome": {"block": 32}}
    return [dict(base, status="pass", speedup=2.0, source="a b c d e"),
            dict(base, status="pass", speedup=3.0, source="a b c"),
            dict(base, status="pass", speedup=3.0, source="a  b   c"),        # the same source again
            dict(base, status="pass", speedup=0.8, source="a"),               # slower than torch eager
            dict(base, status="fail", speedup=None, source="z"),
            dict(base, task="chain4", status="pass", speedup=1.5, source="q r")]


def test_curate_keeps_correct_faster_concise_and_balanced_records():
    kept = workflows.curate(_records(), min_speedup=1.0, per_task=1)
    assert [(r["task"], r["source"], r["tokens"]) for r in kept] == [("chain2", "a b c", 3), ("chain4", "q r", 2)]
    assert len(workflows.curate(_records(), per_task=5)) == 3      # duplicates and the slow one dropped


def test_contrastive_prompt_shows_speedups_fastest_first():
    prompt = workflows.contrastive_prompt("chain2", _records())
    assert prompt.index("3.00x") < prompt.index("2.00x") < prompt.index("0.80x") and "explain why" in prompt
    with pytest.raises(ValueError, match="no correct variant"):
        workflows.contrastive_prompt("chain2", [r for r in _records() if r["status"] == "fail"])


def test_one_outlier_carries_the_arithmetic_mean_not_the_geometric():
    arith, geo, med = workflows.arithmetic_and_geometric_mean([1.0] * 9 + [100.0])
    assert math.isclose(arith, 10.9) and geo < 1.6 and med == 1.0
