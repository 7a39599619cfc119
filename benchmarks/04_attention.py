"""Chapter 04 benchmark (run on a GPU): the numba attention kernels against torch's.

    python benchmarks/04_attention.py [--quick]     # or: gpulab bench 04; under 3 minutes on an H200

Part 1, dense attention at B x H = 32 (B 4, H 8), d 64 and 128, N 1K to 32K, causal
(bottom-right = top-left here, Nq = Nk) or not: the numba flash kernel (FP32, no tensor
cores) against torch SDPA's math and memory-efficient backends in FP32 (its fair peers) and
flash and cuDNN in bf16 (tensor cores: the gap is reported, not a goal). Time (medians of
CUDA events after warm-up), FLOP/s (4 B H N^2 d, half if causal) and the peak memory one
call allocates beyond its inputs. Our kernel is checked against the float64 reference on a
slice of heads first. No size is started BUDGET_S seconds after the start (SLA's part runs
first); the sizes left out are recorded as skipped.

Part 2, SLA's benchmark shape: B 2, H 16, d 128, N 32,760, BLKQ 128, BLKK 64, 95% sparsity
(the top 5% of key blocks per query block by SLA's pooled scores): the block-sparse kernel,
the fused SLA kernel and the dense kernel, FlexAttention with the same block mask (bf16,
compiled) where it builds, and dense-equivalent FLOP/s (the dense count over each time),
as SLA reports them.

Writes benchmarks/results/04_attention.json and the .md rendered from it (gpulab.benchmark).
"""
from __future__ import annotations

import time

import torch

import gpulab
import gpulab.benchmark as gb
from gpulab import harness
from gpulab.attention import kernels as K
from gpulab.attention import torch_impl as T

STEM, TITLE = "04_attention", "Attention kernels"
B, H = 4, 8                         # B x H = 32
DIMS = (64, 128)
TOKENS = (1024, 2048, 4096, 8192, 16384, 32768)
QUICK_TOKENS = (1024, 2048)
MATH_MAX_TOKENS = 16384             # SDPA math stores B H N^2 floats twice: 32K would need ~270 GB
GOAL_VS_EFFICIENT = 1.5             # the issue: within 1.5x of SDPA memory-efficient fp32
GOAL_VS_MATH = 1.0                  # faster than SDPA math from N = 2K
SLA_SHAPE = dict(b=2, h=16, n=32760, d=128, blk_q=128, blk_k=64, topk=0.05)
GOAL_SPARSE_SPEEDUP = 10.0          # block-sparse at 95% sparsity: 10x or more faster than dense
GOAL_SLA_VS_SPARSE = 1.3            # SLA within 1.3x of sparse alone
BUDGET_S = 140                      # seconds from the start: the dense sweep adds no size past this


def _sdpa(backend, dtype):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F

    chosen = getattr(SDPBackend, backend)

    def run(q, k, v, causal):
        with sdpa_kernel(chosen):
            return F.scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype), is_causal=causal)

    return run


def _ours(q, k, v, causal):
    return K.attention(q, k, v, causal="bottom_right" if causal else None)[0]


LINES = {"numba flash (fp32)": _ours,
         "SDPA math (fp32)": _sdpa("MATH", torch.float32),
         "SDPA memory-efficient (fp32)": _sdpa("EFFICIENT_ATTENTION", torch.float32),
         "SDPA flash (bf16)": _sdpa("FLASH_ATTENTION", torch.bfloat16),
         "SDPA cuDNN (bf16)": _sdpa("CUDNN_ATTENTION", torch.bfloat16)}


def _peak_extra_mib(fn, *args):
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn(*args)
    torch.cuda.synchronize()
    return round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)


def _check_ours(q, k, v, causal):
    """Our kernel against the float64 reference on two heads and the last 512 queries
    (FlashAttention's rule). Bottom-right alignment makes the last queries of a slice see
    exactly the keys they see in the whole; the float64 scores of all queries would need
    tens of GB at 32K."""
    qs, ks, vs = q[:1, :2, -512:], k[:1, :2], v[:1, :2]
    mode = "bottom_right" if causal else None
    ours = K.attention(qs, ks, vs, causal=mode)[0].double()
    same = T.attention(qs, ks, vs, causal=mode)[0].double()
    ref = T.attention(qs, ks, vs, causal=mode, fp64=True)[0]
    err, torch_err = (ours - ref).abs().max().item(), (same - ref).abs().max().item()
    if not err <= 2 * torch_err + 1e-5:
        raise SystemExit(f"numba flash is wrong at N={q.shape[2]}, d={q.shape[3]}: error {err} vs torch {torch_err}")
    return err


