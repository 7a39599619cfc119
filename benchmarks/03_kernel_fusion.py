"""Kernel fusion on the GPU: gpulab's fused kernels vs torch.compile (static shapes) and eager.

Run on a GPU:  python benchmarks/03_kernel_fusion.py [--quick]   (or: gpulab bench 03;
about a minute on an H200, most of it torch.compile compiling). Writes
benchmarks/results/03_kernel_fusion.{json,md}, the md rendered from the json by
gpulab.benchmark.

1. Vertical fusion: chains of 2, 4, 8, 16 elementwise ops (affine, relu, clamp, sigmoid,
   repeating, as in ANCHORS.md) on 2^24 and 2^26 float32 elements, side by side with
   torch.compile(dynamic=False) (inductor, one Triton kernel per chain and size) and torch
   eager. Goals (issue 14): at or below torch.compile at every chain length, and at least 85%
   of the measured copy bandwidth up to 4 ops, with precise math (libdevice expf, IEEE
   division) and outputs equal to torch's within 1e-5.
2. Where the time goes: the candidate schedules (pixels per thread, one tile per block or a
   grid-stride loop, signed or unsigned index arithmetic) timed on the same input; the SASS
   instructions per pixel of each kernel (gpulab.fusion.isa) and of inductor's kernel,
   against the SM's issue rate (the instruction roofline); host time per call and what it
   is made of; accuracy against float64.
3. Horizontal fusion: 1 .. 256 small uint8 RGB images of different sizes, each cropped
   (per-item rectangle), resized to 64x64, scaled and normalized. One launch for the
   batch (and the host time to pack it) vs a loop of per-item gpulab launches (and torch
   eager, item by item). Goal: >= 5x over the loop from 32 items up.

Correctness is checked first, on sizes that are not multiples of the block.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time

import torch

import gpulab
import gpulab.benchmark as gb
from gpulab import fusion as fk
from gpulab import harness
from gpulab.fusion import isa
from gpulab.fusion.codegen import Schedule

STEM, TITLE = "03_kernel_fusion", "Kernel fusion"
CHAIN_LENGTHS = (2, 4, 8, 16)
LOG_SIZES = (24, 26)
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
QUICK = {"chain_lengths": (2, 16), "log_sizes": (22,), "batches": (1, 32), "schedule_log2": 22}
ANCHOR_LOG2 = 26        # ANCHORS.md's size for the chains: the headline compares there
GOAL_VS_COMPILE = 1.0   # issue 14: at or below torch.compile (static shapes) at every chain length
GOAL_OF_COPY = 0.85     # issue 14: at least 85% of the copy bandwidth up to 4 ops
GOAL_HORIZONTAL = 0.2   # one launch at least 5x faster than the loop from 32 items up
BENCH = dict(warmup=3, max_seconds=0.25)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: the schedules timed side by side (the first is the one the chapter's kernel used before)
SCHEDULES = {
    "grid-stride, 4/thread, signed index (before)": Schedule(4, True, False),
    "grid-stride, 4/thread": Schedule(4, True, True),
    "tile per block, 4/thread, signed index": Schedule(4, False, False),
    "tile per block, 1/thread": Schedule(1, False, True),
    "tile per block, 2/thread": Schedule(2, False, True),
    "tile per block, 4/thread": Schedule(4, False, True),
    "tile per block, 8/thread": Schedule(8, False, True),
}
#: Hopper issues one warp instruction per cycle on each of an SM's 4 schedulers (32 lanes),
#: and its special-function units (MUFU: ex2, rcp) do 16 lanes per SM and cycle
ISSUE_LANES_PER_SM_CYCLE = 4 * 32
SFU_LANES_PER_SM_CYCLE = 16


def chain(k: int, fastmath: bool = False, schedule: Schedule | None = None) -> fk.Pipeline:
    cycle = [fk.affine(1.5, 0.25), fk.relu(), fk.clamp(-1.0, 2.0), fk.sigmoid()]
    return fk.Pipeline(*[cycle[i % 4] for i in range(k)], fastmath=fastmath, schedule=schedule)


def baked_chain(k: int) -> fk.Pipeline:
    """The same chain with its parameters written into the code as constants (as inductor's
    kernels have them), not read from the params array: what run-time parameters cost."""
    c = lambda v: f"float32({v!r})"   # noqa: E731
    cycle = [fk.map_op("affine_c", f"{{x}} * {c(1.5)} + {c(0.25)}", lambda x, p: x * 1.5 + 0.25),
             fk.relu(),
             fk.map_op("clamp_c", f"min(max({{x}}, {c(-1.0)}), {c(2.0)})", lambda x, p: torch.clamp(x, -1.0, 2.0)),
             fk.sigmoid()]
    return fk.Pipeline(*[cycle[i % 4] for i in range(k)])


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


def host_us(fn, *args, reps: int = 2000) -> float:
    """Host time per call (us): a tiny input, so the GPU finishes first and the host is the limit."""
    for _ in range(20):
        fn(*args)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(*args)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1e6


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


def accuracy(compiled: dict, k: int, log_n: int) -> dict:
    """Largest error of each implementation against the chain in float64, in float32 ulps
    (on 2^log_n inputs, the size torch.compile already compiled for)."""
    x = torch.randn(1 << log_n, device="cuda") * 4
    exact = torch_chain(chain(k))(x.double())
    ulp = (torch.nextafter(exact.float(), torch.tensor(float("inf"), device="cuda")) - exact.float()).double()
    outs = {"torch eager": torch_chain(chain(k))(x), "gpulab fused": chain(k)(x),
            "gpulab fastmath": chain(k, fastmath=True)(x)}
    if not isinstance(compiled.get(k), Exception) and compiled.get(k) is not None:
        outs["torch.compile"] = compiled[k](x)
    eager = outs["torch eager"]
    return {name: {"max_ulp": float(((y.double() - exact).abs() / ulp).max()),
                   "max_abs": float((y.double() - exact).abs().max()),
                   "equal_to_eager": float((y == eager).float().mean())} for name, y in outs.items()}


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


# ---------------------------------------------------------------- 8-byte accesses (an experiment)

def _pairs_kernel():
    """affine(1.5, 0.25) -> relu on float32 pixels read and written two at a time: the tensors
    are viewed as float64, so each thread makes one 8-byte load and one 8-byte store (numba
    has no float2/float4 loads of a float32 array). Not in the library: it measures whether
    wider accesses would pay for the chain of 2 (the library's kernels make 4-byte ones)."""
    from numba import cuda, float32, uint64
    from numba.cuda import libdevice as ld

    @gpulab.kernel
    def pairs(src2, dst2, scale, shift):
        i = uint64(cuda.blockIdx.x) * uint64(cuda.blockDim.x) + uint64(cuda.threadIdx.x)
        if i < uint64(src2.size):
            v = src2[i]
            lo = ld.int_as_float(ld.double2loint(v)) * scale + shift
            hi = ld.int_as_float(ld.double2hiint(v)) * scale + shift
            dst2[i] = ld.hiloint2double(ld.float_as_int(max(hi, float32(0.0))), ld.float_as_int(max(lo, float32(0.0))))
    return pairs


def wide_accesses(log_n):
    """The chain of 2 with 8-byte accesses against the library's kernel, same input, same bits."""
    import numpy as np
    n = 1 << log_n
    x = torch.randn(n, device="cuda")
    out = torch.empty_like(x)
    pairs = _pairs_kernel()
    scale, shift = np.float32(1.5), np.float32(0.25)

    def run():
        pairs[n // 2 // fk.BLOCK, fk.BLOCK](x.view(torch.float64), out.view(torch.float64), scale, shift)
        return out
    expected = chain(2)(x)
    run()
    return {"log2_n": log_n, "pairs_ms": median_ms(run, name="8-byte accesses"), "same_output": bool(torch.equal(out, expected)),
            "library_ms": median_ms(chain(2), x, name="library")}


# ---------------------------------------------------------------- instructions

def _counts(pipe) -> dict:
    try:
        c = isa.instruction_counts(pipe)
    except Exception as exc:  # noqa: BLE001  (counting must never stop the timings)
        return {"error": f"{type(exc).__name__}: {exc}"[:200]}
    c.pop("text")
    return c


class InductorKernels:
    """Finds the Triton kernels torch.compile writes (its TRITON_CACHE_DIR) and counts them."""

    def __init__(self):
        self.dir = os.environ.get("TRITON_CACHE_DIR")
        if not self.dir:
            self.dir = tempfile.mkdtemp(prefix="gpulab-triton-")
            os.environ["TRITON_CACHE_DIR"] = self.dir
        self.seen = set()

    def new(self) -> list[str]:
        files = set(glob.glob(os.path.join(self.dir, "**", "*.ptx"), recursive=True))
        fresh = sorted(files - self.seen)
        self.seen |= files
        return fresh

    def counts(self, ptx_files: list[str]) -> dict:
        """Instructions per element of the (one) new pointwise kernel: PTX and, with cuobjdump, SASS."""
        if not ptx_files:
            return {"error": f"no new Triton kernel in {self.dir}"}
        result = self._count(ptx_files[0])
        if len(ptx_files) > 1:     # autotuning compiled several configurations: say so
            result["other_kernels"] = [os.path.basename(f) for f in ptx_files[1:]]
        return result

    def _count(self, ptx_file: str) -> dict:
        ptx = open(ptx_file).read()
        # elements per thread: the float32 values each thread loads (ld.global.v4 = 4)
        loads = [line for _, block in isa.basic_blocks(ptx) for line in block if line.startswith(("ld.global",
                 "@%p")) and "ld.global" in line]
        per_thread = sum(4 if ".v4" in line else 2 if ".v2" in line else 1 for line in loads) or 1
        result = {"kernel": os.path.basename(ptx_file), "per_thread": per_thread}
        # the same count as gpulab's kernels get: the path with the most loads (isa.hot_path)
        result["ptx_per_element"] = round(len(isa.hot_path(ptx)) / per_thread, 2)
        cubin = ptx_file[:-4] + ".cubin"
        tool = shutil.which("cuobjdump")
        if tool and os.path.exists(cubin):
            sass = subprocess.run([tool, "-sass", cubin], capture_output=True, text=True, timeout=30).stdout
            body = isa.hot_path(sass)
            classes = isa.classify(body)
            result["sass_per_element"] = round(len(body) / per_thread, 2)
            result["classes"] = {c: round(classes.get(c, 0) / per_thread, 2) for c in isa.CLASSES}
        else:
            result["sass_error"] = "no cuobjdump or no cubin beside the ptx"
        return result


# ---------------------------------------------------------------- measurements

def vertical(chain_lengths, log_sizes, inductor: InductorKernels):
    rows, compiled, inductor_counts = [], {}, {}
    for k in chain_lengths:
        try:
            compiled[k] = torch.compile(torch_chain(chain(k)), dynamic=False)
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
                    inductor.new()
                    t0 = time.perf_counter()
                    y = fn(x)   # compiles for this shape (static shapes: one kernel per size)
                    torch.cuda.synchronize()
                    row["compile_first_call_s"] = time.perf_counter() - t0
                    if log_n == ANCHOR_LOG2 or (k not in inductor_counts and log_n == max(log_sizes)):
                        try:
                            inductor_counts[k] = inductor.counts(inductor.new())
                        except Exception as exc:  # noqa: BLE001  (counting must never stop the timings)
                            inductor_counts[k] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
                    torch.testing.assert_close(y, eager(x), rtol=1e-5, atol=1e-5)
                    row["compile_ms"] = median_ms(fn, x, name="compiled")
                except Exception as exc:  # noqa: BLE001
                    row["compile_ms"], row["compile_error"] = None, f"{type(exc).__name__}: {exc}"[:200]
            t0 = time.perf_counter()
            pipe(x)     # the first call of a new chain generates and compiles its kernel
            torch.cuda.synchronize()
            row["fused_first_call_s"] = time.perf_counter() - t0
            row["fused_ms"] = median_ms(pipe, x, name="fused")
            fast = chain(k, fastmath=True)
            row["fastmath_ms"] = median_ms(fast, x, name="fastmath")
            row["fastmath_of_copy"] = copy_ms / row["fastmath_ms"]
            row["fused_gbps"] = 8 * n / row["fused_ms"] / 1e6
            row["fused_of_copy"] = row["fused_gbps"] / copy_gbps
            row["speedup_vs_eager"] = row["eager_ms"] / row["fused_ms"]
            row["bytes_ratio"] = pipe.torch_kernels()   # eager moves this many times the fused bytes
            rows.append(row)
            c = row["compile_ms"]
            print(f"2^{log_n} k={k:2d}: eager {row['eager_ms']:.3f} ms, compile "
                  f"{'n/a' if c is None else f'{c:.3f} ms'}, fused {row['fused_ms']:.3f} ms "
                  f"({100 * row['fused_of_copy']:.0f}% of copy), fastmath {row['fastmath_ms']:.3f} ms")
        del x, dst
        torch.cuda.empty_cache()
    return rows, compiled, inductor_counts


def schedules(chain_lengths, log_n):
    """Every candidate schedule on one input: time, SASS per pixel, and the same output bits."""
    n = 1 << log_n
    x = torch.randn(n, device="cuda")
    rows = []
    for k in chain_lengths:
        expected = chain(k)(x)
        for name, sched in SCHEDULES.items():
            pipe = chain(k, schedule=sched)
            same = bool(torch.equal(pipe(x), expected))
            row = {"ops": k, "schedule": name, "per_thread": sched.per_thread, "grid_stride": sched.grid_stride,
                   "unsigned_index": sched.unsigned_index, "ms": median_ms(pipe, x, name=name),
                   "same_output": same, "isa": _counts(pipe)}
            rows.append(row)
            print(f"k={k:2d} {name:45s} {row['ms']:.4f} ms  sass/pixel {row['isa'].get('per_pixel')}  same {same}")
    for k in chain_lengths:
        baked = baked_chain(k)
        same = bool(torch.equal(baked(x), chain(k)(x)))
        rows.append({"ops": k, "schedule": "default, parameters as constants in the code", "ms": median_ms(baked, x),
                     "same_output": same, "isa": _counts(baked)})
    for k in chain_lengths:
        fast = chain(k, fastmath=True)
        fast(x)
        rows.append({"ops": k, "schedule": "fastmath (default schedule)", "ms": median_ms(fast, x),
                     "same_output": None, "isa": _counts(fast)})
    return rows


def host_costs(compiled_tiny):
    """Host microseconds per call on a tiny input, and the pieces of the chain's call before."""
    x = torch.randn(1 << 10, device="cuda")
    out = torch.empty_like(x)
    pipe = chain(2)
    pipe(x)
    fused = pipe.kernel()
    plan = pipe._plan(x, None, None)
    row, _ = pipe._geometry(x, None, 0, 0)
    table = fk.pipeline._device_table((row,))
    xv, ov = x.view(-1), out.view(-1)
    costs = {
        "pipe(x): the chain's call": host_us(pipe, x),
        "pipe(x, out=out): preallocated output": host_us(lambda v: pipe(v, out=out), x),
        "launch alone (configured kernel, arguments ready)": host_us(plan.launch, xv, ov, table, pipe.params),
        "torch.empty for the output": host_us(lambda: torch.empty(plan.out_shape, dtype=torch.float32, device="cuda")),
        "before: validate the input (_check_tensor)": host_us(pipe._check_tensor, x),
        "before: geometry row (_geometry)": host_us(lambda: pipe._geometry(x, None, 0, 0)),
        "before: output dtype (output_dtype)": host_us(pipe.output_dtype, torch.float32),
        "before: device table lookup (lru_cache)": host_us(lambda: fk.pipeline._device_table((row,))),
        "before: kernel[blocks, BLOCK] (config lookup)": host_us(lambda: fused[8, fk.BLOCK]),
        "before: x.contiguous() + 2 reshape(-1)": host_us(lambda: (x.contiguous(), x.reshape(-1), out.reshape(-1))),
        "torch eager, one op (x * 1.5)": host_us(lambda v: v * 1.5, x),
    }
    if compiled_tiny is not None:
        compiled_tiny(x)
        costs["torch.compile(dynamic=False), chain of 2"] = host_us(compiled_tiny, x)
    for name, us in costs.items():
        print(f"host {us:7.2f} us  {name}")
    return costs


def call_paths(log_n: int) -> dict:
    """GPU time of the chain of 2 called three ways on 2^log_n elements: the full call, with a
    preallocated output, and the configured kernel launched with its arguments ready; with
    the copy beside them. Where they differ, the host (allocation, Python) is the limit."""
    n = 1 << log_n
    x = torch.randn(n, device="cuda")
    out = torch.empty_like(x)
    pipe = chain(2)
    pipe(x)
    plan = pipe._plan(x, None, None)
    xv, ov = x.view(-1), out.view(-1)
    return {"log2_n": log_n, "copy_ms": median_ms(out.copy_, x, name="copy"),
            "call_ms": median_ms(pipe, x, name="pipe(x)"),
            "preallocated_ms": median_ms(lambda v: pipe(v, out=out), x, name="pipe(x, out=out)"),
            "launch_ms": median_ms(lambda: plan.launch(xv, ov, plan.geom, pipe.params), name="launch alone")}


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

        def pack_and_run():
            return pipe.run_batch(pipe.pack(images, crops))

        row = {"items": b, "pixels_out": b * 64 * 64,
               "batch_ms": median_ms(pipe.run_batch, packed, name="batch"),
               "pack_and_batch_ms": median_ms(pack_and_run, name="pack + batch"),
               "loop_ms": median_ms(loop, name="loop"),
               "torch_loop_ms": median_ms(torch_loop, name="torch loop")}
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            pipe.pack(images, crops)
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e3)
        row["pack_host_ms"] = sorted(times)[2]
        row["speedup_vs_loop"] = row["loop_ms"] / row["batch_ms"]
        row["speedup_vs_torch_loop"] = row["torch_loop_ms"] / row["batch_ms"]
        rows.append(row)
        print(f"batch of {b:3d}: one launch {row['batch_ms']:.4f} ms (+ pack {row['pack_host_ms']:.3f} ms host), "
              f"loop of launches {row['loop_ms']:.4f} ms ({row['speedup_vs_loop']:.1f}x), "
              f"torch loop {row['torch_loop_ms']:.3f} ms")
    return rows


# ---------------------------------------------------------------- the report

def _chip(meta: dict, run: dict) -> tuple[int, float]:
    sms = run.get("multiprocessors") or (meta or {}).get("multiprocessors") or 132
    mhz = run.get("sm_clock_mhz") or (meta or {}).get("rated sm clock (MHz)") or 1980
    return int(sms), float(mhz)


def instruction_bound(n: int, counts: dict | None, copy_ms: float, sms: int, mhz: float) -> tuple[str, float]:
    """The instruction roofline: the longest of bytes / copy bandwidth, instructions / issue rate
    and special-function instructions / SFU rate, and which one it is."""
    if not counts or "per_pixel" not in counts:
        return "", copy_ms
    cycles = mhz * 1e3   # per millisecond
    times = {"memory": copy_ms,
             "issue": n * counts["per_pixel"] / (sms * ISSUE_LANES_PER_SM_CYCLE * cycles),
             "SFU": n * counts["classes"].get("sfu", 0) / (sms * SFU_LANES_PER_SM_CYCLE * cycles)}
    bound = max(times, key=times.get)
    return bound, times[bound]


def vertical_table(vrows, isa_by_k, sms, mhz) -> dict:
    rows = []
    for r in vrows:
        c = r["compile_ms"]
        counts = isa_by_k.get(str(r["ops"]), {}).get("fused") if isa_by_k else None
        bound, bound_ms = instruction_bound(r["n"], counts, r["copy_ms"], sms, mhz)
        per_pixel = counts.get("per_pixel", "-") if counts else "-"
        rows.append([f"2^{r['log2_n']}", r["ops"], r["torch_kernels"], f"{r['copy_ms']:.3f}", f"{r['eager_ms']:.3f}",
                     "failed" if c is None else f"{c:.3f}", f"{r['fused_ms']:.3f}",
                     "-" if c is None else f"{r['fused_ms'] / c:.2f}", f"{100 * r['fused_of_copy']:.0f}%",
                     f"{r['speedup_vs_eager']:.1f}x", f"{r['fastmath_ms']:.3f}", f"{100 * r['fastmath_of_copy']:.0f}%",
                     per_pixel, f"{bound} ({bound_ms:.3f} ms)" if bound else "not counted"])
    return {"columns": ["n", "k", "torch kernels", "copy ms", "eager ms", "torch.compile ms", "fused ms",
                        "fused / compile", "fused % of copy BW", "fused vs eager", "fastmath ms",
                        "fastmath % of copy", "fused SASS / pixel", "bound: instruction roofline"],
            "rows": rows}


def schedule_table(srows) -> dict:
    best = {}
    for r in srows:
        if r.get("same_output") is not None:
            best[r["ops"]] = min(best.get(r["ops"], r["ms"]), r["ms"])
    rows = []
    for r in srows:
        c = r.get("isa", {})
        cls = c.get("classes", {})
        rows.append([r["ops"], r["schedule"], f"{r['ms']:.4f}",
                     f"{r['ms'] / best[r['ops']]:.2f}" if r["ops"] in best else "-",
                     c.get("per_pixel", c.get("error", "-")),
                     *(cls.get(k, "-") for k in ("memory", "fp32", "sfu", "integer", "move", "control")),
                     {True: "yes", False: "NO", None: "-"}[r.get("same_output")]])
    return {"columns": ["k", "schedule", "ms", "vs fastest", "SASS / pixel", "memory", "fp32", "SFU", "integer",
                        "move", "control", "same bits as default"], "rows": rows}


def horizontal_table(hrows) -> dict:
    return {"columns": ["items", "one launch ms", "host packing ms", "pack + launch ms", "loop of gpulab launches ms",
                        "loop per item us", "speed-up (launch only)", "torch eager loop ms", "speed-up"],
            "rows": [[r["items"], f"{r['batch_ms']:.4f}", f"{r['pack_host_ms']:.3f}",
                      f"{r['pack_and_batch_ms']:.4f}" if "pack_and_batch_ms" in r else "-", f"{r['loop_ms']:.4f}",
                      f"{1e3 * r['loop_ms'] / r['items']:.1f}", f"{r['speedup_vs_loop']:.1f}x",
                      f"{r['torch_loop_ms']:.3f}", f"{r['speedup_vs_torch_loop']:.1f}x"] for r in hrows]}


def _findings(data: dict, at: int) -> list[str]:
    """The goal against torch.compile, and what the measurements of this run say about it."""
    rows = {r["ops"]: r for r in data["vertical"] if r["log2_n"] == at and r["compile_ms"]}
    sched = {}
    for r in data["schedules"]:
        sched.setdefault(r["ops"], {})[r["schedule"]] = r["ms"]
    ind, ours, acc = data.get("inductor", {}), data.get("isa", {}), data.get("accuracy", {})
    out = []
    for k, r in sorted(rows.items()):
        line = f"k={k}: fused {r['fused_ms']:.4f} ms, torch.compile {r['compile_ms']:.4f} ms ({r['fused_ms'] / r['compile_ms']:.2f}x)"
        best = min(((ms, name) for name, ms in sched.get(k, {}).items() if "fastmath" not in name), default=None)
        if best:
            line += f"; fastest precise schedule: {best[1]} {best[0]:.4f} ms ({best[0] / r['compile_ms']:.2f}x)"
        fast = sched.get(k, {}).get("fastmath (default schedule)")
        if fast:
            line += f"; fastmath {fast:.4f} ms ({fast / r['compile_ms']:.2f}x)"
        i, o = ind.get(str(k), {}), (ours.get(str(k)) or {}).get("fused", {})
        if "sass_per_element" in i and "per_pixel" in o:
            line += (f"; SASS per element: gpulab {o['per_pixel']}, inductor {i['sass_per_element']} "
                     f"(FP32 {o['classes'].get('fp32')} vs {i['classes'].get('fp32')}, control "
                     f"{o['classes'].get('control')} vs {i['classes'].get('control')})")
        out.append(line + ".")
    if acc:
        out.append("Accuracy of the chain of 16 against float64 (max ulps, share bit-equal to eager): " + "; ".join(
            f"{name} {a['max_ulp']:.2f}, {100 * a['equal_to_eager']:.3f}%" for name, a in acc.items()) + ".")
    fast_ratio = {k: sched.get(k, {}).get("fastmath (default schedule)", float("nan")) / r["compile_ms"]
                  for k, r in rows.items()}
    out.append("Where the fused kernel is slower, it issues more instructions: libdevice's expf and a correctly "
               "rounded reciprocal (with its slow-path test and branch: the 'control' count) per sigmoid. Inductor's "
               "kernel calls tl.sigmoid, 1 / (1 + exp(-x)), which Triton lowers to ex2.approx of x log2(e) and an "
               "approximate division (div.full.f32), and NaN-propagating maximum/minimum (its larger FP32 count). "
               "Compiled with the same approximations (fastmath), the fused kernel takes "
               + ", ".join(f"{v:.2f}x" for _, v in sorted(fast_ratio.items()))
               + f" torch.compile's time at k = {', '.join(str(k) for k in sorted(fast_ratio))}; the chapter keeps "
               "precise math (libdevice expf, IEEE division) by default.")
    return out


def report(data: dict, meta: dict | None = None, quick: bool = False) -> gb.Results:
    """The results of one run, from its measurements (also used to convert older files)."""
    vrows, hrows, run = data["vertical"], data["horizontal"], data["run"]
    static = not run.get("compile_dynamic", True)
    compile_name = f"torch.compile (dynamic={not static})"
    sms, mhz = _chip(meta, run)
    isa_by_k = data.get("isa", {})
    results = gb.Results(STEM, TITLE, meta=meta, data=data, quick=quick)
    at = max((r["log2_n"] for r in vrows if r["log2_n"] <= ANCHOR_LOG2), default=vrows[0]["log2_n"])
    anchor = [r for r in vrows if r["log2_n"] == at]
    for r in anchor:
        if r["compile_ms"] is not None:
            results.headline(f"chain of {r['ops']} ops on 2^{at} float32 (ms)", r["fused_ms"], compile_name,
                             r["compile_ms"], goal=GOAL_VS_COMPILE, unit="ms",
                             note=f"timed side by side; eager {r['eager_ms']:.3f} ms")
        else:
            results.headline(f"chain of {r['ops']} ops on 2^{at} float32 (ms)", r["fused_ms"], "torch eager",
                             r["eager_ms"], goal=GOAL_VS_COMPILE, unit="ms",
                             note="torch.compile failed in this run: " + r.get("compile_error", "?")[:80])
    short = [r for r in anchor if r["ops"] <= 4] or anchor
    worst = min(short, key=lambda r: r["fused_of_copy"])
    results.headline(f"fused, lowest share of copy bandwidth up to 4 ops, 2^{at}", worst["fused_of_copy"],
                     goal=GOAL_OF_COPY, lower_is_better=False, note=f"at k={worst['ops']}")
    from_32 = [r for r in hrows if r["items"] >= 32] or hrows
    slowest = max(from_32, key=lambda r: r["batch_ms"] / r["loop_ms"])
    results.headline(f"horizontal fusion, {slowest['items']} images (ms)", slowest["batch_ms"],
                     "loop of per-item gpulab launches", slowest["loop_ms"], goal=GOAL_HORIZONTAL, unit="ms",
                     note="the least gain from 32 items up; goal: 5x faster than the loop")
    tuning = data.get("blocks_per_sm")
    setup = (f"Medians of CUDA-event timings after warm-up (up to 200 runs, {BENCH['max_seconds']} s each line). "
             f"Copy bandwidth measured beside each size (torch `copy_`, read + write). {compile_name}: one "
             f"inductor kernel per chain and size. Fused kernels: block {run['block']}, schedule "
             f"{run.get('schedule', 'grid-stride, 4 per thread, signed index')}. Instruction roofline: {sms} SMs at "
             f"{mhz:.0f} MHz (the rated clock), {ISSUE_LANES_PER_SM_CYCLE} issued lanes per SM and cycle (4 "
             f"schedulers x 32), {SFU_LANES_PER_SM_CYCLE} special-function lanes.")
    if tuning:
        setup += (" Grid-stride grid: " + ", ".join(f"{b}: {t:.4f} ms" for b, t in tuning["times_ms"].items())
                  + f" blocks per SM (best {tuning['best']}).")
    results.section("Set-up", setup)
    errors = sorted({r["compile_error"] for r in vrows if r.get("compile_error")})
    results.section(
        "Vertical fusion: chain of k ops (affine, relu, clamp, sigmoid, repeating), float32",
        table=vertical_table(vrows, isa_by_k, sms, mhz),
        after=(["torch.compile failed: " + "; ".join(errors)] if errors else []) + [
            "'bound': the instruction roofline, the longest of (8 bytes per element over the copy bandwidth), "
            "(SASS instructions per pixel over the issue rate) and (MUFU instructions over the special-function "
            "rate), with that time; it counts instructions, not FLOPs (an FMA is one instruction). 'fastmath' "
            "compiles the same chain with approximate exp and division. 'fused / compile' below 1: fused faster."])
    first = [r for r in vrows if r["log2_n"] == vrows[0]["log2_n"] and "fused_first_call_s" in r]
    if first:
        results.section(
            f"First call of a new chain (s, 2^{first[0]['log2_n']}: generating and compiling its kernel)",
            table={"columns": ["k", "gpulab fused", compile_name],
                   "rows": [[r["ops"], f"{r['fused_first_call_s']:.2f}",
                             f"{r['compile_first_call_s']:.2f}" if "compile_first_call_s" in r else "-"]
                            for r in first]})
    if data.get("schedules"):
        results.section(
            f"Schedules: where the time goes (2^{data['run'].get('schedule_log2', at)} float32)",
            "Every candidate on the same input; SASS instructions per pixel of the full-tile path (entry block + "
            "the longest basic block, over the pixels per thread), split by class (gpulab.fusion.isa). "
            "'same bits': torch.equal with the default schedule's output.",
            table=schedule_table(data["schedules"]),
            after=([] if data["run"].get("isa_counter", 1) >= 2 else [
                "This run's counter followed no fall-through after a predicated exit: its counts of the "
                "grid-stride and one-pixel-per-thread schedules stop at the kernel's early exit (about 3 and 12 "
                "per pixel, no arithmetic), so only the tile-per-block rows with 2 to 8 pixels per thread count "
                "the work; the counter is fixed (gpulab.fusion.isa), these rows were not counted again."]))
        results.section("What limits each length (this run)", _findings(data, at))
    wide = data.get("wide")
    if wide and "pairs_ms" in wide:
        results.section(f"8-byte accesses (an experiment), chain of 2 on 2^{wide['log2_n']} float32",
                        f"The library's kernel: {wide['library_ms']:.4f} ms (4-byte loads and stores). The same chain "
                        f"reading and writing two pixels at a time through a float64 view: {wide['pairs_ms']:.4f} ms "
                        f"(same bits: {'yes' if wide['same_output'] else 'NO'}).")
    elif wide:
        results.section("8-byte accesses (an experiment)", f"failed in this run: {wide.get('error', '?')}")
    if data.get("inductor"):
        rows = []
        for k, c in sorted(data["inductor"].items(), key=lambda kv: int(kv[0])):
            ours = (isa_by_k.get(str(k)) or {}).get("fused") or {}
            cls = c.get("classes", {})
            rows.append([k, c.get("per_thread", "-"), c.get("sass_per_element", c.get("error", "-")),
                         *(cls.get(n, "-") for n in ("memory", "fp32", "sfu", "integer")),
                         ours.get("per_pixel", "-"), (ours.get("classes") or {}).get("sfu", "-")])
        results.section("Instructions per element: inductor's Triton kernel and gpulab's fused kernel (SASS)",
                        table={"columns": ["k", "inductor elements / thread", "inductor SASS / element", "memory",
                                           "fp32", "SFU", "integer", "gpulab SASS / pixel", "gpulab SFU"],
                               "rows": rows})
    if data.get("accuracy"):
        acc = data["accuracy"]
        results.section(f"Accuracy against float64 (chain of {max(r['ops'] for r in vrows)}, "
                        f"2^{run.get('schedule_log2', at)} inputs ~ 4 N(0, 1))",
                        table={"columns": ["implementation", "max error (float32 ulps)", "max abs error",
                                           "share equal to eager"],
                               "rows": [[name, f"{a['max_ulp']:.1f}", f"{a['max_abs']:.2e}",
                                         f"{100 * a['equal_to_eager']:.1f}%"] for name, a in acc.items()]})
    if data.get("host_us"):
        results.section("Host time per call (us, 2^10 elements: the host is the limit)",
                        table={"columns": ["what", "us per call"],
                               "rows": [[name, f"{us:.2f}"] for name, us in data["host_us"].items()]},
                        after=["'before': the pieces of the chain's call that the launch plan now does once per "
                               "input shape; they added up to the 40-57 us per call of the earlier results."])
    if data.get("call_paths"):
        results.section("The chain of 2 called three ways (GPU time, ms)",
                        table={"columns": ["n", "copy", "pipe(x)", "pipe(x, out=out)", "launch alone"],
                               "rows": [[f"2^{r['log2_n']}", f"{r['copy_ms']:.4f}", f"{r['call_ms']:.4f}",
                                         f"{r['preallocated_ms']:.4f}", f"{r['launch_ms']:.4f}"]
                                        for r in data["call_paths"]]},
                        after=["Where the three differ, the host is the limit: each call's Python and allocation "
                               "take longer than the kernel, and the GPU waits between launches."])
    results.section("Horizontal fusion: batch of RGB uint8 images (48..320 px a side), crop + resize 64x64 + "
                    "scale + normalize", table=horizontal_table(hrows),
                    after=["'host packing': Pipeline.pack (torch.cat of the items, the tile table built in Python "
                           "and copied to the GPU), host wall time; 'pack + launch' times both as a GPU stream "
                           "sees them."])
    return results


def main(argv=None):
    args = gb.parse_args(__doc__, argv)
    gb.require_gpu(f"benchmarks/{STEM}.py")
    sizes = QUICK if args.quick else {"chain_lengths": CHAIN_LENGTHS, "log_sizes": LOG_SIZES, "batches": BATCHES,
                                      "schedule_log2": ANCHOR_LOG2}
    t0 = time.time()
    inductor = InductorKernels()
    check_correctness()
    vrows, compiled, inductor_counts = vertical(sizes["chain_lengths"], sizes["log_sizes"], inductor)
    print(f"vertical done at {time.time() - t0:.0f} s")
    isa_by_k = {str(k): {"fused": _counts(chain(k)), "fastmath": _counts(chain(k, fastmath=True))}
                for k in sizes["chain_lengths"]}
    srows = schedules(sizes["chain_lengths"], sizes["schedule_log2"])
    print(f"schedules done at {time.time() - t0:.0f} s")
    try:
        wide = wide_accesses(sizes["schedule_log2"])
    except Exception as exc:  # noqa: BLE001  (an experiment: record why it failed)
        wide = {"error": f"{type(exc).__name__}: {exc}"[:200]}
    print("8-byte accesses:", wide)
    acc = accuracy(compiled, max(sizes["chain_lengths"]), sizes["schedule_log2"])
    print(f"accuracy done at {time.time() - t0:.0f} s", acc)
    try:
        tiny = torch.compile(torch_chain(chain(2)), dynamic=False)
    except Exception:  # noqa: BLE001
        tiny = None
    host = host_costs(tiny)
    paths = [call_paths(log_n) for log_n in sorted({min(sizes["log_sizes"]), sizes["schedule_log2"]})]
    print("call paths:", paths)
    print(f"host costs done at {time.time() - t0:.0f} s")
    hrows = horizontal(sizes["batches"])
    sched = fk.codegen.DEFAULT_SCHEDULE
    run = {"block": fk.BLOCK, "compile_dynamic": False, "seconds": round(time.time() - t0, 1),
           "schedule": f"{'grid-stride' if sched.grid_stride else 'one tile per block'}, {sched.per_thread} per "
                       f"thread, {'unsigned' if sched.unsigned_index else 'signed'} index",
           "schedule_log2": sizes["schedule_log2"], "multiprocessors": fk.pipeline._sm_count(),
           "inductor_cache": inductor.dir, "isa_counter": 2}
    data = {"run": run, "vertical": vrows, "schedules": srows, "isa": isa_by_k,
            "inductor": {str(k): v for k, v in inductor_counts.items()}, "accuracy": acc, "host_us": host, "call_paths": paths, "wide": wide,
            "horizontal": hrows}
    report(data, quick=args.quick).write(args.out)
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
