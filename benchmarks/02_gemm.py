"""GEMM on the GPU: the paper's tile sweep with energy, the kernel ladder against cuBLAS, and
the performance and energy models fitted on a sweep recorded in the same run.

Run on a GPU:  python benchmarks/02_gemm.py [--quick]   (or: gpulab bench 02; about four
minutes on an H200, most of it the energy windows). Writes
benchmarks/results/02_gemm.{json,md} and the sweep CSV benchmarks/data/02_gemm_sweep.csv
(with --quick, both into the --out folder). ``GEMM_SWEEP_SECONDS`` caps the model sweep
(default 150 s).

1. The paper's tiled kernel (arXiv 2411.16954: T x T threads, one output each, 2 T^2 floats
   of shared memory) for T from 1 to 32 at 4096^3 and (T >= 4) 8192^3: time, TFLOP/s,
   energy per call above idle, GFLOP/J, mean W, registers, blocks per SM, occupancy.
   Confirm or refute "16 is best". Unlike the paper's scripts (one cold launch, constant
   inputs 1.0 and 2.0, nvidia-smi over the whole process): warm medians of CUDA-event
   timings on random inputs, and NVML's energy counter around >= 1 s of calls, idle
   power subtracted (gpulab.gemm.energy).
2. The ladder at 4096^3 against torch FP32 with TF32 off (ANCHORS.md: about 51 TFLOP/s;
   FP32 peak 66.9). Goal (issue 17): the best numba kernel within 1.5x of it (34 TFLOP/s or
   more). TF32 and BF16 cuBLAS beside it: tensor cores, which numba cannot use.
3. Models: shapes M, N, K from 256 to 8192 (awkward sizes among them) x kernels, each with
   time and a >= 1 s energy window, into the sweep CSV; the paper's random forest, the
   analytic model and the hybrid scored on the paper's random 80/20 split and on held-out
   shapes. Goal: on held-out shapes, runtime R^2 >= 0.95 and median error <= 15%.

Correctness is checked first, against torch in float64, on ragged shapes.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch

import gpulab
import gpulab.benchmark as gb
from gpulab.gemm import energy, kernels as K, models, resources as R

STEM, TITLE = "02_gemm", "GEMM: tiling, occupancy, performance and energy models"
TILES = (1, 2, 4, 8, 12, 16, 24, 32)
SIZES = (4096, 8192)
LADDER = ("naive", "coalesced", "tiled", "regtile1d", "regtile2d", "double_buffered")
SWEEP_DIMS = (256, 384, 1000, 1024, 2048, 3000, 4096, 6144, 8192)
SWEEP_KERNELS = (("tiled", 8), ("tiled", 16), ("tiled", 32), ("regtile1d", 0), ("regtile2d", 0),
                 ("double_buffered", 0))
QUICK = {"tiles": (4, 16), "sizes": (1024,), "ladder_n": 1024, "dims": (256, 1000), "shapes": 4}
GOAL_VS_TORCH = 1 / 1.5        # issue 17: the best numba kernel within 1.5x of torch FP32 (TF32 off)
GOAL_R2, GOAL_MEDIAN_PCT = 0.95, 15.0
FP32_PEAK_TFLOPS = 66.9
SWEEP_CSV = Path(__file__).resolve().parent / "data" / "02_gemm_sweep.csv"


def _tflops(m, n, k, ms):
    return 2.0 * m * n * k / (ms * 1e-3) / 1e12


def _time_ms(fn) -> float:
    """A warm median of CUDA-event timings; few runs for slow calls (T = 1 takes seconds)."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    once = start.elapsed_time(end)
    if once > 200:
        return once
    return gpulab.bench(fn, warmup=2, max_seconds=0.5).median_ms