def bench_dense(tokens, start):
    rows = []
    for n in tokens:                 # every (d, causal) at one N before the next N
        for d in DIMS:
            for causal in (False, True):
                if time.monotonic() - start > BUDGET_S:
                    rows.append({"d": d, "causal": causal, "tokens": n, "skipped": "time budget"})
                    continue
                gen = torch.Generator(device="cuda").manual_seed(n + d)
                q, k, v = (torch.randn(B, H, n, d, device="cuda", generator=gen) for _ in range(3))
                row = {"d": d, "causal": causal, "tokens": n, "check error": _check_ours(q, k, v, causal)}
                flops = 4 * B * H * n * n * d / (2 if causal else 1)
                few = 2 if n >= 16384 else None
                for name, fn in LINES.items():
                    if name.startswith("SDPA math") and n > MATH_MAX_TOKENS:
                        row[name] = {"skipped": f"needs ~{2 * B * H * n * n * 4 / 2**30:.0f} GiB for the scores"}
                        continue
                    try:
                        mib = _peak_extra_mib(fn, q, k, v, causal)
                        t = harness.bench(fn, q, k, v, causal, warmup=1, reps=few, max_seconds=0.5, name=name)
                        row[name] = {"ms": round(t.median_ms, 4), "tflops": round(flops / t.median_ms / 1e9, 2),
                                     "extra MiB": mib}
                    except Exception as exc:  # noqa: BLE001  (a backend may refuse a size: record why)
                        row[name] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
                    torch.cuda.empty_cache()
                print(f"  d={d} causal={causal} N={n}: " + ", ".join(
                    f"{nm} {r.get('ms', r.get('skipped', r.get('error', '?')))}" for nm, r in row.items()
                    if isinstance(r, dict)), flush=True)
                rows.append(row)
                del q, k, v
    return rows


def _flex_line(q, k, v, table, blk_q, blk_k):
    try:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention
    except Exception as exc:  # noqa: BLE001
        return None, f"flex_attention unavailable: {exc}"
    try:
        nb_q, nb_k = table.shape[-2:]
        counts = table.sum(-1).to(torch.int32)
        idx = torch.argsort((~table).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        mask = BlockMask.from_kv_blocks(counts, idx, BLOCK_SIZE=(blk_q, blk_k), seq_lengths=(q.shape[2], k.shape[2]))
        compiled = torch.compile(flex_attention)
        qb, kb, vb = (x.to(torch.bfloat16) for x in (q, k, v))
        fn = (lambda: compiled(qb, kb, vb, block_mask=mask))
        fn()
        return fn, None
    except Exception as exc:  # noqa: BLE001
        return None, f"{type(exc).__name__}: {exc}"[:200]


def bench_sparse(quick):
    s = dict(SLA_SHAPE, n=8192 if quick else SLA_SHAPE["n"])
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(s["b"], s["h"], s["n"], s["d"], device="cuda", generator=gen) for _ in range(3))
    labels, _ = T.sla_block_map(q, k, topk=s["topk"], negligible=0.0, blk_q=s["blk_q"], blk_k=s["blk_k"])
    critical = labels == T.CRITICAL
    dense_flops = 4 * s["b"] * s["h"] * s["n"] ** 2 * s["d"]
    # correctness on one head first
    # correctness on one head and its first 8 query blocks (query blocks are independent)
    rows = 8 * s["blk_q"]
    qh, kh, vh, lh = q[:1, :1, :rows], k[:1, :1], v[:1, :1], labels[:1, :1, :8]
    ref = T.sla_attention(qh, kh, vh, lh, "softmax", s["blk_q"], s["blk_k"], fp64=True)
    got = K.sla_attention(qh, kh, vh, lh, "softmax", s["blk_q"], s["blk_k"])
    errors = {name: (a.double() - b).abs().max().item() for name, a, b in zip(("O_s", "O_l", "LSE"), got, ref)}
    if not all(e < 1e-3 for e in errors.values()):
        raise SystemExit(f"SLA kernel is wrong at the benchmark shape: {errors}")
    lines = {
        "numba dense": lambda: K.attention(q, k, v),
        "numba block-sparse": lambda: K.attention(q, k, v, block_mask=critical, blk_q=s["blk_q"], blk_k=s["blk_k"]),
        "numba SLA (fused)": lambda: K.sla_attention(q, k, v, labels, "softmax", s["blk_q"], s["blk_k"]),
    }
    flex, why = _flex_line(q, k, v, critical, s["blk_q"], s["blk_k"])
    out = {"shape": s, "sparsity": round(1 - critical.float().mean().item(), 4), "check errors": errors,
           "flex": why or "timed"}
    if flex is not None:
        lines["FlexAttention block mask (bf16)"] = flex
    for name, fn in lines.items():
        slow = name == "numba dense"          # ~17.6 TFLOP a call: one compile-and-warm run, one timed
        t = harness.bench(fn, warmup=1 if slow else 2, reps=1 if slow else None, max_seconds=1.0, name=name)
        out[name] = {"ms": round(t.median_ms, 3), "dense-equivalent TFLOP/s": round(dense_flops / t.median_ms / 1e9, 2)}
        print(f"  {name}: {out[name]}", flush=True)
    return out


