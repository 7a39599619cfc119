"""NeRF sampling and volume rendering on the GPU: the packed scans against the copy
bandwidth and nerfacc, grid marching against nerfacc's sampler, RT-NeRF against uniform
marching, and the bitmap/coordinate storage crossover.

Run on a GPU:  python benchmarks/08_nerf.py [--quick]   (or: gpulab bench 08; about a
minute on an H200). Writes benchmarks/results/08_nerf.{json,md}.

1. Scans at 2^20 rays and 2^26 samples (64 a ray): ``render_weight_from_density`` (24 bytes
   a sample), ``render_transmittance_from_alpha`` (8) and ``accumulate_along_rays`` with 3
   channels (16), numba and the torch spec, beside a device copy of 2^26 float32 (ANCHORS.md:
   about 4.0 TB/s counting read and write) and nerfacc's CUDA functions where nerfacc is
   installed and builds (its CUDA extension compiles on first use; recorded missing
   otherwise). Goals (issue 20): at least 60% of the copy bandwidth, within 1.5x of nerfacc.
2. Grid marching: a 128^3 one-level occupancy grid of a blob scene, 2^20 rays, instant-ngp's
   step (sqrt(3)/1024 of the unit box, here 2 wide): samples per second of the numba
   skipping marcher against nerfacc's ``OccGridEstimator.sampling`` on the same bits.
3. RT-NeRF against uniform marching: samples and ms for one frame (torch, on the GPU).
4. Bitmap against coordinates: bytes per 16^3 and 32^3 block by density (a count, no timing).
"""
from __future__ import annotations

import math

import torch

import gpulab
import gpulab.benchmark as gb
from gpulab.nerf import fields, kernels as K, occgrid, pack_info, rtnerf, torch_impl as T

STEM, TITLE = "08_nerf", "NeRF sampling and volume rendering"
GOAL_COPY_FRACTION = 0.6        # issue 20: scans at >= 60% of the copy bandwidth
GOAL_VS_NERFACC = 1.5           # and within 1.5x of nerfacc's CUDA
FULL = {"log_rays": 20, "per_ray": 64, "grid": 128, "march_rays": 1 << 20, "rt_res": 32, "rt_image": (256, 256)}
QUICK = {"log_rays": 14, "per_ray": 64, "grid": 64, "march_rays": 1 << 14, "rt_res": 16, "rt_image": (64, 64)}
DEV = "cuda"                    # the benchmark runs only on a GPU (gb.require_gpu)
SCAN_BYTES = {"weights_from_density": 24, "transmittance_from_alpha": 8, "accumulate_rgb": 16}


