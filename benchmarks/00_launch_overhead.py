"""Launch overhead of numba.cuda kernels: where the time goes, and gpulab's fast path.

Run on a GPU:  python benchmarks/00_launch_overhead.py
Writes benchmarks/results/00_launch_overhead.{md,json}.

Each figure is host time per launch of a trivial one-block kernel, measured over a loop
of back-to-back launches (synchronising once at the end), median of several loops. That
is the cost Python adds before the GPU sees the work: for small kernels it *is* the
kernel's time.
"""
from __future__ import annotations

import ctypes
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import gpulab
import torch
from numba import cuda

from gpulab import launch as gl

if not gpulab.ON_GPU:
    sys.exit("this benchmark needs a GPU (gpulab is in simulator mode)")

LAUNCHES = 2000
LOOPS = 7


def trivial(x, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = x[i] + 1.0


numba_kernel = cuda.jit(trivial)
fast_kernel = gpulab.kernel(trivial)


def per_launch_us(fn) -> float:
    """Median over LOOPS of (host time for LAUNCHES calls) / LAUNCHES, in microseconds."""
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(LOOPS):
        t0 = time.perf_counter()
        for _ in range(LAUNCHES):
            fn()
        torch.cuda.synchronize()
        samples.append((time.perf_counter() - t0) / LAUNCHES * 1e6)
    return statistics.median(samples)


def main():
    x = torch.rand(256, device="cuda")
    out = torch.empty_like(x)
    dx, dout = cuda.as_cuda_array(x), cuda.as_cuda_array(out)

    # correctness of the fast path first, on awkward arguments
    fast_kernel[1, 256](x, out)
    torch.cuda.synchronize()
    assert torch.equal(out, x + 1), "fast launch computed a wrong result"

    rows = {}
    rows["torch elementwise op (x + 1)"] = per_launch_us(lambda: torch.add(x, 1.0, out=out))
    rows["numba kernel[1, 256], pre-wrapped device arrays"] = per_launch_us(lambda: numba_kernel[1, 256](dx, dout))
    rows["numba kernel[1, 256], torch tensors each call"] = per_launch_us(lambda: numba_kernel[1, 256](x, out))
    rows["gpulab.kernel[1, 256], torch tensors each call"] = per_launch_us(lambda: fast_kernel[1, 256](x, out))
    stream = torch.cuda.current_stream().cuda_stream
    rows["gpulab.kernel[1, 256], explicit stream handle"] = per_launch_us(lambda: fast_kernel[1, 256](x, out, stream=stream))

    # where the time goes: the pieces of the slow path and of the fast path, alone
    cfg = numba_kernel[1, 256]
    rows["  part: numba typeof(torch tensor) x2"] = per_launch_us(
        lambda: (numba_kernel.typeof_pyval(x), numba_kernel.typeof_pyval(out)))
    rows["  part: cuda.as_cuda_array(torch tensor) x2"] = per_launch_us(
        lambda: (cuda.as_cuda_array(x), cuda.as_cuda_array(out)))
    plan = next(iter(fast_kernel._plans.values()))
    drv = gl._driver()
    rows["  part: cuLaunchKernel via cuda-python (params prepared)"] = per_launch_us(
        lambda: drv.cuLaunchKernel(plan.handle, 1, 1, 1, 256, 1, 1, 0, stream, plan.params_address, 0))
    import ctypes
    launch_c = ctypes.CDLL("libcuda.so.1").cuLaunchKernel
    launch_c.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [ctypes.c_void_p] * 3
    handle = int(plan.handle)
    rows["  part: cuLaunchKernel via ctypes (params prepared)"] = per_launch_us(
        lambda: launch_c(handle, 1, 1, 1, 256, 1, 1, 0, stream, plan.params_address, None))
    rows["  part: torch.cuda.current_stream().cuda_stream"] = per_launch_us(
        lambda: torch.cuda.current_stream().cuda_stream)
    rows["  part: raw current stream (gpulab)"] = per_launch_us(gl._current_stream)
    rows["  part: pack 2 tensors into the parameter buffer"] = per_launch_us(
        lambda: plan.slots.__setitem__(slice(None), plan.pack(x, out)))
    rows["  part: kernel[1, 256] (configured launcher lookup)"] = per_launch_us(lambda: fast_kernel[1, 256])
    del cfg

    props = torch.cuda.get_device_properties(0)
    try:
        from importlib.metadata import version
        nc = version("numba-cuda")
    except Exception:
        nc = "?"
    meta = {
        "gpu": props.name, "date": datetime.date.today().isoformat(), "torch": torch.__version__,
        "numba-cuda": nc, "python": sys.version.split()[0], "launches_per_loop": LAUNCHES, "loops": LOOPS,
    }
    width = max(map(len, rows))
    lines = [f"{name:<{width}}  {us:8.2f} us" for name, us in rows.items()]
    print("\n".join(lines))
    outdir = Path(__file__).parent / "results"
    outdir.mkdir(exist_ok=True)
    (outdir / "00_launch_overhead.json").write_text(json.dumps({"meta": meta, "us_per_launch": rows}, indent=1))
    md = [f"# Launch overhead ({meta['gpu']}, {meta['date']})", "",
          f"torch {meta['torch']}, numba-cuda {meta['numba-cuda']}, Python {meta['python']}. "
          f"Host time per launch of a one-block kernel, median of {LOOPS} loops of {LAUNCHES} "
          "back-to-back launches.", "", "| launch path | us per launch |", "|---|---|"]
    md += [f"| {name.strip()} | {us:.2f} |" for name, us in rows.items()]
    (outdir / "00_launch_overhead.md").write_text("\n".join(md) + "\n")
    return rows


if __name__ == "__main__":
    main()