def measure(quick: bool) -> dict:
    start = time.monotonic()
    torch.backends.cuda.matmul.allow_tf32 = False
    # SLA's shape first (its headline rows need one run each), then dense sizes while the budget lasts
    data = {"shape": {"B": B, "H": H, "dims": list(DIMS)}, "sparse": bench_sparse(quick)}
    data["dense"] = bench_dense(QUICK_TOKENS if quick else TOKENS, start)
    data["seconds"] = round(time.monotonic() - start, 1)
    return data


def _ms(row, name):
    cell = row.get(name)
    return cell.get("ms") if isinstance(cell, dict) else None


def report(data: dict, meta: dict | None = None, quick: bool = False) -> gb.Results:
    results = gb.Results(STEM, TITLE, meta=meta, data=data, quick=quick)
    ours = "numba flash (fp32)"
    table = []
    for r in data["dense"]:
        if "skipped" in r:
            continue
        label = f"N {r['tokens']}, d {r['d']}{', causal' if r['causal'] else ''}"
        eff, mth, fl = _ms(r, "SDPA memory-efficient (fp32)"), _ms(r, "SDPA math (fp32)"), _ms(r, "SDPA flash (bf16)")
        mine = _ms(r, ours)
        if mine is None:
            continue
        if eff:
            results.headline(f"dense attention {label} vs SDPA memory-efficient fp32 (ms)", mine,
                             "SDPA memory-efficient (fp32)", eff, goal=GOAL_VS_EFFICIENT, unit="ms", note="same run")
        if mth and r["tokens"] >= 2048:
            results.headline(f"dense attention {label} vs SDPA math fp32 (ms)", mine, "SDPA math (fp32)", mth,
                             goal=GOAL_VS_MATH, unit="ms", note="same run; goal: faster from N = 2K")
        if fl:
            results.headline(f"dense attention {label}: gap to SDPA flash bf16 (ms)", mine, "SDPA flash (bf16)", fl,
                             unit="ms", note="tensor cores vs FP32 CUDA cores: reported, no goal")
        table.append([label] + [str((r.get(n) or {}).get("ms", (r.get(n) or {}).get("skipped", "-"))) for n in LINES]
                     + [str((r.get(ours) or {}).get("tflops", "-")), str((r.get(ours) or {}).get("extra MiB", "-")),
                        str((r.get("SDPA math (fp32)") or {}).get("extra MiB", "-"))])
    results.section("Dense attention (ms), B x H = 32",
                    "Medians of CUDA events after warm-up; FLOP/s count 4 B H N^2 d (half if causal); extra MiB: "
                    "peak memory one call allocates beyond its inputs.",
                    table={"columns": ["size"] + list(LINES) + ["ours TFLOP/s", "ours extra MiB", "math extra MiB"],
                           "rows": table})
    sp = data["sparse"]
    dense, sparse, fused = (sp.get(n, {}).get("ms") for n in ("numba dense", "numba block-sparse", "numba SLA (fused)"))
    if dense and sparse:
        results.headline("block-sparse at 95% sparsity vs gpulab's dense kernel (ms)", sparse, "numba dense", dense,
                         goal=1 / GOAL_SPARSE_SPEEDUP, unit="ms", note=f"goal: 10x faster; SLA's shape {sp['shape']}")
    if sparse and fused:
        results.headline("SLA fused vs block-sparse alone (ms)", fused, "numba block-sparse", sparse,
                         goal=GOAL_SLA_VS_SPARSE, unit="ms", note="same run")
    flex = sp.get("FlexAttention block mask (bf16)", {}).get("ms")
    if sparse and flex:
        results.headline("block-sparse vs FlexAttention with the same block mask (ms)", sparse,
                         "FlexAttention block mask (bf16)", flex, unit="ms", note="bf16 tensor cores: reported, no goal")
    results.section("SLA's benchmark shape", [f"Shape {sp['shape']}, measured sparsity {sp['sparsity']}; "
                                              f"FlexAttention: {sp['flex']}; check errors {sp['check errors']}."],
                    table={"columns": ["line", "ms", "dense-equivalent TFLOP/s"],
                           "rows": [[n, str(v["ms"]), str(v["dense-equivalent TFLOP/s"])] for n, v in sp.items()
                                    if isinstance(v, dict) and "ms" in v]})
    return results


def main(argv=None):
    args = gb.parse_args(__doc__, argv)
    gb.require_gpu(f"benchmarks/{STEM}.py")
    data = measure(args.quick)
    report(data, quick=args.quick).write(args.out)
    print(f"done in {data['seconds']:.0f} s")


if __name__ == "__main__":
    main()
