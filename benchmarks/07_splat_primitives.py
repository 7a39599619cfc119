"""Chapter 07 benchmark: splatting primitives on chapter 06's rasterizer at 1080p.

Run on a GPU:  python benchmarks/07_splat_primitives.py [--quick]   (or: gpulab bench 07)
Writes benchmarks/results/07_splat_primitives.{json,md}, the md rendered from the json.

1. Correctness first: for each primitive the numba frame against the torch frame (20k
   primitives at 1920x1080, max |difference|).
2. For 100k and 1M primitives (10k and 100k with --quick) built on the same random scene
   (chapter 06's ``random_gaussians``: each Gaussian becomes a triangle or a 6-point convex of
   about its size, or a Gabor: the Gaussian with two random frequencies of weight 0.3), the
   median time of the whole numba frame (setup + bin + sort + composite) and of the composite
   alone (``rasterize`` on the table) per footprint, beside
   chapter 06's Gaussian frame; for 4D Gaussians (the same Gaussians given a time axis and a
   small space-time rotation, all of them visible at the frame's t) the slice kernel alone
   and the whole frame at t, beside the 3DGS frame of the same scene.
3. Peers: gsplat's forward frame of the Gaussian scene (the floor; ANCHORS.md's 1.78 ms at
   1M when gsplat is not installed, said so), the reference rasterizers of 3D Convex
   Splatting and Triangle Splatting where they import (recorded missing otherwise).

Headline goals (issue 19): slicing adds < 15% to a 3DGS frame; convexes and triangles within
3x of Gaussians (and within 1.5x of their reference rasterizers where those build).
Each measurement is printed as ``RAW {...}`` as it is taken, so a run cut short keeps them.
"""
from __future__ import annotations

import torch

import gpulab
import gpulab.benchmark as gb
from gpulab import harness, splat
from gpulab.splat import primitives as P
from gpulab.splat.constants import SH_C0
from gpulab.splat.primitives import kernels as PK

STEM, TITLE = "07_splat_primitives", "Splatting primitives and shading"
WIDTH, HEIGHT = 1920, 1080
SIZES, QUICK_SIZES = (100_000, 1_000_000), (10_000, 100_000)
HEADLINE_N, QUICK_HEADLINE_N = 1_000_000, 100_000
CHECK_N = 20_000
GOAL_SLICE_OVERHEAD = 1.15       # a 4D frame at t within 15% of the 3DGS frame
GOAL_VS_GAUSSIANS = 3.0          # convexes and triangles within 3x of Gaussians
GOAL_VS_REFERENCE = 1.5          # and within 1.5x of the reference rasterizers where they build
GSPLAT_FORWARD_MS = {10_000: 0.59, 100_000: 0.90, 1_000_000: 1.78}   # ANCHORS.md, H200, 2026-11-28
REFERENCE_RASTERIZERS = {"convex": "diff_convex_rasterization", "triangle": "diff_triangle_rasterization"}
MAX_SECONDS = 1.0
BACKEND = "numba"        # what is timed (a CPU dry run of the script sets "torch")


def raw(kind: str, **values) -> None:
    print("RAW", {"kind": kind, **values}, flush=True)


def cell(value) -> str:
    return "-" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))


def base_scene(n: int) -> splat.Gaussians:
    return splat.random_gaussians(n, torch.Generator().manual_seed(n), sh_degree=0)


def colours_of(g: splat.Gaussians) -> torch.Tensor:
    return (SH_C0 * g.sh[:, 0] + 0.5).clamp_min(0.0).contiguous()


def triangles_of(g: splat.Gaussians, gen: torch.Generator):
    """A triangle per Gaussian: three vertices 2 standard deviations out along random directions."""
    n = len(g)
    offsets = torch.randn(n, 3, 3, generator=gen).to(g.means.device) * 2.0 * g.scales[:, None, :]
    return (g.means[:, None, :] + offsets).contiguous(), torch.full((n,), 1.16, device=g.means.device)


