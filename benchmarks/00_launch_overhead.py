"""Launch overhead of numba.cuda kernels: where the time goes, and gpulab's fast path.

Run on a GPU:  python benchmarks/00_launch_overhead.py [--quick]   (or: gpulab bench 00)
Writes benchmarks/results/00_launch_overhead.{json,md} (the md rendered from the json).

Each figure is host time per launch of a trivial one-block kernel, measured over a loop
of back-to-back launches (synchronising once at the end), median of several loops. That
is the cost Python adds before the GPU sees the work: for small kernels it *is* the
kernel's time. (CUDA events would time the GPU side, which is not the question here, so
this script gives the sweep its own host-time timer.)
"""
from __future__ import annotations

import ctypes
import statistics
import time

import torch
from numba import cuda

import gpulab
import gpulab.benchmark as gb
from gpulab import launch as gl

STEM, TITLE = "00_launch_overhead", "Launch overhead"
TORCH_OP = "torch elementwise op (x + 1)"
NUMBA_TENSORS = "numba kernel[1, 256], torch tensors each call"
GPULAB_TENSORS = "gpulab.kernel[1, 256], torch tensors each call"
# how far gpulab's launch may trail a torch elementwise op (the course's 1.5x rule)
GOAL_VS_TORCH = 1.5