def _inputs(m, n, k, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    a = torch.randn(m, k, device="cuda", generator=g)
    b = torch.randn(k, n, device="cuda", generator=g)
    return a, b, torch.empty(m, n, device="cuda")


def _ours(name, tile, a, b, out):
    return lambda: K.gemm(a, b, kernel=name, tile=tile, out=out)


def _resources(name, tile, a, b, out):
    """Registers (compiled), declared shared bytes, blocks per SM from the driver
    (cuOccupancyMaxActiveBlocksPerMultiprocessor) and from chapter 01's calculator."""
    fn, grid, block, grouped = K.launch_config(name, a.shape[0], b.shape[1], tile)
    args = (a, b.view(1, *b.shape) if grouped else b, out, 1.0, 0.0, out)
    threads = block if isinstance(block, int) else math.prod(block)
    regs = R.get_regs_per_thread(fn, args)
    shared = R.get_shared_mem_per_block(fn, args)
    compiled = R.compiled_kernel(fn, args)
    sms = R.H200_SMS
    per_sm = compiled.max_cooperative_grid_blocks(threads) // sms
    calc, limiter = R.blocks_per_sm(threads, regs, shared)
    return {"threads": threads, "registers": regs, "shared_bytes": shared,
            "blocks_per_sm": per_sm, "blocks_per_sm_ch01": calc, "limiter_ch01": limiter,
            "occupancy": per_sm * threads / 2048, "tiles": math.prod(grid),
            "waves": R.waves(math.prod(grid), sms, max(1, per_sm))}


def _energy(meter, fn, flops) -> dict:
    r = meter.measure(fn, flops=flops, warmup=False)   # every caller timed fn first: it is warm
    if not r.available:
        return {"available": False, "reason": r.reason}
    return {"available": True, "mj_per_call": r.joules_per_call * 1e3, "mean_w": r.mean_w, "idle_w": r.idle_w,
            "gflop_per_j": r.gflop_per_j, "board_mj_per_call": r.joules / r.calls * 1e3, "calls": r.calls,
            "seconds": r.seconds, "sm_clock_mhz": r.sm_clock_mhz, "temperature_c": r.temperature_c}


def _check_correct():
    for name in LADDER:
        for (m, n, k) in ((1000, 1030, 777), (129, 67, 1)):
            a, b, out = _inputs(m, n, k, seed=m + k)
            c = torch.randn(m, n, device="cuda")
            K.gemm(a, b, c, alpha=1.25, beta=-0.5, kernel=name, out=out)
            ref = 1.25 * (a.double() @ b.double()) - 0.5 * c.double()
            err = (out.double() - ref).abs().max().item()
            assert err < 1e-3, f"{name} at {(m, n, k)}: max error {err}"


def measure(quick: bool = False) -> dict:
    _check_correct()
    meter = energy.open_meter()
    tiles = QUICK["tiles"] if quick else TILES
    sizes = QUICK["sizes"] if quick else SIZES
    data = {"idle_w": meter.idle_power(), "tile_sweep": [], "ladder": [], "sweep": []}
    for s in sizes:
        a, b, out = _inputs(s, s, s)
        last = None
        for t in sorted(tiles, reverse=True):         # large T first: they predict the small ones
            if last is not None:
                # time grows at least as 1/T^2 as T shrinks (a quarter of the threads per block,
                # and the block slots cap the SM): skip a T whose call would take over 8 s
                predicted = last[1] * (last[0] / t) ** 2
                if predicted > 8000:
                    data["tile_sweep"].append({"size": s, "tile": t, "skipped": f"predicted {predicted / 1e3:.0f} s a call"})
                    print(f"  tiled T={t} at {s}^3: skipped (predicted {predicted / 1e3:.0f} s a call)", flush=True)
                    continue
            fn = _ours("tiled", t, a, b, out)
            ms = _time_ms(fn)
            last = (t, ms)
            row = {"size": s, "tile": t, "ms": ms, "tflops": _tflops(s, s, s, ms),
                   **_resources("tiled", t, a, b, out), **_energy(meter, fn, 2.0 * s ** 3)}
            data["tile_sweep"].append(row)
            print(f"  tiled T={t} at {s}^3: {ms:.2f} ms, {row['tflops']:.2f} TFLOP/s", flush=True)
    n = QUICK["ladder_n"] if quick else 4096
    a, b, out = _inputs(n, n, n)
    for name in LADDER:
        fn = _ours(name, 16, a, b, out)
        ms = _time_ms(fn)
        data["ladder"].append({"kernel": name, "ms": ms, "tflops": _tflops(n, n, n, ms),
                               **_resources(name, 16, a, b, out), **_energy(meter, fn, 2.0 * n ** 3)})
        print(f"  {name} at {n}^3: {ms:.2f} ms, {data['ladder'][-1]['tflops']:.2f} TFLOP/s", flush=True)
    bf_a, bf_b = a.bfloat16(), b.bfloat16()
    for label, tf32, x, y in (("torch FP32 (TF32 off)", False, a, b), ("torch TF32", True, a, b),
                              ("torch BF16", False, bf_a, bf_b)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        fn = (lambda x=x, y=y: torch.matmul(x, y))
        ms = _time_ms(fn)
        data["ladder"].append({"kernel": label, "ms": ms, "tflops": _tflops(n, n, n, ms),
                               **_energy(meter, fn, 2.0 * n ** 3)})
        print(f"  {label} at {n}^3: {ms:.2f} ms, {data['ladder'][-1]['tflops']:.2f} TFLOP/s", flush=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    data["ladder_n"] = n
    data["sweep"] = _model_sweep(meter, quick)
    return data


def _model_sweep(meter, quick: bool) -> list[dict]:
    """Shapes drawn from SWEEP_DIMS (seeded), every kernel of SWEEP_KERNELS on each, until
    the time cap; rows in the sweep CSV's format."""
    dims = QUICK["dims"] if quick else SWEEP_DIMS
    count = QUICK["shapes"] if quick else 40
    cap = float(os.environ.get("GEMM_SWEEP_SECONDS", "150")) if not quick else 30.0
    g = torch.Generator().manual_seed(17)
    shapes = []
    while len(shapes) < count:
        shape = tuple(dims[int(i)] for i in torch.randint(0, len(dims), (3,), generator=g))
        if shape not in shapes:
            shapes.append(shape)
    rows, start = [], time.monotonic()
    gpu = torch.cuda.get_device_name(0)
    for m, n, k in shapes:
        if time.monotonic() - start > cap:
            break
        a, b, out = _inputs(m, n, k, seed=m * 7 + n * 3 + k)
        for name, tile in SWEEP_KERNELS:
            fn = _ours(name, tile or 16, a, b, out)
            ms = _time_ms(fn)
            res = _resources(name, tile or 16, a, b, out)
            e = _energy(meter, fn, 2.0 * m * n * k)
            if not e["available"]:
                continue
            cfg = getattr(K.launch_config(name, 1, 1, tile or 16)[0], "config", None)
            bm, bn, bk = (tile, tile, tile) if cfg is None else (cfg.bm, cfg.bn, cfg.bk)
            rows.append({"m": m, "n": n, "k": k, "kernel": name, "tile": tile, "block_m": bm, "block_n": bn,
                         "block_k": bk, "threads": res["threads"], "blocks_per_sm": res["blocks_per_sm"],
                         "time_ms": ms, "power_w": e["mean_w"], "energy_mj": e["board_mj_per_call"],
                         "source": f"{gpu}, benchmarks/02_gemm.py"})
        print(f"  sweep {m}x{n}x{k}: {len(rows)} rows, {time.monotonic() - start:.0f} s", flush=True)
    return rows


def _fmt(v, digits=3):
    return "-" if v is None else (f"{v:.{digits}g}" if isinstance(v, float) else str(v))


def report(data: dict, meta: dict | None = None, quick: bool = False) -> gb.Results:
    results = gb.Results(STEM, TITLE, meta=meta, data=data, quick=quick)
    n = data["ladder_n"]
    ladder = {r["kernel"]: r for r in data["ladder"]}
    numba = [r for r in data["ladder"] if r["kernel"] in LADDER]
    best = max(numba, key=lambda r: r["tflops"])
    torch_fp32 = ladder["torch FP32 (TF32 off)"]
    results.headline(f"best numba kernel at {n}^3 ({best['kernel']}, TFLOP/s)", best["tflops"],
                     "torch FP32 (TF32 off)", torch_fp32["tflops"], goal=GOAL_VS_TORCH, lower_is_better=False,
                     unit="TFLOP/s", note="goal: within 1.5x of cuBLAS FP32 (issue 17)")
    tile_rows = [r for r in data["tile_sweep"] if "skipped" not in r]
    skipped = [r for r in data["tile_sweep"] if "skipped" in r]
    for s in sorted({r["size"] for r in tile_rows}):
        at = [r for r in tile_rows if r["size"] == s]
        fastest = min(at, key=lambda r: r["ms"])
        sixteen = next((r for r in at if r["tile"] == 16), None)
        if sixteen is not None:
            results.headline(f"tiled T=16 against the best T (T={fastest['tile']}) at {s}^3 (time)", sixteen["ms"],
                             f"tiled T={fastest['tile']}", fastest["ms"], unit="ms",
                             note="the paper: 16 is best; ratio 1 confirms it")
    rows = data["sweep"]
    if len(rows) >= 10 and len({(r["m"], r["n"], r["k"]) for r in rows}) >= 5:
        scores = _model_scores(rows)
        for model in ("forest", "hybrid"):
            s = scores[("shapes", model)]["time"]
            results.headline(f"held-out shapes, {model}: runtime R^2", s["r2"], goal=GOAL_R2, lower_is_better=False,
                             note="issue 17: >= 0.95")
            results.headline(f"held-out shapes, {model}: runtime median % error", s["median_pct"],
                             goal=GOAL_MEDIAN_PCT, unit="%", note="issue 17: <= 15%")
        results.section("Models (time, power, energy: R^2 / mean % / median %)", table={
            "columns": ["split", "model", "time", "power", "energy", "train/test rows"],
            "rows": [[split, model] + [f"{v[q]['r2']:.3f} / {v[q]['mean_pct']:.1f} / {v[q]['median_pct']:.1f}"
                                       for q in ("time", "power", "energy")] + [f"{v['train']}/{v['test']}"]
                     for (split, model), v in scores.items()]},
            after=f"{len(rows)} sweep rows on this GPU, in benchmarks/data/02_gemm_sweep.csv.")
    results.section("Tile sweep of the paper's kernel", table={
        "columns": ["size", "T", "ms", "TFLOP/s", "mJ/call above idle", "GFLOP/J", "mean W", "regs",
                    "blocks/SM", "occupancy", "waves"],
        "rows": [[r["size"], r["tile"], _fmt(r["ms"]), _fmt(r["tflops"]), _fmt(r.get("mj_per_call")),
                  _fmt(r.get("gflop_per_j")), _fmt(r.get("mean_w")), r["registers"], r["blocks_per_sm"],
                  _fmt(r["occupancy"]), r["waves"]] for r in tile_rows]},
        after=([f"Idle power {data['idle_w']:.0f} W, subtracted."] if data.get("idle_w") else [])
        + [f"T={r['tile']} at {r['size']}^3 not run: {r['skipped']}." for r in skipped])
    results.section(f"The ladder at {n}^3", table={
        "columns": ["kernel", "ms", "TFLOP/s", "% of FP32 peak", "x torch FP32", "GFLOP/J", "mean W", "regs",
                    "blocks/SM"],
        "rows": [[r["kernel"], _fmt(r["ms"]), _fmt(r["tflops"]), _fmt(100 * r["tflops"] / FP32_PEAK_TFLOPS),
                  _fmt(r["tflops"] / torch_fp32["tflops"]), _fmt(r.get("gflop_per_j")), _fmt(r.get("mean_w")),
                  r.get("registers", "-"), r.get("blocks_per_sm", "-")] for r in data["ladder"]]},
        after="TF32 and BF16 run on tensor cores, which numba kernels cannot use.")
    return results


def _model_scores(rows) -> dict:
    out = {}
    for split_name, split in (("random", models.random_split(len(rows), 0.2, seed=0)),
                              ("shapes", models.shape_split(rows, 0.2, seed=0))):
        for name, make in (("forest", models.ForestModel), ("analytic", models.AnalyticModel),
                           ("hybrid", models.HybridModel)):
            out[(split_name, name)] = models.evaluate(make(), rows, split)
    return out


def main(argv=None):
    args = gb.parse_args(__doc__, argv)
    gb.require_gpu(f"benchmarks/{STEM}.py")
    data = measure(args.quick)
    if data["sweep"]:
        models.write_sweep(data["sweep"], Path(args.out) / "02_gemm_sweep.csv" if args.quick else SWEEP_CSV)
    report(data, quick=args.quick).write(args.out)


if __name__ == "__main__":
    main()