def convexes_of(g: splat.Gaussians, gen: torch.Generator):
    """A 6-point convex per Gaussian, the points 2 standard deviations out; delta, sigma as the
    reference initialises them before depth scaling (here: 1 per pixel and 1)."""
    n = len(g)
    offsets = torch.randn(n, 6, 3, generator=gen).to(g.means.device) * 2.0 * g.scales[:, None, :]
    ones = torch.ones(n, device=g.means.device)
    return (g.means[:, None, :] + offsets).contiguous(), ones, ones


def scene_4d(g: splat.Gaussians, gen: torch.Generator) -> P.Gaussians4D:
    """The Gaussians with a time axis: a space-time rotation a few degrees from the identity
    times each Gaussian's own rotation, time scale 1 and mu_t in [0.4, 0.6], so at t = 0.5
    every Gaussian is visible (marginal >= 0.98): the frame measures what slicing adds, not
    what the temporal cull removes."""
    n = len(g)
    dev = g.means.device
    rot3 = splat.torch_impl.quat_to_rotmat(g.quats)
    rot = torch.zeros(n, 4, 4, device=dev)
    rot[:, :3, :3] = rot3
    rot[:, 3, 3] = 1.0
    def near_identity():
        return torch.cat([torch.ones(n, 1), 0.05 * torch.randn(n, 3, generator=gen)], -1).to(dev)
    rot = P.rotation_4d(near_identity(), near_identity()) @ rot
    scales4 = torch.cat([g.scales, torch.ones(n, 1, device=dev)], -1)
    t = (0.4 + 0.2 * torch.rand(n, generator=gen)).to(dev)
    return P.Gaussians4D(torch.cat([g.means, t[:, None]], -1).contiguous(),
                         P.covariance_4d(rot, scales4).contiguous(), g.opacities, colours_of(g))


def frames(g: splat.Gaussians, camera, backend: str):
    """The whole-frame callables of each primitive on the scene ``g``."""
    gen = torch.Generator().manual_seed(len(g) + 1)
    colours = colours_of(g)
    verts, tri_sigma = triangles_of(g, gen)
    points, deltas, sigmas = convexes_of(g, gen)
    s4 = scene_4d(g, gen)
    cov = splat.torch_impl.covariance_3d(g.quats, g.scales)
    waves = torch.randn(len(g), 2, 3, generator=gen).to(g.means.device)
    freqs = (waves / g.scales.amax(-1)[:, None, None]).contiguous()    # about one cycle per standard deviation
    weights = torch.full((len(g), 2), 0.3, device=g.means.device)
    return {
        "gaussian": lambda: splat.render(g, camera, backend=backend, features=colours),
        "4d": lambda: P.render_4d(s4, camera, 0.5, backend=backend),
        "triangle": lambda: P.render_triangles(verts, colours, tri_sigma, g.opacities, camera, backend=backend),
        "convex": lambda: P.render_convexes(points, colours, deltas, sigmas, g.opacities, camera, backend=backend),
        "gabor": lambda: P.render_gabors(g.means, cov, freqs, weights, g.opacities, colours, camera, backend=backend),
    }, s4


def check_correctness(camera) -> dict:
    g = base_scene(CHECK_N)
    torch_frames, _ = frames(g, camera, "torch")
    numba_frames, _ = frames(g, camera, "numba")
    out = {}
    for kind in torch_frames:
        a, b = torch_frames[kind](), numba_frames[kind]()
        out[kind] = {"max_abs": float(f"{(a.image - b.image).abs().max().item():.3g}"),
                     "covered_pixels": int(((1 - a.transmittance) > 0.01).sum())}
        raw("check", primitive=kind, **out[kind])
    return out


