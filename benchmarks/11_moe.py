"""Chapter 11 benchmark (run on a GPU): MoE layer kernels and the expert-offload pipeline.

    python benchmarks/11_moe.py [--quick]     # or: gpulab bench 11; about a minute on an H200

Part 1, the MoE FFN (top-2, hidden 1024, FFN 2048, FP32, TF32 off), 8 and 64 experts,
1k to 64k tokens. Three torch peers on cuBLAS FP32: the specification's loop over experts
(``torch_impl.moe_ffn``: a ``nonzero`` per expert and input checks, each a host sync),
the loop over contiguous slices after one sort by expert (one host sync per layer) and
``torch._grouped_mm`` after the same sort (where this torch has it; FP32 takes its
fallback, one ``mm`` per group); the host syncs of one call of each are counted with
torch's sync debug mode. Against them: the multi-kernel numba path
(permute + gather + 2 grouped GEMMs + combine) with the naive 16x16 grouped GEMM and with
the register-tiled one (which moe_ffn's gemm="auto" picks from 64 rows per expert),
and the fused persistent kernel, each checked
against the torch loop first, then timed (medians of CUDA events after warm-up). The first
grouped GEMM alone (silu epilogue) is timed with both kernels. The naive multi-kernel path
is skipped at 65536 tokens (it takes ~160 ms a call). The bound is the FP32 roofline:
2 * 2 * T * k * H * F FLOP over the measured FP32 peak.

Part 2, expert offload: experts in pinned host memory, copies on their own stream under
compute, replaying a routing trace; the achieved host-to-device bandwidth against the
measured pinned-copy peak, and how much of the copy time compute hides.

Writes benchmarks/results/11_moe.json and the .md rendered from it (gpulab.benchmark).
"""
from __future__ import annotations

import sys
import time
import warnings

import torch

import gpulab
import gpulab.benchmark as gb
from gpulab import harness
from gpulab.moe import baselines
from gpulab.moe import kernels as K
from gpulab.moe import offload as off
from gpulab.moe import torch_impl as R

H, F, TOPK = 1024, 2048, 2
EXPERTS = (8, 64)         # the fewest and the most (16 and 32 sat between them: git history)
TOKENS = (1024, 4096, 16384, 65536)
QUICK_EXPERTS, QUICK_TOKENS = (8,), (1024,)
STEM, TITLE = "11_moe", "MoE kernels and expert offload"
GOAL_VS_TORCH = 1.5     # the course's rule: within 1.5x of the peer measured side by side
BUDGET_S = 55           # stop adding sizes past this (the largest ones go last)
NAIVE_MAX_TOKENS = 16384  # the naive GEMM's layer and GEMM times only up to this size


#: FP32 lanes per multiprocessor by compute capability (Hopper: 128), for the rated peak
FP32_LANES_PER_SM = {"9.0": 128}
#: the torch peers: (name in the results, function); the first is the specification's loop
TORCH_LOOP, TORCH_SORTED, TORCH_GROUPED = "torch loop", "torch sorted", "torch grouped_mm"


def _spec_loop(x, w1, w2, idx, w):
    return R.moe_ffn.__wrapped__(x, w1, w2, idx, w)


def torch_peers() -> tuple[list[tuple[str, object]], str]:
    """The torch peers this torch can run, and a note on torch._grouped_mm (tried once on a
    tiny case, so that a torch without it, or without FP32 support, is recorded)."""
    peers = [(TORCH_LOOP, _spec_loop), (TORCH_SORTED, baselines.moe_ffn_sorted)]
    problem = baselines.grouped_mm_problem("cuda")
    if problem:                       # recorded, never faked
        return peers, problem + ": not timed"
    peers.append((TORCH_GROUPED, baselines.moe_ffn_grouped_mm))
    return peers, f"torch._grouped_mm timed (torch {torch.__version__})"