def _scan_inputs(n_rays: int, per_ray: int, seed: int = 0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    n = n_rays * per_ray
    t0 = torch.rand(n, device=DEV, generator=g) * 3
    t1 = t0 + 0.01 * torch.rand(n, device=DEV, generator=g)
    sigmas = 10 * torch.rand(n, device=DEV, generator=g)
    info = pack_info(torch.full((n_rays,), per_ray, device=DEV))
    norms = 1 + torch.rand(n_rays, device=DEV, generator=g)
    alphas = torch.rand(n, device=DEV, generator=g) * 0.05
    rgb = torch.rand(n, 3, device=DEV, generator=g)
    return t0, t1, sigmas, info, norms, alphas, rgb


def _check_correct():
    args = _scan_inputs(1001, 37, seed=3)
    t0, t1, sig, info, norms, alphas, rgb = args
    for a, b in zip(K.render_weight_from_density(t0, t1, sig, info, norms),
                    T.render_weight_from_density(t0, t1, sig, info, norms)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    w, _ = K.render_weight_from_alpha(alphas, info)
    torch.testing.assert_close(K.accumulate_along_rays(w, rgb, info), T.accumulate_along_rays(w, rgb, info),
                               atol=1e-4, rtol=1e-4)


def _nerfacc_lines(lib, t0, t1, sig, info, alphas, rgb, n_rays):
    ray_idx = torch.repeat_interleave(torch.arange(n_rays, device=DEV), info[:, 1])
    info32 = info.int()
    return {
        "weights_from_density": lambda: lib.render_weight_from_density(t0, t1, sig, packed_info=info32),
        "transmittance_from_alpha": lambda: lib.render_transmittance_from_alpha(alphas, packed_info=info32),
        "accumulate_rgb": lambda: lib.accumulate_along_rays(alphas, rgb, ray_indices=ray_idx, n_rays=n_rays),
    }


def measure_scans(cfg) -> dict:
    n_rays = 1 << cfg["log_rays"]
    t0, t1, sig, info, norms, alphas, rgb = _scan_inputs(n_rays, cfg["per_ray"])
    n = t0.numel()
    src = torch.rand(n, device=DEV)
    dst = torch.empty_like(src)
    copy_ms = gpulab.bench(lambda: dst.copy_(src)).median_ms
    ours = {"weights_from_density": lambda: K.render_weight_from_density(t0, t1, sig, info, norms),
            "transmittance_from_alpha": lambda: K.render_transmittance_from_alpha(alphas, info),
            "accumulate_rgb": lambda: K.accumulate_along_rays(alphas, rgb, info)}
    spec = {"weights_from_density": lambda: T.render_weight_from_density(t0, t1, sig, info, norms),
            "transmittance_from_alpha": lambda: T.render_transmittance_from_alpha(alphas, info),
            "accumulate_rgb": lambda: T.accumulate_along_rays(alphas, rgb, info)}
    nerfacc = gb.peer("nerfacc", lambda lib: _nerfacc_lines(lib, t0, t1, sig, info, alphas, rgb, n_rays))
    rows = []
    for name in ours:
        row = {"scan": name, "bytes_per_sample": SCAN_BYTES[name], "ours_ms": gpulab.bench(ours[name]).median_ms,
               "torch_ms": gpulab.bench(spec[name]).median_ms, "nerfacc_ms": None, "nerfacc_error": None}
        if isinstance(nerfacc, gb.Missing):
            row["nerfacc_error"] = nerfacc.reason
        else:
            try:
                row["nerfacc_ms"] = gpulab.bench(nerfacc[name]).median_ms
            except Exception as exc:  # noqa: BLE001  (its extension may not build: record why)
                row["nerfacc_error"] = f"{type(exc).__name__}: {exc}"[:300]
        rows.append(row)
        print(f"  {name}: ours {row['ours_ms']:.3f} ms, torch {row['torch_ms']:.3f} ms, nerfacc {row['nerfacc_ms']}", flush=True)
    return {"n_rays": n_rays, "n_samples": n, "copy_ms": copy_ms, "copy_bytes": 2 * 4 * n, "rows": rows}


def _march_setup(cfg):
    gen = torch.Generator().manual_seed(0)
    scene = fields.BlobScene.random(6, gen)
    grid = occgrid.OccupancyGrid(resolution=cfg["grid"], device=DEV)
    step = occgrid.STEP_INSTANT_NGP * 2
    grid.update(0, lambda x: scene.density(x) * step, gen)
    n = cfg["march_rays"]
    g = torch.Generator(device=DEV).manual_seed(1)
    o = torch.nn.functional.normalize(torch.randn(n, 3, device=DEV, generator=g), dim=1) * 2.5
    d = torch.nn.functional.normalize(-o + 0.3 * torch.randn(n, 3, device=DEV, generator=g), dim=1)
    return scene, grid, step, o, d


def _nerfacc_sampler(lib, grid, step, o, d):
    est = lib.OccGridEstimator(roi_aabb=grid.aabbs[0].tolist(), resolution=grid.resolution, levels=1).to(DEV)
    est.binaries = grid.binaries.view(1, grid.resolution, grid.resolution, grid.resolution).clone()
    return lambda: est.sampling(o, d, render_step_size=step)


def measure_marching(cfg) -> dict:
    scene, grid, step, o, d = _march_setup(cfg)
    info, t0, _, visited = occgrid.march_skipping(grid, o, d, step)
    every = occgrid.march_skipping(grid, o, d, step, skip=False)           # the same kernel, no jumps
    assert torch.equal(every[0], info) and torch.equal(every[1], t0), "the skipping marcher lost samples"
    small = min(len(o), 1 << 14)            # the torch spec on a slice: counts equal up to ulps at cell faces
    dense = occgrid.march_dense(grid, o[:small], d[:small], step)
    same_counts = float((dense[0][:, 1] == info[:small, 1]).float().mean())
    ours_ms = gpulab.bench(lambda: occgrid.march_skipping(grid, o, d, step)).median_ms
    out = {"n_rays": len(o), "grid": grid.resolution, "step": step, "samples": int(t0.numel()),
           "visited": int(visited.sum()), "occupied_cells": int(grid.binaries.sum()), "ours_ms": ours_ms,
           "visited_without_skipping": int(every[3].sum()), "dense_rays": small,
           "dense_same_counts": same_counts, "nerfacc_ms": None, "nerfacc_samples": None, "nerfacc_error": None}
    line = gb.peer("nerfacc", lambda lib: _nerfacc_sampler(lib, grid, step, o, d))
    if isinstance(line, gb.Missing):
        out["nerfacc_error"] = line.reason
    else:
        try:
            ray_idx, _, _ = line()
            out["nerfacc_samples"] = int(ray_idx.numel())
            out["nerfacc_ms"] = gpulab.bench(line).median_ms
        except Exception as exc:  # noqa: BLE001
            out["nerfacc_error"] = f"{type(exc).__name__}: {exc}"[:300]
    print(f"  marching: {out['samples']:,} samples in {ours_ms:.3f} ms; nerfacc {out['nerfacc_ms']}", flush=True)
    return out


def measure_rtnerf(cfg) -> dict:
    gen = torch.Generator().manual_seed(2)
    scene = fields.BlobScene.random(6, gen)
    grid = occgrid.OccupancyGrid(resolution=cfg["rt_res"], device=DEV)
    step = 2 * math.sqrt(3) / 512
    grid.update(0, lambda x: scene.density(x) * step, gen)
    w, h = cfg["rt_image"]
    cam = torch.tensor([[1.0, 0, 0, 0.2], [0, 1, 0, -0.1], [0, 0, 1, -3.0]], device=DEV)
    args = (scene, grid, cam, 1.2 * w, 1.2 * w, w / 2, h / 2, w, h, step)
    image, _, stats = rtnerf.render_cube_ordered(*args)
    uniform_image, _, uniform = rtnerf.render_uniform(*args)
    rt_ms = gpulab.bench(lambda: rtnerf.render_cube_ordered(*args), warmup=1, max_seconds=3).median_ms
    uni_ms = gpulab.bench(lambda: rtnerf.render_uniform(*args), warmup=1, max_seconds=3).median_ms
    print(f"  RT-NeRF {stats['samples']:,} samples {rt_ms:.1f} ms; uniform {uniform['samples']:,} {uni_ms:.1f} ms", flush=True)
    return {"image": [w, h], "grid": grid.resolution, "cubes": stats["cubes"], "rt_samples": stats["samples"],
            "ray_cube_tests": stats["ray_cube_tests"], "uniform_samples": uniform["samples"], "rt_ms": rt_ms,
            "uniform_ms": uni_ms, "max_colour_difference": float((image - uniform_image).abs().max())}


def storage_table() -> list[dict]:
    rows = []
    for block in (16, 32):
        for density in (0.01, 0.02, 0.05, 0.08, 0.1, 0.2, 0.5):
            n = int(density * block ** 3)
            rows.append({"block": block, "density": density, "bitmap_bytes": rtnerf.bitmap_bytes(block),
                         "coordinate_bytes": rtnerf.coordinate_bytes(n, block),
                         "crossover": rtnerf.crossover_density(block)})
    return rows


def measure(quick: bool = False) -> dict:
    cfg = QUICK if quick else FULL
    _check_correct()
    return {"config": cfg, "scans": measure_scans(cfg), "marching": measure_marching(cfg),
            "rtnerf": measure_rtnerf(cfg), "storage": storage_table()}


def report(data: dict, meta: dict | None = None, quick: bool = False) -> gb.Results:
    results = gb.Results(STEM, TITLE, meta=meta, data=data, quick=quick)
    scans = data["scans"]
    copy_bw = scans["copy_bytes"] / (scans["copy_ms"] * 1e-3)
    rows = []
    for row in scans["rows"]:
        bw = row["bytes_per_sample"] * scans["n_samples"] / (row["ours_ms"] * 1e-3)
        rows.append([row["scan"], f"{row['ours_ms']:.4g}", f"{bw / 1e12:.3g}", f"{bw / copy_bw:.0%}",
                     f"{row['torch_ms']:.4g}", "-" if row["nerfacc_ms"] is None else f"{row['nerfacc_ms']:.4g}"])
    head = scans["rows"][0]
    head_bw = head["bytes_per_sample"] * scans["n_samples"] / (head["ours_ms"] * 1e-3)
    results.headline(f"weights from density, {scans['n_samples']:,} samples: fraction of copy bandwidth",
                     head_bw / copy_bw, goal=GOAL_COPY_FRACTION, lower_is_better=False,
                     note=f"copy of the same float32 count: {scans['copy_ms']:.4g} ms ({copy_bw / 1e12:.3g} TB/s)")
    if head["nerfacc_ms"] is not None:
        results.headline("weights from density (ms)", head["ours_ms"], "nerfacc render_weight_from_density",
                         head["nerfacc_ms"], goal=GOAL_VS_NERFACC, unit="ms")
    else:
        results.headline("weights from density (ms)", head["ours_ms"], unit="ms",
                         note=f"nerfacc not timed: {head['nerfacc_error']}")
    march = data["marching"]
    ours_rate = march["samples"] / (march["ours_ms"] * 1e-3)
    if march["nerfacc_ms"] is not None:
        results.headline("grid marching (samples/s)", ours_rate, "nerfacc OccGridEstimator.sampling",
                         march["nerfacc_samples"] / (march["nerfacc_ms"] * 1e-3), goal=1 / GOAL_VS_NERFACC,
                         lower_is_better=False, unit="samples/s")
    else:
        results.headline("grid marching (samples/s)", ours_rate, lower_is_better=False, unit="samples/s",
                         note=f"nerfacc not timed: {march['nerfacc_error']}")
    rt = data["rtnerf"]
    results.headline(f"RT-NeRF frame {rt['image'][0]}x{rt['image'][1]} (samples)", rt["rt_samples"],
                     "uniform marching", rt["uniform_samples"], unit="samples", note="no goal in the issue")
    results.headline(f"RT-NeRF frame {rt['image'][0]}x{rt['image'][1]} (ms)", rt["rt_ms"], "uniform marching",
                     rt["uniform_ms"], unit="ms", note="torch, one Python step per cube; no goal in the issue")
    results.section("Scans on packed rays", table={
        "columns": ["scan", "numba (ms)", "TB/s", "of copy", "torch spec (ms)", "nerfacc (ms)"], "rows": rows},
        after=[f"{scans['n_rays']:,} rays of {scans['n_samples'] // scans['n_rays']} samples."])
    results.section("Grid marching", [
        f"{march['n_rays']:,} rays through a {march['grid']}^3 grid ({march['occupied_cells']:,} occupied cells), "
        f"step {march['step']:.5g}: {march['samples']:,} samples kept, {march['visited']:,} lattice points looked at, "
        f"{march['ours_ms']:.4g} ms ({march['visited_without_skipping']:,} points without skipping, the same samples). "
        f"Against the torch dense marcher on {march['dense_rays']:,} rays, {march['dense_same_counts']:.2%} of the rays "
        "have the same sample count (the rest differ by a rounding at a cell face)."])
    results.section("RT-NeRF against uniform marching", [
        f"{rt['cubes']:,} occupied cubes of a {rt['grid']}^3 grid, {rt['ray_cube_tests']:,} ray-cube tests; "
        f"{rt['rt_samples']:,} samples in {rt['rt_ms']:.4g} ms against {rt['uniform_samples']:,} in "
        f"{rt['uniform_ms']:.4g} ms; largest colour difference {rt['max_colour_difference']:.3g} (the grid's threshold)."])
    results.section("Bitmap or coordinates (bytes per block)", table={
        "columns": ["block", "density", "bitmap", "coordinates", "smaller"],
        "rows": [[str(r["block"]), f"{r['density']:.2f}", str(r["bitmap_bytes"]), str(r["coordinate_bytes"]),
                  "coordinates" if r["coordinate_bytes"] < r["bitmap_bytes"] else "bitmap"] for r in data["storage"]]},
        after=["Crossover at 1 / (3 ceil(log2 B)): 1/12 for B = 16, 1/15 for B = 32."])
    return results


def main(argv=None):
    args = gb.parse_args(__doc__, argv)
    gb.require_gpu(f"benchmarks/{STEM}.py")
    results = report(measure(args.quick), quick=args.quick)
    results.write(args.out)


if __name__ == "__main__":
    main()