def time_sizes(sizes, camera) -> dict:
    out = {}
    for n in sizes:
        g = base_scene(n)
        fns, s4 = frames(g, camera, BACKEND)
        row = {}
        for kind, fn in fns.items():
            row[f"{kind}_frame_ms"] = round(harness.bench(fn, warmup=3, max_seconds=MAX_SECONDS).median_ms, 4)
            frame = fn()
            if kind != "gaussian":
                footprint = {"4d": splat.GAUSSIAN, "triangle": P.TRIANGLE, "convex": P.CONVEX, "gabor": P.GABOR}[kind]
                features = s4.colors if kind == "4d" else colours_of(g)
                depths = _depths_for(kind, frame, g, camera, s4)
                composite = (lambda f=frame, fp=footprint, feats=features, d=depths: splat.rasterize(
                    f.params, feats, f.means2d, f.radii, d, camera.width, camera.height, None, fp, BACKEND))
                row[f"{kind}_composite_ms"] = round(
                    harness.bench(composite, warmup=3, max_seconds=MAX_SECONDS).median_ms, 4)
            row[f"{kind}_pairs"] = int((frame.ranges[:, 1] - frame.ranges[:, 0]).sum())
        row["slice_ms"] = round(harness.bench(lambda: PK.slice_4d(s4.means4, s4.cov4, s4.opacities, 0.5),
                                              warmup=3, max_seconds=MAX_SECONDS).median_ms, 4)
        out[n] = row
        raw("sizes", n=n, **row)
        del g, fns, s4
        torch.cuda.empty_cache()
    return out


def _depths_for(kind, frame, g, camera, s4):
    """The sort depths the frame used (recomputed the same way as the render functions)."""
    if kind == "4d":
        m3, _, _ = PK.slice_4d(s4.means4, s4.cov4, s4.opacities, 0.5)
        view = camera.viewmat.to(m3.device)
        return (m3 @ view[:3, :3].T + view[:3, 3])[:, 2].contiguous()
    view = camera.viewmat.to(g.means.device)
    return (g.means @ view[:3, :3].T + view[:3, 3])[:, 2].contiguous()


def time_peers(sizes, camera) -> dict:
    out = {"gsplat": {}, "reference": {}}
    line = gb.peer("gsplat", lambda lib: lib)
    if isinstance(line, gb.Missing):
        out["gsplat"]["missing"] = line.reason
        raw("gsplat", missing=line.reason)
    else:
        out["gsplat"]["version"] = getattr(line, "__version__", "?")
        viewmats = camera.viewmat[None].to("cuda", torch.float32)
        ks = torch.tensor([[[camera.fx, 0.0, camera.cx], [0.0, camera.fy, camera.cy], [0.0, 0.0, 1.0]]],
                          device="cuda")
        for n in sizes:
            try:
                g = base_scene(n)
                quats = torch.nn.functional.normalize(g.quats, dim=-1)
                colours = colours_of(g)
                fn = (lambda g=g, q=quats, c=colours: line.rasterization(
                    g.means, q, g.scales, g.opacities, c, viewmats, ks, camera.width, camera.height,
                    near_plane=camera.near))
                out["gsplat"][n] = round(harness.bench(fn, warmup=3, max_seconds=MAX_SECONDS).median_ms, 4)
                raw("gsplat", n=n, forward_ms=out["gsplat"][n])
            except Exception as exc:  # noqa: BLE001  (a failing peer is recorded, the benchmark goes on)
                out["gsplat"]["error"] = f"{type(exc).__name__}: {exc}"[:300]
                break
    for kind, module in REFERENCE_RASTERIZERS.items():
        ref = gb.peer(module, lambda lib: lib)
        # the reference rasterizers are CUDA extensions built from their repositories; timing them
        # needs their own scene format, so this run records whether they import at all
        out["reference"][kind] = ref.reason if isinstance(ref, gb.Missing) else "imports (not timed by this script)"
        raw("reference", primitive=kind, status=out["reference"][kind])
    return out