def trivial(x, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = x[i] + 1.0


def per_launch_timer(launches: int, loops: int):
    """A sweep timer: median over ``loops`` of host time for ``launches`` calls, in us."""
    def timer(fn) -> float:
        for _ in range(50):
            fn()
        torch.cuda.synchronize()
        samples = []
        for _ in range(loops):
            t0 = time.perf_counter()
            for _ in range(launches):
                fn()
            torch.cuda.synchronize()
            samples.append((time.perf_counter() - t0) / launches * 1e6)
        return statistics.median(samples)
    return timer


def launch_lines(x, out) -> dict:
    """What is timed: the launch paths, then the pieces of the slow and the fast path alone."""
    numba_kernel, fast_kernel = cuda.jit(trivial), gpulab.kernel(trivial)
    dx, dout = cuda.as_cuda_array(x), cuda.as_cuda_array(out)
    fast_kernel[1, 256](x, out)   # compiles, and checks the fast path before timing it
    torch.cuda.synchronize()
    assert torch.equal(out, x + 1), "fast launch computed a wrong result"
    stream = torch.cuda.current_stream().cuda_stream
    plan = next(iter(fast_kernel._plans.values()))
    drv = gl._driver()
    launch_c = ctypes.CDLL("libcuda.so.1").cuLaunchKernel
    launch_c.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [ctypes.c_void_p] * 3
    handle = int(plan.handle)
    return {
        TORCH_OP: lambda: torch.add(x, 1.0, out=out),
        "numba kernel[1, 256], pre-wrapped device arrays": lambda: numba_kernel[1, 256](dx, dout),
        NUMBA_TENSORS: lambda: numba_kernel[1, 256](x, out),
        GPULAB_TENSORS: lambda: fast_kernel[1, 256](x, out),
        "gpulab.kernel[1, 256], explicit stream handle": lambda: fast_kernel[1, 256](x, out, stream=stream),
        "  part: numba typeof(torch tensor) x2": lambda: (numba_kernel.typeof_pyval(x), numba_kernel.typeof_pyval(out)),
        "  part: cuda.as_cuda_array(torch tensor) x2": lambda: (cuda.as_cuda_array(x), cuda.as_cuda_array(out)),
        "  part: cuLaunchKernel via cuda-python (params prepared)":
            lambda: drv.cuLaunchKernel(plan.handle, 1, 1, 1, 256, 1, 1, 0, stream, plan.params_address, 0),
        "  part: cuLaunchKernel via ctypes (params prepared)":
            lambda: launch_c(handle, 1, 1, 1, 256, 1, 1, 0, stream, plan.params_address, None),
        "  part: torch.cuda.current_stream().cuda_stream": lambda: torch.cuda.current_stream().cuda_stream,
        "  part: raw current stream (gpulab)": gl._current_stream,
        "  part: pack 2 tensors into the parameter buffer":
            lambda: plan.slots.__setitem__(slice(None), plan.pack(x, out)),
        "  part: kernel[1, 256] (configured launcher lookup)": lambda: fast_kernel[1, 256],
    }


def measure(quick: bool) -> dict:
    launches, loops = (200, 3) if quick else (2000, 7)
    x = torch.rand(256, device="cuda")
    out = torch.empty_like(x)
    lines = launch_lines(x, out)
    swept = gb.sweep("threads", [256], lambda _: (), lines,
                     unit="us per launch", timer=per_launch_timer(launches, loops))
    rows = {label: swept.rows[0][label] for label in lines}
    return {"us_per_launch": rows, "launches_per_loop": launches, "loops": loops, "sweep": swept.to_json()}


# How the fast path got here: earlier runs of this script (documentation of past versions,
# kept with their dates; the current run's figures are in the tables above it).
HISTORY = [
    "Each row is one run of this script on a freshly started NVIDIA H200 machine, 2026-11-28; hosts "
    "differ between runs (the torch op's own cost moved from 6.9 to 9.5 us), so compare within a row. "
    "ANCHORS.md's figures for numba (46 and 160 us) were measured another way.",
]
HISTORY_TABLE = {
    "columns": ["version of `gpulab.kernel`", "torch op", "numba, device arrays", "numba, torch tensors",
                "gpulab, torch tensors"],
    "rows": [
        ["1: cached plan, generic per-argument packers, cuda-python launch, `torch.cuda.current_stream()`",
         "7.0 (run 1 host)", "22.0", "56.6", "19.3"],
        ["2: + raw current stream (0.3 us instead of 4.3), ctypes launch", "6.9", "21.5", "52.6", "14.5"],
        ["3: + generated packing function, cached launch configurations, cuda-python launch (ctypes "
         "measured slower: 5.4 vs 4.5 us)", "9.5", "32.4", "78.0", "14.5"],
    ],
}


def report(data: dict, meta: dict | None = None, quick: bool = False) -> gb.Results:
    """The results of one run, from its measurements (also used to convert older files)."""
    rows = data["us_per_launch"]
    results = gb.Results(STEM, TITLE, meta=meta, data=data, quick=quick)
    ours = rows[GPULAB_TENSORS]
    results.headline("launch of a one-block kernel on torch tensors", ours, TORCH_OP, rows[TORCH_OP],
                     goal=GOAL_VS_TORCH, unit="us", note="host time per launch; the torch op is the floor "
                     "Python-side launching can hope for")
    results.headline("launch vs plain numba on torch tensors", ours, NUMBA_TENSORS, rows[NUMBA_TENSORS],
                     goal=1.0, unit="us", note="the fast path must beat numba's own launch")
    results.section(
        "Launch paths and their parts",
        f"Host time per launch of a one-block kernel, median of {data['loops']} loops of "
        f"{data['launches_per_loop']} back-to-back launches (one synchronisation per loop).",
        table={"columns": ["launch path", "us per launch"],
               "rows": [[name.strip(), f"{us:.2f}"] for name, us in rows.items()]},
        after=[_where_the_time_goes(rows)])
    results.section("How the fast path got here (earlier runs)", HISTORY, table=HISTORY_TABLE)
    return results


def _where_the_time_goes(rows: dict) -> str:
    part = {name.strip().removeprefix("part: "): us for name, us in rows.items() if name.startswith("  part:")}
    return (f"Where gpulab's remaining time goes: the driver call through cuda-python "
            f"(~{part['cuLaunchKernel via cuda-python (params prepared)']:.1f} us), packing two tensors' pointers, "
            f"shapes and strides (~{part['pack 2 tensors into the parameter buffer']:.1f} us), the launch-shape "
            f"lookup (~{part['kernel[1, 256] (configured launcher lookup)']:.2f} us). Against numba with torch "
            f"tensors: {rows[NUMBA_TENSORS] / rows[GPULAB_TENSORS]:.1f}x faster; against a torch elementwise op: "
            f"{rows[GPULAB_TENSORS] / rows[TORCH_OP]:.2f}x its time.")


def main(argv=None):
    args = gb.parse_args(__doc__, argv)
    gb.require_gpu(f"benchmarks/{STEM}.py")
    data = measure(args.quick)
    results = report(data, quick=args.quick)
    for name, us in data["us_per_launch"].items():
        print(f"{name:<60} {us:8.2f} us")
    results.write(args.out)
    return results


if __name__ == "__main__":
    main()
