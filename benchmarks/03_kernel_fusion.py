"""Kernel fusion on the GPU: torch eager vs torch.compile vs gpulab's fused kernels.

Run on a GPU:  python benchmarks/03_kernel_fusion.py [--quick]   (or: gpulab bench 03;
about 40 s on an H200). Writes benchmarks/results/03_kernel_fusion.{json,md}, the md
rendered from the json by gpulab.benchmark.

1. Vertical fusion: chains of 2, 4, 8, 16 elementwise ops (affine, relu, clamp, sigmoid,
   repeating, as in ANCHORS.md) on 2^24 .. 2^28 float32 elements. The fused kernel moves
   8 bytes per element whatever the chain length; torch eager moves 8 bytes per element
   per torch kernel. Goal: >= 90% of the measured copy bandwidth, and a speed-up over
   eager close to the ratio of bytes moved.
2. Horizontal fusion: 1 .. 256 small uint8 RGB images of different sizes, each cropped
   (per-item rectangle), resized to 64x64, scaled and normalized. One launch for the
   batch vs a loop of per-item gpulab launches (and torch eager, item by item).
   Goal: >= 5x over the loop from 32 items up.

Correctness is checked first, on sizes that are not multiples of the block.
"""
from __future__ import annotations

import time

import torch

import gpulab
import gpulab.benchmark as gb
from gpulab import fusion as fk
from gpulab import harness

STEM, TITLE = "03_kernel_fusion", "Kernel fusion"
CHAIN_LENGTHS = (2, 4, 8, 16)
LOG_SIZES = (24, 25, 26, 27, 28)
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
QUICK = {"chain_lengths": (2, 16), "log_sizes": (22,), "batches": (1, 32)}
ANCHOR_LOG2 = 26        # ANCHORS.md's size for the chains: the headline compares there
GOAL_VS_COMPILE = 1.5   # the course's rule: within 1.5x of the best peer measured side by side
BENCH = dict(warmup=3, max_seconds=0.25)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def chain(k: int, fastmath: bool = False) -> fk.Pipeline:
    cycle = [fk.affine(1.5, 0.25), fk.relu(), fk.clamp(-1.0, 2.0), fk.sigmoid()]
    return fk.Pipeline(*[cycle[i % 4] for i in range(k)], fastmath=fastmath)


def torch_chain(pipe: fk.Pipeline):
    """The chain as plain torch ops (what eager runs and torch.compile traces)."""
    ops = [(op.torch_fn, op.params) for op in pipe.maps]

    def run(x):
        for fn, params in ops:
            x = fn(x, params)
        return x
    return run


def median_ms(fn, *args, name="") -> float:
    return harness.bench(fn, *args, name=name, **BENCH).median_ms


def check_correctness():
    n = (1 << 20) + 13
    x = torch.randn(n, device="cuda")
    for k in CHAIN_LENGTHS:
        pipe = chain(k)
        torch.testing.assert_close(pipe(x), pipe.reference(x), rtol=1e-5, atol=1e-5)
        fast = chain(k, fastmath=True)
        torch.testing.assert_close(fast(x), pipe.reference(x), rtol=1e-4, atol=1e-5)
    pipe, images, crops = image_batch(32, seed=1)
    for out, ref in zip(pipe.batch(images, crops), pipe.reference_batch(images, crops)):
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    print("correctness: fused chains and the image batch match torch")