def measure(quick: bool) -> dict:
    camera = splat.benchmark_camera(WIDTH, HEIGHT, device=gpulab.device)
    sizes = QUICK_SIZES if quick else SIZES
    data = {"width": WIDTH, "height": HEIGHT, "backend": BACKEND, "sizes": list(sizes),
            "headline_n": QUICK_HEADLINE_N if quick else HEADLINE_N}
    data["correctness"] = check_correctness(camera)
    data["timings"] = time_sizes(sizes, camera)
    data["peers"] = time_peers(sizes, camera)
    return data


def _as_int_keys(d: dict) -> dict:
    return {int(k): v for k, v in d.items() if str(k).isdigit()}


def report(data: dict, meta: dict | None = None, quick: bool = False) -> gb.Results:
    results = gb.Results(STEM, TITLE, meta=meta, data=data, quick=quick)
    timings = _as_int_keys(data["timings"])
    n = data["headline_n"]
    head = timings[n]
    res = f"{data['width']}x{data['height']}"
    results.headline(f"4D Gaussians: frame at t over the 3DGS frame, {n:,} at {res} (ms)", head["4d_frame_ms"],
                     "chapter 06 Gaussian frame", head["gaussian_frame_ms"], goal=GOAL_SLICE_OVERHEAD, unit="ms",
                     note="slice + covariance projection + bin + sort + composite, against chapter 06's frame of "
                          "the 3D Gaussians")
    for kind, name in (("triangle", "Triangles"), ("convex", "Smooth convexes")):
        results.headline(f"{name}: frame over Gaussians, {n:,} at {res} (ms)", head[f"{kind}_frame_ms"],
                         "chapter 06 Gaussian frame", head["gaussian_frame_ms"], goal=GOAL_VS_GAUSSIANS, unit="ms",
                         note="setup + bin + sort + composite, one primitive per Gaussian of the same scene")
    gs = _as_int_keys(data["peers"]["gsplat"])
    if n in gs:
        gs_ms, source = gs[n], f"gsplat {data['peers']['gsplat'].get('version', '?')} timed in this run"
    else:
        gs_ms = GSPLAT_FORWARD_MS.get(n)
        source = "gsplat not in this run: ANCHORS.md's H200 figure of 2026-11-28"
    if gs_ms:
        results.headline(f"Gaussian frame vs gsplat (the floor), {n:,} at {res} (ms)", head["gaussian_frame_ms"],
                         "gsplat forward", gs_ms, goal=GOAL_VS_REFERENCE, unit="ms", note=source)
    rows = []
    for size, r in sorted(timings.items()):
        for kind in ("gaussian", "4d", "triangle", "convex", "gabor"):
            rows.append([f"{size:,}", kind, cell(r[f"{kind}_frame_ms"]), cell(r.get(f"{kind}_composite_ms")),
                         cell(r[f"{kind}_frame_ms"] / r["gaussian_frame_ms"]), cell(r.get(f"{kind}_pairs"))])
    results.section("Frame and composite per footprint (ms)", table={
        "columns": ["primitives", "footprint", "frame (ms)", "composite only (ms)", "frame / Gaussian frame",
                    "(primitive, tile) pairs"], "rows": rows},
        after=[f"Slice kernel alone at {size:,}: {r['slice_ms']:.4g} ms" for size, r in sorted(timings.items())])
    check = data["correctness"]
    results.section("Correctness: numba frame against the torch frame", table={
        "columns": ["footprint", "max |numba - torch|", "covered pixels"],
        "rows": [[k, cell(v["max_abs"]), str(v["covered_pixels"])] for k, v in check.items()]},
        text=[f"{CHECK_N:,} primitives at {data['width']}x{data['height']}."])
    ref = data["peers"]["reference"]
    results.section("Reference rasterizers", text=[f"{k}: {v}" for k, v in ref.items()],
                    after=["The 1.5x goal against the reference rasterizers is judged only where they build "
                           "and are timed side by side."])
    return results


def main(argv=None):
    args = gb.parse_args(__doc__, argv)
    gb.require_gpu(f"benchmarks/{STEM}.py")
    data = measure(args.quick)
    results = report(data, quick=args.quick)
    results.write(args.out)
    return results


if __name__ == "__main__":
    main()