def rated_fp32_tflops(meta: dict) -> float | None:
    """SMs x FP32 lanes x 2 FLOP (an FMA) x the rated SM clock: the datasheet's FP32 peak
    (H200: 132 x 128 x 2 x 1.98 GHz = 66.9 TFLOP/s, the figure NVIDIA gives for Hopper's
    SXM part)."""
    lanes = FP32_LANES_PER_SM.get(str(meta.get("compute capability")))
    sms, mhz = meta.get("multiprocessors"), meta.get("rated sm clock (MHz)")
    if not (lanes and sms and mhz):
        return None
    return sms * lanes * 2 * float(mhz) * 1e6 / 1e12


def host_syncs(fn, *args, **kw) -> int:
    """How many times one call of ``fn`` makes the host wait for the GPU (torch's sync
    debug mode warns at each: ``.tolist()``, ``nonzero``, ``.cpu()``, ``.item()``)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn(*args, **kw)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def _naive_layer(*args, **kw):
    return K.moe_ffn(*args, gemm="naive", **kw)


def _regtile_layer(*args, **kw):
    return K.moe_ffn(*args, gemm="regtile", **kw)


def layer_inputs(T, E, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(T, H, device="cuda", generator=g)
    w1 = torch.randn(E, H, F, device="cuda", generator=g) / H**0.5
    w2 = torch.randn(E, F, H, device="cuda", generator=g) / F**0.5
    logits = torch.randn(T, E, device="cuda", generator=g)
    r = K.route(logits, TOPK)
    return x, w1, w2, r.topk_idx, r.topk_weight


def bench_layer(T, E, peaks, peers):
    x, w1, w2, idx, w = layer_inputs(T, E)
    want = R.moe_ffn(x, w1, w2, idx, w)
    naive = T <= NAIVE_MAX_TOKENS
    checks = [("multi-kernel", _regtile_layer), ("fused", K.moe_ffn_fused)] + peers[1:]
    if naive:
        checks.append(("multi-kernel naive", _naive_layer))
    for name, fn in checks:
        got = fn(x, w1, w2, idx, w)
        err = (got - want).abs().max().item()
        if not err <= 1e-3 * max(1.0, want.abs().max().item()):
            raise SystemExit(f"{name} is wrong at T={T}, E={E}: max error {err}")
    flops = 2 * 2 * T * TOPK * H * F
    # bytes: x, both weight sets, the routed rows in and out (the least a layer must touch)
    nbytes = 4 * (2 * T * H + 2 * E * H * F)
    row = {"tokens": T, "experts": E}
    few = 3 if T >= 16384 else None
    timed = [(name, fn, {}) for name, fn in peers] + [
        ("multi-kernel", _regtile_layer, {"validate": False}),
        ("fused", K.moe_ffn_fused, {"validate": False})]
    if naive:
        timed.append(("multi-kernel naive", _naive_layer, {"validate": False}))
    for name, fn, kw in timed:
        t = harness.bench(fn, x, w1, w2, idx, w, warmup=2, reps=few, max_seconds=0.5, name=name, **kw)
        rl = gpulab.roofline(t.median_ms, nbytes, flops, peaks)
        row[name] = {"ms": round(t.median_ms, 4), "tflops": round(rl.achieved_gflops / 1e3, 2),
                     "roofline_fraction": round(rl.fraction, 3)}
    row["host syncs"] = {name: host_syncs(fn, x, w1, w2, idx, w) for name, fn in peers}
    row["host syncs"]["multi-kernel"] = host_syncs(_regtile_layer, x, w1, w2, idx, w, validate=False)
    # the steps of the multi-kernel path, at this size
    perm = K.permute(idx, E, validate=False)
    row["permute ms"] = round(harness.bench(K.permute, idx, E, None, False, warmup=2, reps=few).median_ms, 4)
    xs = K.gather_rows(x, perm)
    gemm_flops = 2 * T * TOPK * H * F
    tiles = K.gemm_tiles(perm)
    gemm_ms = harness.bench(K.grouped_gemm, xs, w1, perm, "silu", tiles=tiles, warmup=2, reps=few,
                           max_seconds=0.5).median_ms
    row["grouped GEMM 1 ms"] = round(gemm_ms, 4)
    row["grouped GEMM 1 TFLOP/s"] = round(gemm_flops / gemm_ms / 1e9, 2)
    if naive:
        naive_ms = harness.bench(K.grouped_gemm_naive, xs, w1, perm, "silu", warmup=2, reps=few,
                                 max_seconds=0.5).median_ms
        row["naive GEMM 1 ms"] = round(naive_ms, 4)
        row["naive GEMM 1 TFLOP/s"] = round(gemm_flops / naive_ms / 1e9, 2)
    row["bound ms"] = round(gpulab.roofline(1.0, nbytes, flops, peaks).bound_ms, 4)
    return row


def bench_offload():
    """Replay a drifting routing trace with real copies; report bandwidth and hidden copy time.

    Each layer routes a step's tokens to a working set of ACTIVE experts that drifts (two
    members change every step), so a cache of SLOTS < E slots misses; with B tokens per
    step an expert gets about 1.4k tokens, enough GPU work (FP32 matmuls) to be
    comparable to one expert's copy, so overlap matters.
    """
    L, E, Hh, Ff, B, ACTIVE, SLOTS, steps = 4, 16, 1024, 2048, 4096, 6, 8, 10
    g = torch.Generator().manual_seed(0)
    topk = torch.empty(steps, L, B, TOPK, dtype=torch.long)
    probs = torch.zeros(steps, L, B, E)
    active = [torch.randperm(E, generator=g)[:ACTIVE].tolist() for _ in range(L)]
    for s in range(steps):
        for l in range(L):
            if s:
                out = [e for e in range(E) if e not in active[l]]
                for slot in torch.randperm(ACTIVE, generator=g)[:2].tolist():
                    active[l][slot] = out.pop(int(torch.randint(0, len(out), (1,), generator=g)))
            pick = torch.rand(B, ACTIVE, generator=g).argsort(1)[:, :TOPK]   # k distinct per token
            topk[s, l] = torch.tensor(active[l])[pick]
            probs[s, l].scatter_(1, topk[s, l], 1.0 / TOPK)
    trace = off.RoutingTrace(topk, probs)
    w1 = (torch.randn(L, E, Hh, Ff) / Hh**0.5).pin_memory()
    w2 = (torch.randn(L, E, Ff, Hh) / Ff**0.5).pin_memory()
    peak = off.measure_h2d_peak()
    results = {"pinned H2D peak GB/s": round(peak, 1), "expert MB": round((w1[0, 0].numel() + w2[0, 0].numel()) * 4 / 1e6, 1),
               "layers": L, "experts": E, "tokens per step": B, "steps": steps, "runs": []}
    results["slots per layer"] = SLOTS
    for policy, prefetch in (("lru", 0), ("score", 0), ("score", 2)):
        off.run_on_gpu(trace, w1, w2, policy, capacity=SLOTS, prefetch=prefetch)   # warm-up
        r = off.run_on_gpu(trace, w1, w2, policy, capacity=SLOTS, prefetch=prefetch)
        copy_ms = r.copy_ms
        compute_ms = sum(ev["end"] - ev["start"] for ev in r.events if ev["resource"] == "GPU compute")
        hidden = off.overlap_ms(r.events)
        achieved = r.bytes_moved / (copy_ms * 1e-3) / 1e9 if copy_ms else 0.0
        results["runs"].append({
            "policy": r.policy, "hit rate": round(r.hit_rate, 3), "copies": r.copies,
            "GB moved": round(r.bytes_moved / 1e9, 3), "wall ms": round(r.time_ms, 2),
            "copy busy ms": round(copy_ms, 2), "compute busy ms": round(compute_ms, 2),
            "achieved H2D GB/s": round(achieved, 1), "of peak": round(achieved / peak, 3),
            "copy time hidden by compute": round(hidden / copy_ms, 3) if copy_ms else None})
    return results


def measure(quick: bool) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    start = time.time()
    peaks = gpulab.machine_peaks()
    peers, grouped_mm_note = torch_peers()
    print(grouped_mm_note, flush=True)
    rows = []
    for T in (QUICK_TOKENS if quick else TOKENS):
        for E in (QUICK_EXPERTS if quick else EXPERTS):
            if time.time() - start > BUDGET_S:
                print(f"(time budget reached: skipping T={T}, E={E})", file=sys.stderr)
                continue
            row = bench_layer(T, E, peaks, peers)
            rows.append(row)
            naive = row.get("multi-kernel naive", {}).get("ms", float("nan"))
            grouped = row.get(TORCH_GROUPED, {}).get("ms", float("nan"))
            print(f"T={T:6d} E={E:3d}  torch loop {row[TORCH_LOOP]['ms']:9.3f} ms  sorted "
                  f"{row[TORCH_SORTED]['ms']:9.3f} ms  grouped_mm {grouped:9.3f} ms  naive multi {naive:9.3f} ms  "
                  f"multi {row['multi-kernel']['ms']:9.3f} ms ({row['multi-kernel']['tflops']:5.2f} TFLOP/s)  "
                  f"fused {row['fused']['ms']:9.3f} ms  bound {row['bound ms']:.3f} ms", flush=True)
    offload = bench_offload()
    for run in offload["runs"]:
        print(run, flush=True)
    return {"peaks": {"copy GB/s": peaks.copy_gbps, "fp32 GFLOP/s": peaks.fp32_gflops},
            "shape": {"hidden": H, "ffn": F, "top_k": TOPK, "dtype": "float32"},
            "gemm": {"tile": f"{K.BM}x{K.BN}x{K.BK}", "per_thread": f"{K.TM}x{K.TN}",
                     "auto_regtile_from_rows_per_expert": K.REGTILE_MIN_ROWS_PER_EXPERT,
                     "naive_max_tokens": NAIVE_MAX_TOKENS},
            "grouped_mm": grouped_mm_note,
            "layer": rows, "offload": offload, "seconds": round(time.time() - start, 1)}


PEER_NAMES = {TORCH_LOOP: "torch loop over experts (nonzero per expert, cuBLAS FP32)",
              TORCH_SORTED: "torch, sorted by expert once, loop over slices (cuBLAS FP32)",
              TORCH_GROUPED: "torch, sorted once, torch._grouped_mm (FP32)"}


def _ms(r, name):
    return r.get(name, {}).get("ms", "-")


def _share(value, peak):
    """value / peak as a percentage, '-' where either is missing."""
    if not isinstance(value, (int, float)) or not peak:
        return "-"
    return f"{100 * value / peak:.0f}%"


def time_table(rows) -> dict:
    return {"columns": ["tokens", "experts", "torch loop (ms)", "torch sorted (ms)", "torch grouped_mm (ms)",
                        "multi naive (ms)", "multi reg-tiled (ms)", "fused (ms)", "bound (ms)", "permute (ms)"],
            "rows": [[str(c) for c in (r["tokens"], r["experts"], _ms(r, TORCH_LOOP), _ms(r, TORCH_SORTED),
                                       _ms(r, TORCH_GROUPED), _ms(r, "multi-kernel naive"), _ms(r, "multi-kernel"),
                                       _ms(r, "fused"), r["bound ms"], r["permute ms"])] for r in rows]}


def throughput_table(rows, measured_tflops, rated_tflops) -> dict:
    out = []
    for r in rows:
        multi, gemm1 = r["multi-kernel"]["tflops"], r["grouped GEMM 1 TFLOP/s"]
        out.append([r["tokens"], r["experts"], r.get("multi-kernel naive", {}).get("tflops", "-"), multi,
                    _share(multi, measured_tflops), _share(multi, rated_tflops), r["fused"]["tflops"],
                    _share(r["fused"]["tflops"], measured_tflops), r.get("naive GEMM 1 TFLOP/s", "-"), gemm1,
                    _share(gemm1, measured_tflops), _share(gemm1, rated_tflops)])
    return {"columns": ["tokens", "experts", "multi naive TFLOP/s", "multi reg-tiled TFLOP/s",
                        "of cuBLAS SGEMM", "of rated peak", "fused TFLOP/s", "fused of cuBLAS SGEMM",
                        "GEMM 1 naive TFLOP/s", "GEMM 1 reg-tiled TFLOP/s", "GEMM 1 of cuBLAS SGEMM",
                        "GEMM 1 of rated peak"],
            "rows": [[str(c) for c in row] for row in out]}


def sync_table(rows) -> dict:
    names = (TORCH_LOOP, TORCH_SORTED, TORCH_GROUPED, "multi-kernel")
    return {"columns": ["tokens", "experts"] + [f"{n} syncs" for n in names],
            "rows": [[str(r["tokens"]), str(r["experts"])] + [str(r["host syncs"].get(n, "-")) for n in names]
                     for r in rows if "host syncs" in r]}


def best_sync_free_peer(r) -> tuple[str, float] | None:
    """The faster of the torch layers without per-expert syncs, if this run timed one."""
    timed = [(r[name]["ms"], name) for name in (TORCH_SORTED, TORCH_GROUPED) if name in r]
    if not timed:
        return None
    ms, name = min(timed)
    return name, ms


def report(data: dict, meta: dict | None = None, quick: bool = False) -> gb.Results:
    """The results of one run, from its measurements (also used to convert older files)."""
    rows, offload, peaks, gemm, shape = data["layer"], data["offload"], data["peaks"], data["gemm"], data["shape"]
    results = gb.Results(STEM, TITLE, meta=meta, data=data, quick=quick)
    measured_tflops = peaks["fp32 GFLOP/s"] / 1e3
    rated_tflops = rated_fp32_tflops(results.meta)
    expert_counts = sorted({r["experts"] for r in rows})
    for r in rows:   # the fewest and the most experts at every token count
        if r["experts"] not in (expert_counts[0], expert_counts[-1]):
            continue
        metric = f"MoE FFN, {r['tokens']} tokens, {r['experts']} experts (ms)"
        note = "numba multi-kernel path, register-tiled grouped GEMM; same run"
        results.headline(metric, r["multi-kernel"]["ms"], PEER_NAMES[TORCH_LOOP], r[TORCH_LOOP]["ms"],
                         goal=GOAL_VS_TORCH, unit="ms", note=note)
        fair = best_sync_free_peer(r)
        if fair:
            results.headline(metric.replace(" (ms)", ", fair peer (ms)"), r["multi-kernel"]["ms"],
                             PEER_NAMES[fair[0]], fair[1], goal=GOAL_VS_TORCH, unit="ms",
                             note=note + "; the faster torch layer without per-expert syncs")
    best = max(offload["runs"], key=lambda run: run["achieved H2D GB/s"])
    results.headline("expert offload, host-to-device bandwidth (GB/s)", best["achieved H2D GB/s"],
                     "pinned copy peak (one 256 MiB copy)", offload["pinned H2D peak GB/s"], goal=0.9,
                     lower_is_better=False, unit="GB/s", note=f"policy {best['policy']}; same run")
    rated = (f"; the rated FP32 peak is {rated_tflops:.1f} TFLOP/s ({results.meta.get('multiprocessors')} SMs x "
             f"{FP32_LANES_PER_SM.get(str(results.meta.get('compute capability')))} FP32 lanes x 2 FLOP x "
             f"{float(results.meta.get('rated sm clock (MHz)')) / 1e3:.2f} GHz: the datasheet figure)"
             if rated_tflops else "")
    results.section(
        "MoE FFN layer: times",
        [f"Measured ceilings: copy {peaks['copy GB/s']:.0f} GB/s, FP32 {measured_tflops:.1f} TFLOP/s (cuBLAS SGEMM "
         f"4096^3, TF32 off){rated}. MoE FFN top-{shape['top_k']}, hidden {shape['hidden']}, FFN {shape['ffn']}, "
         "FP32 (TF32 off). Medians of CUDA events after warm-up. The FP32 roofline bound is the FLOP count over the "
         "measured FP32 peak (these sizes are compute-bound).",
         "Torch peers: the specification's loop over experts (a `nonzero` per expert, and its input checks read "
         "`topk_idx.min()` and `max()` back), the loop over contiguous slices after one stable sort by expert (the "
         "offsets read back once per layer), and `torch._grouped_mm` after the same sort"
         + (f" ({data['grouped_mm']})." if "grouped_mm" in data else ".")
         + ("" if any(TORCH_SORTED in r for r in rows) else
            " This run predates the last two and timed only the first: their columns show -."),
         f"Multi-kernel: the layer with the naive 16x16 grouped GEMM and with the register-tiled one "
         f"({gemm['tile']} block tile, {gemm['per_thread']} per thread; `gemm='auto'` picks it from "
         f"{gemm['auto_regtile_from_rows_per_expert']} rows per expert, and every column names its GEMM "
         f"explicitly). The naive kernel is not timed above {gemm['naive_max_tokens']} tokens (-)."],
        table=time_table(rows))
    results.section(
        "MoE FFN layer: throughput against the two FP32 peaks",
        [f"Each kernel's TFLOP/s as a share of the measured cuBLAS SGEMM ({measured_tflops:.1f} TFLOP/s)"
         + (f" and of the rated peak ({rated_tflops:.1f} TFLOP/s)" if rated_tflops else "")
         + f". GEMM 1: the first grouped GEMM alone (T*k x {shape['hidden']} times {shape['hidden']} x "
         f"{shape['ffn']}, silu)."],
        table=throughput_table(rows, measured_tflops, rated_tflops))
    if any("host syncs" in r for r in rows):
        results.section(
            "Host synchronisations per call",
            "Times one call of each layer made the host wait for the GPU (torch.cuda.set_sync_debug_mode('warn') "
            "counts torch's; the numba kernels are launched on torch's stream by cuLaunchKernel and read nothing "
            "back, so the multi-kernel column counts the torch calls around them).",
            table=sync_table(rows))
    results.section(
        f"Expert offload ({offload['layers']} layers x {offload['experts']} experts of {offload['expert MB']} MB, "
        f"{offload['slots per layer']} GPU slots per layer, {offload['tokens per step']} tokens per step)",
        f"Pinned host-to-device peak (one 256 MiB copy): {offload['pinned H2D peak GB/s']} GB/s.",
        table={"columns": ["policy", "hit rate", "copies", "GB moved", "wall (ms)", "copy busy (ms)",
                           "compute busy (ms)", "H2D GB/s", "of peak", "copy hidden"],
               "rows": [[str(r[k]) for k in ("policy", "hit rate", "copies", "GB moved", "wall ms", "copy busy ms",
                                             "compute busy ms", "achieved H2D GB/s", "of peak",
                                             "copy time hidden by compute")] for r in offload["runs"]]})
    return results


def main(argv=None):
    args = gb.parse_args(__doc__, argv)
    gb.require_gpu(f"benchmarks/{STEM}.py")
    data = measure(args.quick)
    report(data, quick=args.quick).write(args.out)
    print(f"done in {data['seconds']:.0f} s")


if __name__ == "__main__":
    main()
