"""The benchmark's report on made-up measurements of the right shape (no GPU here): every
part renders and the results follow the schema. The numbers below are SYNTHETIC, chosen
only to exercise the code; nothing is written to benchmarks/results."""
import runpy
from pathlib import Path

import gpulab.benchmark as gb

SCRIPT = runpy.run_path(str(Path(__file__).parents[2] / "benchmarks" / "01_gpu_architecture.py"))
KIB, MIB = 1024, 1024 * 1024


def synthetic_data():
    lat = [{"bytes": ws, "level": lv, "steps": 10, "warmup": 0, "cycles": 10.0 + i, "ns": 5.0 + i,
            "cpp_cycles": 10.0 + i if lv == "l1" else None}
           for i, (ws, lv) in enumerate([(16 * KIB, "l1"), (8 * MIB, "l2"), (1024 * MIB, "l2")])]
    return {
        "quick": False,
        "latency": {"rows": lat, "cpp_missing": None},
        "bandwidth": {"n": 1 << 26, "ours_ms": 1.0, "torch_ms": 1.0, "bytes": 8 << 26,
                      "strided": [{"stride": 1, "offset": 0, "ms": 1.0, "useful_gbs": 1.0}]},
        "occupancy": {"rows": [{"max_registers": 32, "registers": 30, "threads": 128, "dynamic_shared": 0,
                                "ours": 16, "driver": 16, "limited_by": "warps"}], "limits": {}},
        "divergence": {"rows": [{"ways": 1, "cycles": 10.0}, {"ways": 2, "cycles": 20.0}], "iters": 256},
        "ffma": {"rows": [{"ilp": 1, "warps": 1, "cycles": 100, "model_listing": 110, "model_sass": 95},
                          {"ilp": 2, "warps": 1, "cycles": 100, "model_listing": 110, "model_sass": None}], "iters": 1024,
                 "sass": {1: {"tool": "synthetic", "body": ["FFMA"], "ffma_per_iteration": 1}, 2: {"error": "none"}}},
        "dpx": {"per_clock_per_sm": {"s16x2": 1.0, "s32": 1.0}, "pairs": 1, "query": 1, "target": 1,
                "smith_waterman": {m: {"ms": 1.0, "gcells_per_s": 1.0} for m in ("scalar", "plain", "dpx")}},
        "dsmem": {"error": "RuntimeError: synthetic failure", "trace": ""},
        "fp8": {"n": 8192, "fp8_ms": 1.0, "bf16_ms": 2.0, "fp8_tflops": 2.0, "bf16_tflops": 1.0,
                "relative_error_vs_reference": 1e-6},
    }


def test_report_renders_every_part_and_follows_the_schema():
    meta = {"gpu": "synthetic", "date": "2000-01-01"}
    results = SCRIPT["report"](synthetic_data(), meta)
    d = results.to_dict()
    assert gb.validate(d) == []
    metrics = [row["metric"] for row in d["headline"]]
    assert any("L1 hit" in m for m in metrics) and any("MAPE" in m for m in metrics)
    assert any("decoded SASS" in m for m in metrics) and any("chase, the paper's" in m for m in metrics)
    assert any("TB/s" in m for m in metrics) and any("FP8" in m for m in metrics)
    assert any(s["title"] == "Parts that failed in this run" for s in d["sections"])   # dsmem's error is said
    assert "Smith-Waterman" in gb.render(d)