def image_batch(n_items: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    images, crops = [], []
    for _ in range(n_items):
        h, w = (int(v) for v in torch.randint(48, 320, (2,), generator=gen))
        images.append(torch.randint(0, 256, (h, w, 3), generator=gen, dtype=torch.uint8).cuda())
        top, left = int(torch.randint(0, h // 4, (1,), generator=gen)), int(torch.randint(0, w // 4, (1,), generator=gen))
        crops.append((top, left, h - top - int(torch.randint(0, h // 4, (1,), generator=gen)),
                      w - left - int(torch.randint(0, w // 4, (1,), generator=gen))))
    pipe = fk.Pipeline(fk.crop(0, 0, 1, 1), fk.resize(64, 64), fk.mul(1 / 255), fk.normalize(MEAN, STD), channels=3)
    return pipe, images, crops


def tune_blocks() -> tuple[int, dict]:
    x = torch.randn(1 << 26, device="cuda")
    pipe = chain(2)
    times = {b: median_ms(lambda v, b=b: pipe(v, blocks_per_sm=b), x) for b in (2, 4, 8, 16, 32)}
    best = min(times, key=times.get)
    print("blocks per SM (chain of 2, 2^26):", {b: f"{t:.4f} ms" for b, t in times.items()}, "-> best", best)
    return best, times


def vertical(peaks, blocks_per_sm, chain_lengths=CHAIN_LENGTHS, log_sizes=LOG_SIZES):
    rows = []
    compiled = {}
    for k in chain_lengths:
        try:
            compiled[k] = torch.compile(torch_chain(chain(k)), dynamic=True)
        except Exception as exc:  # noqa: BLE001  (inductor may be missing on the machine)
            compiled[k] = exc
    for log_n in log_sizes:
        n = 1 << log_n
        x = torch.randn(n, device="cuda")
        dst = torch.empty_like(x)
        copy_ms = median_ms(dst.copy_, x, name="copy")
        copy_gbps = 8 * n / copy_ms / 1e6
        for k in chain_lengths:
            pipe = chain(k)
            eager = torch_chain(pipe)
            row = {"n": n, "log2_n": log_n, "ops": k, "torch_kernels": pipe.torch_kernels(),
                   "copy_ms": copy_ms, "copy_gbps": copy_gbps}
            row["eager_ms"] = median_ms(eager, x, name="eager")
            fn = compiled[k]
            if isinstance(fn, Exception):
                row["compile_ms"], row["compile_error"] = None, f"{type(fn).__name__}: {fn}"[:200]
            else:
                try:
                    torch.testing.assert_close(fn(x[:1000 + k]), eager(x[:1000 + k]), rtol=1e-5, atol=1e-5)
                    row["compile_ms"] = median_ms(fn, x, name="compiled")
                except Exception as exc:  # noqa: BLE001
                    row["compile_ms"], row["compile_error"] = None, f"{type(exc).__name__}: {exc}"[:200]
                    compiled[k] = exc
            row["fused_ms"] = median_ms(lambda v: pipe(v, blocks_per_sm=blocks_per_sm), x, name="fused")
            fast = chain(k, fastmath=True)
            row["fastmath_ms"] = median_ms(lambda v: fast(v, blocks_per_sm=blocks_per_sm), x, name="fastmath")
            row["fastmath_of_copy"] = copy_ms / row["fastmath_ms"]
            row["fused_gbps"] = 8 * n / row["fused_ms"] / 1e6
            row["fused_of_copy"] = row["fused_gbps"] / copy_gbps
            row["speedup_vs_eager"] = row["eager_ms"] / row["fused_ms"]
            row["bytes_ratio"] = pipe.torch_kernels()   # eager moves this many times the fused bytes
            roof = gpulab.roofline(row["fused_ms"], 8 * n, n * pipe.flops_per_pixel(), peaks)
            row["roofline_bound_ms"], row["limit"] = roof.bound_ms, roof.limit
            rows.append(row)
            c = row["compile_ms"]
            print(f"2^{log_n} k={k:2d}: eager {row['eager_ms']:.3f} ms, compile "
                  f"{'n/a' if c is None else f'{c:.3f} ms'}, fused {row['fused_ms']:.3f} ms "
                  f"({100 * row['fused_of_copy']:.0f}% of copy, {row['speedup_vs_eager']:.1f}x eager, "
                  f"fastmath {row['fastmath_ms']:.3f} ms = {100 * row['fastmath_of_copy']:.0f}%, "
                  f"bytes ratio {row['bytes_ratio']})")
        del x, dst
        torch.cuda.empty_cache()
    return rows


def horizontal(batches=BATCHES):
    rows = []
    for b in batches:
        pipe, images, crops = image_batch(b)
        packed = pipe.pack(images, crops)

        def loop():
            for img, c in zip(images, crops):
                pipe(img, crop=c)

        def torch_loop():
            for img, c in zip(images, crops):
                pipe.reference(img, crop=c)

        row = {"items": b, "pixels_out": b * 64 * 64,
               "batch_ms": median_ms(pipe.run_batch, packed, name="batch"),
               "loop_ms": median_ms(loop, name="loop"),
               "torch_loop_ms": median_ms(torch_loop, name="torch loop")}
        t0 = time.perf_counter()
        pipe.pack(images, crops)
        torch.cuda.synchronize()
        row["pack_host_ms"] = (time.perf_counter() - t0) * 1e3
        row["speedup_vs_loop"] = row["loop_ms"] / row["batch_ms"]
        row["speedup_vs_torch_loop"] = row["torch_loop_ms"] / row["batch_ms"]
        rows.append(row)
        print(f"batch of {b:3d}: one launch {row['batch_ms']:.4f} ms, loop of launches {row['loop_ms']:.4f} ms "
              f"({row['speedup_vs_loop']:.1f}x), torch loop {row['torch_loop_ms']:.3f} ms")
    return rows


def vertical_table(vrows) -> dict:
    rows = []
    for r in vrows:
        c = r["compile_ms"]
        rows.append([f"2^{r['log2_n']}", r["ops"], r["torch_kernels"], f"{r['copy_ms']:.3f}", f"{r['eager_ms']:.3f}",
                     "failed" if c is None else f"{c:.3f}", f"{r['fused_ms']:.3f}", f"{100 * r['fused_of_copy']:.0f}%",
                     f"{r['speedup_vs_eager']:.1f}x", f"{r['bytes_ratio']}x",
                     "-" if c is None else f"{c / r['fused_ms']:.2f}x", f"{r['fastmath_ms']:.3f}",
                     f"{100 * r['fastmath_of_copy']:.0f}%", r["limit"]])
    return {"columns": ["n", "k", "torch kernels", "copy ms", "eager ms", "torch.compile ms", "fused ms",
                        "fused % of copy BW", "fused vs eager", "bytes ratio", "compile / fused time",
                        "fused fastmath ms", "fastmath % of copy", "bound"], "rows": rows}


def horizontal_table(hrows) -> dict:
    return {"columns": ["items", "one launch ms", "loop of gpulab launches ms", "speed-up", "torch eager loop ms",
                        "speed-up"],
            "rows": [[r["items"], f"{r['batch_ms']:.4f}", f"{r['loop_ms']:.4f}", f"{r['speedup_vs_loop']:.1f}x",
                      f"{r['torch_loop_ms']:.3f}", f"{r['speedup_vs_torch_loop']:.1f}x"] for r in hrows]}


def report(data: dict, meta: dict | None = None, quick: bool = False) -> gb.Results:
    """The results of one run, from its measurements (also used to convert older files)."""
    tuning, vrows, hrows, run = data["blocks_per_sm"], data["vertical"], data["horizontal"], data["run"]
    results = gb.Results(STEM, TITLE, meta=meta, data=data, quick=quick)
    at = max((r["log2_n"] for r in vrows if r["log2_n"] <= ANCHOR_LOG2), default=vrows[0]["log2_n"])
    for r in (r for r in vrows if r["log2_n"] == at):
        if r["compile_ms"] is not None:
            results.headline(f"chain of {r['ops']} ops on 2^{at} float32 (ms)", r["fused_ms"],
                             f"torch.compile (dynamic={run['compile_dynamic']})", r["compile_ms"],
                             goal=GOAL_VS_COMPILE, unit="ms", note="timed side by side in this run")
        else:
            results.headline(f"chain of {r['ops']} ops on 2^{at} float32 (ms)", r["fused_ms"], "torch eager",
                             r["eager_ms"], goal=GOAL_VS_COMPILE, unit="ms",
                             note="torch.compile failed in this run: " + r.get("compile_error", "?")[:80])
    large = [r for r in vrows if r["log2_n"] >= 26] or vrows
    worst = min(large, key=lambda r: r["fused_of_copy"])
    results.headline("fused, lowest share of copy bandwidth on 2^26+ elements", worst["fused_of_copy"],
                     goal=0.9, lower_is_better=False, note=f"at k={worst['ops']}, 2^{worst['log2_n']}")
    from_32 = [r for r in hrows if r["items"] >= 32] or hrows
    slowest = max(from_32, key=lambda r: r["batch_ms"] / r["loop_ms"])
    results.headline(f"horizontal fusion, {slowest['items']} images (ms)", slowest["batch_ms"],
                     "loop of per-item gpulab launches", slowest["loop_ms"], goal=0.2, unit="ms",
                     note="the least gain from 32 items up; goal: 5x faster than the loop")
    results.section(
        "Set-up",
        f"Medians of CUDA-event timings after warm-up. Copy bandwidth measured beside each size (torch "
        f"`copy_`, read + write). Fused grid: {tuning['best']} blocks per SM (swept: "
        + ", ".join(f"{b}: {t:.4f} ms" for b, t in tuning["times_ms"].items()) + f"). Block {run['block']}, "
        f"unroll {run['unroll']}; torch.compile with dynamic={run['compile_dynamic']}.")
    errors = sorted({r["compile_error"] for r in vrows if r.get("compile_error")})
    results.section(
        "Vertical fusion: chain of k ops (affine, relu, clamp, sigmoid, repeating), float32", table=vertical_table(vrows),
        after=(["torch.compile failed: " + "; ".join(errors)] if errors else []) + [
            "The bound that applies ('bound', from gpulab.roofline with a rough count of FP32 instructions "
            "per element): memory means 8 bytes per element over the copy bandwidth. 'bytes ratio' is how many "
            "times more bytes torch eager moves (one read + write per torch kernel). 'fastmath' compiles the "
            "same chain with approximate exp and division."])
    results.section("Horizontal fusion: batch of RGB uint8 images (48..320 px a side), crop + resize 64x64 + "
                    "scale + normalize", table=horizontal_table(hrows))
    return results


def main(argv=None):
    args = gb.parse_args(__doc__, argv)
    gb.require_gpu(f"benchmarks/{STEM}.py")
    sizes = QUICK if args.quick else {"chain_lengths": CHAIN_LENGTHS, "log_sizes": LOG_SIZES, "batches": BATCHES}
    t0 = time.time()
    check_correctness()
    peaks = gpulab.machine_peaks()
    best, times = tune_blocks()
    vrows = vertical(peaks, best, sizes["chain_lengths"], sizes["log_sizes"])
    hrows = horizontal(sizes["batches"])
    run = {"copy_gbps_peaks": peaks.copy_gbps, "fp32_gflops_peaks": peaks.fp32_gflops, "block": fk.BLOCK,
           "unroll": fk.UNROLL, "compile_dynamic": True, "seconds": round(time.time() - t0, 1)}
    data = {"run": run, "blocks_per_sm": {"best": best, "times_ms": times}, "vertical": vrows, "horizontal": hrows}
    report(data, quick=args.quick).write(args.out)
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
