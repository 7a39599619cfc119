"""Graded checks of chapter 07's assignment (solutions/07_splat_primitives.ipynb), on the
checks engine (:mod:`.engine`).

Task 1  ``slice_4d(means4, cov4, opacities, t)`` -> ``(means3, cov3, opacities_t)``: the 3D
        Gaussian a 4D Gaussian shows at time t (any torch code).
Task 2  ``triangle_window_kernel(verts, sigmas, pixels, out)``: Triangle Splatting's window
        ``w = max(0, phi(p) / phi(s)) ** sigma`` of every triangle at every pixel (one thread
        per (triangle, pixel): x the pixel, y the triangle).
Task 3  ``convex_window_kernel(normals, offsets, n_edges, depths, deltas, sigmas, pixels, out)``:
        3D Convex Splatting's window ``sigmoid(-sigma' log sum_k exp(delta' L_k))``, the
        sharpness scaled by the view depth, the log-sum-exp with its max shifted out.
Task 4  ``shade_kernel(gbuffer, alpha, light_dir, light_rgb, fx, fy, cx, cy, out)``: direct
        GGX shading of a G-buffer, one thread per pixel (x the column, y the row).

The inputs probe each rule: Gaussians far from their time (the 0.05 cull), tilted in
space-time (the mean shift and the Schur complement), triangles of both windings, a
convex sharp enough that exp(delta' L) overflows without the shift, metallic and dielectric
pixels, normals facing away from the light. Each task's planted wrong answers are at the end.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from numba import cuda

from ...harness import reference
from ...launch import kernel
from ...splat.primitives import kernels as prim_kernels
from ...splat.primitives import torch_impl as PT
from .engine import FUNCTION, KERNEL, Hint, Planted, Sizes, Task

__all__ = ["check_task1", "check_task2", "check_task3", "check_task4", "task1_inputs", "task2_inputs",
           "task3_inputs", "task4_inputs", "reference_slice", "reference_triangle_window",
           "reference_convex_window", "reference_shade", "slice_variant", "triangle_window_variant",
           "convex_window_variant", "shade_variant", "SLICE", "TRIANGLE_WINDOW", "CONVEX_WINDOW", "SHADE"]


def _close(a, b, rtol=1e-3, atol=1e-4) -> bool:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True))


def _variant_hint(variant, say: str, **mistake) -> Hint:
    """A hint for the mistake ``mistake``: every output equals ``variant(*inputs, **mistake)``
    (and that differs from the right answer on these inputs)."""
    def when(case):
        if case.error is not None or len(case.outputs) != len(case.expected):
            return False
        wrong = variant(*case.inputs, **mistake)
        wrong = wrong if isinstance(wrong, tuple) else (wrong,)
        # "differs" at float rounding, not at the matching tolerance: a mistake whose effect is
        # smaller than 1e-3 yet beyond a task's 1e-4 (task 1's Schur complement on some seeds)
        # must still be named
        differs = not all(_close(w, e, rtol=1e-6, atol=1e-7) for w, e in zip(wrong, case.expected))
        return differs and all(_close(o, w) for o, w in zip(case.outputs, wrong))

    return Hint(when, say)


def _nan_where_zero(case) -> bool:
    out, ref = case.output, case.expected[0]
    return case.error is None and bool((torch.isnan(out.cpu()) & (ref.cpu() == 0)).any())


# ------------------------------------------------------------------ task 1: temporal slicing

def task1_inputs(n: int, gen: torch.Generator):
    """(means4 [n, 4], cov4 [n, 4, 4], opacities [n], t): random space-time rotations (the
    mean shift and the Schur complement matter), every fourth Gaussian far from t (culled)."""
    means4 = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    rot = PT.rotation_4d(torch.randn(n, 4, generator=gen, dtype=torch.float64),
                         torch.randn(n, 4, generator=gen, dtype=torch.float64))
    scales = 0.2 + torch.rand(n, 4, generator=gen, dtype=torch.float64)
    cov4 = PT.covariance_4d(rot, scales)
    t = float(torch.rand(1, generator=gen)) - 0.5
    far = torch.arange(n) % 4 == 3
    means4[far, 3] = t + 3.0 * cov4[far, 3, 3].sqrt()          # marginal exp(-4.5) < 0.05
    opacities = 0.2 + 0.8 * torch.rand(n, generator=gen, dtype=torch.float64)
    return means4.float(), cov4.float(), opacities.float(), t


@reference
def reference_slice(means4, cov4, opacities, t):
    """(means3 [N, 3], cov3 [N, 3, 3], opacities_t [N]) in float64, returned as float32."""
    out = PT.slice_4d(means4.double(), cov4.double(), opacities.double(), float(t))
    return tuple(o.float() for o in out)


def slice_variant(means4, cov4, opacities, t, *, conditional=True, shift=True, shift_sign=1.0, weight="peak",
                  cull=True, variance=True):
    """Task 1 in float64 with switchable mistakes; the defaults give :func:`reference_slice`."""
    m, c, o = means4.double().cpu(), cov4.double().cpu(), opacities.double().cpu()
    s_tt, s_xt = c[:, 3, 3], c[:, :3, 3]
    dt = shift_sign * (float(t) - m[:, 3])
    means3 = m[:, :3] + (s_xt * (dt / s_tt)[:, None] if shift else 0.0)
    cov3 = c[:, :3, :3] - (s_xt[:, :, None] * s_xt[:, None, :] / s_tt[:, None, None] if conditional else 0.0)
    spread = s_tt if variance else s_tt.sqrt()
    marginal = torch.exp(-0.5 * dt * dt / spread)
    if weight == "density":
        marginal = marginal / torch.sqrt(2 * math.pi * s_tt)
    o_t = o * marginal
    if cull:
        o_t = torch.where(marginal > 0.05, o_t, torch.zeros_like(o_t))
    return means3.float(), cov3.float(), o_t.float()


SLICE = Task(
    chapter="07", number=1, title="4D Gaussian sliced at time t", kind=FUNCTION,
    reference=reference_slice, make_inputs=task1_inputs,
    sizes=Sizes(sim=[1, 9, 40], hidden=[257], gpu=[100_003]), rtol=1e-4, atol=1e-5,
    candidate_name="slice_4d",
    hints=[
        _variant_hint(slice_variant, "cov3 is the conditional covariance S_xx - S_xt S_xt^T / S_tt (the Schur "
                      "complement), not S_xx", conditional=False),
        _variant_hint(slice_variant, "The mean moves with time: mu3 = mu_x + S_xt (t - mu_t) / S_tt (no mean shift "
                      "found)", shift=False),
        _variant_hint(slice_variant, "The shift is S_xt (t - mu_t) / S_tt: the sign of (t - mu_t) is reversed",
                      shift_sign=-1.0),
        _variant_hint(slice_variant, "The temporal opacity peaks at 1: o exp(-(t - mu_t)^2 / (2 S_tt)), without the "
                      "1/sqrt(2 pi S_tt) of a normalised density", weight="density"),
        _variant_hint(slice_variant, "S_tt is a variance: exp(-(t - mu_t)^2 / (2 S_tt)), not / (2 sqrt(S_tt))",
                      variance=False),
        _variant_hint(slice_variant, "Cull: a Gaussian whose temporal marginal is at most 0.05 gets opacity 0",
                      cull=False),
    ],
    solution="slice_4d",
)
check_task1 = SLICE.checker()


# ------------------------------------------------------------------ task 2: triangle window

def _window_block(size) -> tuple:
    """Threads per block of tasks 2 and 3: (16, 4), or (8, 8) for the second size."""
    return (8, 8) if size[0] % 2 else (16, 4)


def _launch_window(kernel_, inputs, outputs, size):
    n, m = size
    bx, by = _window_block(size)
    kernel_[(math.ceil(m / bx), math.ceil(n / by)), (bx, by)](*inputs, *outputs)


def task2_inputs(size, gen: torch.Generator):
    """(verts [n, 3, 2], sigmas [n], pixels [m, 2]): both windings; pixels inside and out,
    the first on the first triangle's incentre."""
    n, m = size
    verts = torch.rand(n, 3, 2, generator=gen, dtype=torch.float64) * 30
    # a long thin triangle (edges 28, 27 and 4 long) with the second pixel inside it: there
    # edge functions that are not unit length change which edge is nearest and the ratio,
    # where near-equilateral random ones may agree with unit ones
    verts[1] = torch.tensor([[0.0, 0.0], [1.0, 4.0], [28.0, 0.0]], dtype=torch.float64)   # clockwise
    sigmas = 0.01 + torch.exp(0.6 * torch.randn(n, generator=gen, dtype=torch.float64))
    pixels = torch.rand(m, 2, generator=gen, dtype=torch.float64) * 34 - 2
    params, _, _ = PT.triangle_setup(verts, sigmas, torch.ones(n, dtype=torch.float64), 64, 64)
    a, b, c = verts[0]
    la, lb, lc = (b - c).norm(), (c - a).norm(), (a - b).norm()
    pixels[0] = (la * a + lb * b + lc * c) / (la + lb + lc)
    pixels[1] = torch.tensor([8.0, 1.0], dtype=torch.float64)
    return verts.float(), sigmas.float(), pixels.float()


def triangle_window_variant(verts, sigmas, pixels, *, inward=False, use_min=False, centroid=False,
                            assume_ccw=False, unit=True, clamp=True):
    """Task 2 in float64 with switchable mistakes: [n, m] windows (NaN for a negative base)."""
    v, s, p = verts.double().cpu(), sigmas.double().cpu(), pixels.double().cpu()
    a, b, c = v[:, 0], v[:, 1], v[:, 2]
    cross = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    ccw = (cross > 0)[:, None] | assume_ccw
    b, c = torch.where(ccw, b, c), torch.where(ccw, c, b)
    lines = []
    for start, end in ((a, b), (b, c), (c, a)):
        d = end - start
        length = d.norm(dim=-1) if unit else torch.ones_like(d[:, 0])
        normal = torch.stack([d[:, 1], -d[:, 0]], -1) / length[:, None] * (-1.0 if inward else 1.0)
        lines.append((normal, -(normal * start).sum(-1)))
    la, lb, lc = (b - c).norm(dim=-1), (c - a).norm(dim=-1), (a - b).norm(dim=-1)
    weighted = (la[:, None] * a + lb[:, None] * b + lc[:, None] * c) / (la + lb + lc)[:, None]
    s_pt = (a + b + c) / 3 if centroid else weighted

    def phi(x, y):
        ds = torch.stack([nrm[:, 0, None] * x + nrm[:, 1, None] * y + off[:, None] for nrm, off in lines])
        return ds.amin(0) if use_min else ds.amax(0)
    ratio = phi(p[None, :, 0], p[None, :, 1]) / phi(s_pt[:, 0, None], s_pt[:, 1, None])
    if clamp:
        return torch.where(ratio > 0, ratio.clamp_min(1e-300) ** s[:, None], torch.zeros_like(ratio)).float()
    return (ratio ** s[:, None]).float()


@reference
def reference_triangle_window(verts, sigmas, pixels):
    """[n, m] float32: the window of triangle i at pixel j (no opacity, no 0.99 cap)."""
    return triangle_window_variant(verts, sigmas, pixels).to(verts.device)


TRIANGLE_WINDOW = Task(
    chapter="07", number=2, title="Triangle window", kind=KERNEL,
    reference=reference_triangle_window, make_inputs=task2_inputs,
    sizes=Sizes(sim=[(3, 23), (2, 13)], hidden=[(5, 41)], gpu=[(1000, 4099)]),
    launch=_launch_window, rtol=1e-3, atol=1e-4, own_kernels=(prim_kernels,),
    candidate_name="triangle_window_kernel",
    hints=[
        Hint(lambda case: isinstance(case.error, (ValueError, TypeError)) or _nan_where_zero(case),
             "A negative base raised to sigma: outside the triangle phi(p) / phi(s) < 0; take max(0, ratio) and "
             "return 0 there before the power"),
        _variant_hint(triangle_window_variant, "The edge normals point inward: for a counter-clockwise triangle the "
                      "outward normal of edge a->b is (dy, -dx) / |d|", inward=True),
        _variant_hint(triangle_window_variant, "Some triangles are clockwise: fix the winding (swap b and c when the "
                      "cross product is negative) so every normal points outward", assume_ccw=True),
        _variant_hint(triangle_window_variant, "phi(p) is the max of the three signed distances, not the min (the min "
                      "of outward distances and the max of inward ones give the same wrong window)",
                      use_min=True),
        _variant_hint(triangle_window_variant, "s is the incentre (vertices weighted by the opposite edges' "
                      "lengths), not the centroid", centroid=True),
        _variant_hint(triangle_window_variant, "The normals must be unit vectors: divide by the edge's length",
                      unit=False),
    ],
    solution="triangle_window_kernel",
)
check_task2 = TRIANGLE_WINDOW.checker()


# ------------------------------------------------------------------ task 3: convex window

K_SLOTS = 6


def task3_inputs(size, gen: torch.Generator):
    """(normals [n, 6, 2], offsets [n, 6], n_edges [n] int32, depths, deltas, sigmas [n], pixels [m, 2]).

    Hulls of random points (3 to 6 edges; unused slots zero); the first convex is so sharp
    (delta' = 60 per pixel) and so soft (sigma' = 0.003) that exp(delta' L) overflows at pixels
    10 or more outside while the window there is still clearly non-zero.
    """
    n, m = size
    centre = 8 + 16 * torch.rand(n, 1, 2, generator=gen, dtype=torch.float64)
    pts = centre + 5 * torch.randn(n, K_SLOTS, 2, generator=gen, dtype=torch.float64)
    hull, count = PT.convex_hull(pts)
    normals = torch.zeros(n, K_SLOTS, 2, dtype=torch.float64)
    offsets = torch.zeros(n, K_SLOTS, dtype=torch.float64)
    for i in range(n):
        k = int(count[i])
        for e in range(k):
            d = hull[i, (e + 1) % k] - hull[i, e]
            nrm = torch.stack([d[1], -d[0]]) / d.norm()
            normals[i, e] = nrm
            offsets[i, e] = -(nrm * hull[i, e]).sum()
    depths = 0.5 + 2 * torch.rand(n, generator=gen, dtype=torch.float64)
    deltas = 0.3 + 2 * torch.rand(n, generator=gen, dtype=torch.float64)
    sigmas = 0.3 + 2 * torch.rand(n, generator=gen, dtype=torch.float64)
    depths[0], deltas[0], sigmas[0] = 1.0, 60.0, 0.003
    pixels = torch.rand(m, 2, generator=gen, dtype=torch.float64) * 40 - 4
    pixels[-1] = centre[0, 0] + torch.tensor([26.0, 1.0], dtype=torch.float64)   # delta' L ~ 1000 there
    if n > 1 and m > 1:
        # a soft second convex (delta' = 0.3) and a pixel at its points' centre, where the edge
        # distances are alike: log-sum-exp exceeds their max by about log(edges) / delta'
        # (several pixels of phi), so a max alone shows on every seed
        depths[1], deltas[1], sigmas[1] = 1.0, 0.3, 1.0
        pixels[0] = pts[1].mean(0)
    return (normals.float(), offsets.float(), count.to(torch.int32), depths.float(), deltas.float(), sigmas.float(),
            pixels.float())


def convex_window_variant(normals, offsets, n_edges, depths, deltas, sigmas, pixels, *, shift=True, inward=False,
                          sign=-1.0, hard=False, depth_scaled=True, all_slots=False):
    """Task 3 in float64 with switchable mistakes: [n, m] windows (inf/NaN where unshifted exps overflow
    in float32, as they would on a GPU)."""
    nrm, off, p = normals.double().cpu(), offsets.double().cpu(), pixels.double().cpu()
    k = nrm.shape[1]
    d = nrm[:, :, None, 0] * p[None, None, :, 0] + nrm[:, :, None, 1] * p[None, None, :, 1] + off[:, :, None]
    d = -d if inward else d
    used = torch.arange(k)[None, :] < n_edges.cpu().long()[:, None]
    if not all_slots:
        d = torch.where(used[:, :, None], d, torch.full_like(d, -math.inf))
    z = depths.double().cpu() if depth_scaled else torch.ones_like(depths.double().cpu())
    delta = (deltas.double().cpu() * z)[:, None]
    sigma = (sigmas.double().cpu() * z)[:, None]
    m_ = d.amax(1)
    if hard:
        phi = delta * m_
    elif shift:
        phi = delta * m_ + torch.log(torch.exp(delta[:, None] * (d - m_[:, None])).sum(1))
    else:
        phi = torch.log(torch.exp((delta[:, None] * d).float()).sum(1).double())   # float32 exp: overflows
    return torch.sigmoid(sign * sigma * phi).float()


@reference
def reference_convex_window(normals, offsets, n_edges, depths, deltas, sigmas, pixels):
    """[n, m] float32: the window of convex i at pixel j (no opacity, no 0.99 cap)."""
    return convex_window_variant(normals, offsets, n_edges, depths, deltas, sigmas, pixels).to(normals.device)


def _overflowed(case) -> bool:
    if isinstance(case.error, OverflowError):
        return True
    return case.error is None and _close(case.output, convex_window_variant(*case.inputs, shift=False))


CONVEX_WINDOW = Task(
    chapter="07", number=3, title="Smooth convex window", kind=KERNEL,
    reference=reference_convex_window, make_inputs=task3_inputs,
    sizes=Sizes(sim=[(3, 23), (2, 13)], hidden=[(5, 41)], gpu=[(1000, 4099)]),
    launch=_launch_window, rtol=1e-3, atol=1e-4, own_kernels=(prim_kernels,),
    candidate_name="convex_window_kernel",
    hints=[
        Hint(_overflowed, "exp(delta' L_k) overflowed: shift the max out of the log-sum-exp, "
             "phi = delta' m + log sum_k exp(delta' (L_k - m)) with m = max_k L_k"),
        _variant_hint(convex_window_variant, "The signed distances must be positive outside: L_k = n_k . p + c_k "
                      "with the outward normals as given (no minus sign)", inward=True),
        _variant_hint(convex_window_variant, "The window is sigmoid(-sigma' phi): 1 inside, 0 outside",
                      sign=1.0),
        _variant_hint(convex_window_variant, "phi is the log of the sum of exponentials (a smooth max), not the max "
                      "alone", hard=True),
        _variant_hint(convex_window_variant, "The sharpness is scaled by the view depth: delta' = depth * delta, "
                      "sigma' = depth * sigma", depth_scaled=False),
        _variant_hint(convex_window_variant, "Only the first n_edges[i] slots are edges; the rest are padding",
                      all_slots=True),
    ],
    solution="convex_window_kernel",
)
check_task3 = CONVEX_WINDOW.checker()


# ------------------------------------------------------------------ task 4: G-buffer shading

def _launch_shade(kernel_, inputs, outputs, size):
    h, w = size
    b = (8, 8) if w % 2 else (16, 16)
    kernel_[(math.ceil(w / b[0]), math.ceil(h / b[1])), b](*inputs, *outputs)


def task4_inputs(size, gen: torch.Generator):
    """(gbuffer [h, w, 9], alpha [h, w], light_dir [3], light_rgb [3], fx, fy, cx, cy): random
    unit normals facing the camera (a third of them away from the light), half the pixels
    metallic (m = 1) and half dielectric (m = 0), roughness in [0.2, 1], alpha in [0.2, 1]."""
    h, w = size
    gbuf = torch.rand(h, w, 9, generator=gen, dtype=torch.float64)
    n = torch.randn(h, w, 3, generator=gen, dtype=torch.float64)
    n[..., 2] = -n[..., 2].abs() - 0.2
    gbuf[..., 1:4] = n / n.norm(dim=-1, keepdim=True)
    gbuf[..., 7] = 0.2 + 0.8 * gbuf[..., 7]
    gbuf[..., 8] = (torch.rand(h, w, generator=gen) < 0.5).double()
    alpha = 0.2 + 0.8 * torch.rand(h, w, generator=gen, dtype=torch.float64)
    light = torch.tensor([0.6, -0.3, -1.0], dtype=torch.float64) + 0.2 * torch.randn(3, generator=gen,
                                                                                       dtype=torch.float64)
    rgb = 0.5 + torch.rand(3, generator=gen, dtype=torch.float64)
    fx = float(20 + 10 * torch.rand(1, generator=gen))
    return (gbuf.float(), alpha.float(), light.float(), rgb.float(), np.float32(fx), np.float32(fx * 1.1),
            np.float32(w / 2), np.float32(h / 2))


def shade_variant(gbuffer, alpha, light_dir, light_rgb, fx, fy, cx, cy, *, f0="lerp", rough_squared=True,
                  clamp_nl=True, diffuse_pi=True, coverage=True):
    """Task 4 in float64 with switchable mistakes; the defaults give :func:`reference_shade`."""
    g, a = gbuffer.double().cpu(), alpha.double().cpu()
    h, w = g.shape[:2]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    ray = torch.stack([(xs + 0.5 - float(cx)) / float(fx), (ys + 0.5 - float(cy)) / float(fy), torch.ones_like(xs)], -1)
    v = -ray / ray.norm(dim=-1, keepdim=True)
    n, albedo, rough, metal = g[..., 1:4], g[..., 4:7], g[..., 7:8], g[..., 8:9]
    l = light_dir.double().cpu()
    l = l / l.norm()
    hv = v + l
    hv = hv / hv.norm(dim=-1, keepdim=True)
    n_l = (n * l).sum(-1, keepdim=True)
    n_l_pos = n_l.clamp_min(0.0) if clamp_nl else n_l
    n_v = (n * v).sum(-1, keepdim=True).clamp_min(1e-4)
    n_h = (n * hv).sum(-1, keepdim=True).clamp_min(0.0)
    v_h = (v * hv).sum(-1, keepdim=True).clamp_min(0.0)
    base = {"lerp": 0.04 + (albedo - 0.04) * metal, "albedo": albedo, "dielectric": torch.full_like(albedo, 0.04)}[f0]
    fresnel = base + (1 - base) * (1 - v_h) ** 5
    a2 = rough ** 4 if rough_squared else rough ** 2
    denom = n_h * n_h * (a2 - 1) + 1
    ndf = a2 / (math.pi * denom * denom)
    k = (rough + 1) ** 2 / 8
    geometry = (n_l_pos / (n_l_pos * (1 - k) + k)) * (n_v / (n_v * (1 - k) + k))
    specular = ndf * fresnel * geometry / (4 * n_l_pos.clamp_min(1e-4) * n_v)
    diffuse = (1 - fresnel) * (1 - metal) * albedo / (math.pi if diffuse_pi else 1.0)
    out = (diffuse + specular) * light_rgb.double().cpu() * n_l_pos
    return (out * (a[..., None] if coverage else 1.0)).float()


@reference
def reference_shade(gbuffer, alpha, light_dir, light_rgb, fx, fy, cx, cy):
    """[h, w, 3] float32: direct GGX shading (the torch specification in float64)."""
    out = PT.shade_pbr(gbuffer.double(), alpha.double(), light_dir.double(), light_rgb.double(), float(fx), float(fy),
                       float(cx), float(cy))
    return out.float()


SHADE = Task(
    chapter="07", number=4, title="G-buffer shading pass (GGX)", kind=KERNEL,
    reference=reference_shade, make_inputs=task4_inputs,
    sizes=Sizes(sim=[(7, 9), (5, 18)], hidden=[(17, 33)], gpu=[(1080, 1920)]),
    launch=_launch_shade, rtol=1e-3, atol=1e-4, own_kernels=(prim_kernels,),
    candidate_name="shade_kernel",
    hints=[
        _variant_hint(shade_variant, "F0 = lerp(0.04, albedo, metallic): dielectrics reflect 4% at normal incidence "
                      "(F0 = albedo only for metals)", f0="albedo"),
        _variant_hint(shade_variant, "F0 depends on metallic: lerp(0.04, albedo, metallic), not 0.04 everywhere",
                      f0="dielectric"),
        _variant_hint(shade_variant, "GGX uses a = roughness^2 (so a^2 = roughness^4)", rough_squared=False),
        _variant_hint(shade_variant, "Clamp n.l at 0: a surface facing away from the light receives nothing",
                      clamp_nl=False),
        _variant_hint(shade_variant, "The Lambertian term is albedo / pi", diffuse_pi=False),
        _variant_hint(shade_variant, "Multiply by the pixel's coverage alpha (the G-buffer is resolved, the frame is "
                      "not)", coverage=False),
    ],
    solution="shade_kernel",
)
check_task4 = SHADE.checker()


# ------------------------------------------------------------------ planted wrong answers

def _make_slice(mistake=None):
    def slice_4d(means4, cov4, opacities, t):
        s_tt, s_xt = cov4[:, 3, 3], cov4[:, :3, 3]
        dt = (means4[:, 3] - t) if mistake == "sign" else (t - means4[:, 3])
        means3 = means4[:, :3] if mistake == "no_shift" else means4[:, :3] + s_xt * (dt / s_tt)[:, None]
        cov3 = cov4[:, :3, :3].clone()
        if mistake != "sxx":
            cov3 = cov3 - s_xt[:, :, None] * s_xt[:, None, :] / s_tt[:, None, None]
        spread = s_tt.sqrt() if mistake == "std" else s_tt
        marginal = torch.exp(-0.5 * dt * dt / spread)
        if mistake == "density":
            marginal = marginal / torch.sqrt(2 * math.pi * s_tt)
        o_t = opacities * marginal
        if mistake != "no_cull":
            o_t = torch.where(marginal > 0.05, o_t, torch.zeros_like(o_t))
        return means3, cov3, o_t
    return slice_4d


SLICE.planted = [
    Planted("S_xx for the conditional covariance", _make_slice("sxx"), "Schur complement"),
    Planted("no mean shift", _make_slice("no_shift"), "no mean shift"),
    Planted("mean shift with (mu_t - t)", _make_slice("sign"), "sign of (t - mu_t)"),
    Planted("a 1/sqrt(2 pi S_tt) weight", _make_slice("density"), "peaks at 1"),
    Planted("the standard deviation where the variance goes", _make_slice("std"), "is a variance"),
    Planted("no cull below 0.05", _make_slice("no_cull"), "0.05"),
    Planted("the reference itself", reference_slice, "called the reference"),
]


def _make_triangle(mistake=None):
    inward, use_min, centroid, assume_ccw, no_unit, negative_base = (
        mistake == m for m in ("inward", "min", "centroid", "ccw", "no_unit", "negative_base"))

    @kernel
    def triangle_window(verts, sigmas, pixels, out):
        j, i = cuda.grid(2)
        if i >= verts.shape[0] or j >= pixels.shape[0]:
            return
        ax, ay = verts[i, 0, 0], verts[i, 0, 1]
        bx, by = verts[i, 1, 0], verts[i, 1, 1]
        cx, cy = verts[i, 2, 0], verts[i, 2, 1]
        if not assume_ccw and (bx - ax) * (cy - ay) - (by - ay) * (cx - ax) < 0:
            bx, by, cx, cy = cx, cy, bx, by
        la = math.sqrt((bx - cx) ** 2 + (by - cy) ** 2)
        lb = math.sqrt((cx - ax) ** 2 + (cy - ay) ** 2)
        lc = math.sqrt((ax - bx) ** 2 + (ay - by) ** 2)
        if centroid:
            sx, sy = (ax + bx + cx) / 3, (ay + by + cy) / 3
        else:
            sx, sy = (la * ax + lb * bx + lc * cx) / (la + lb + lc), (la * ay + lb * by + lc * cy) / (la + lb + lc)
        px, py = pixels[j, 0], pixels[j, 1]
        phi_p = -1e30 if not use_min else 1e30
        phi_s = -1e30 if not use_min else 1e30
        for e in range(3):
            if e == 0:
                x0, y0, x1, y1, length = ax, ay, bx, by, lc
            elif e == 1:
                x0, y0, x1, y1, length = bx, by, cx, cy, la
            else:
                x0, y0, x1, y1, length = cx, cy, ax, ay, lb
            scale = 1.0 if no_unit else length
            nx, ny = (y1 - y0) / scale, -(x1 - x0) / scale
            if inward:
                nx, ny = -nx, -ny
            off = -(nx * x0 + ny * y0)
            dp, ds = nx * px + ny * py + off, nx * sx + ny * sy + off
            phi_p = min(phi_p, dp) if use_min else max(phi_p, dp)
            phi_s = min(phi_s, ds) if use_min else max(phi_s, ds)
        ratio = phi_p / phi_s
        if negative_base:
            out[i, j] = math.pow(ratio, sigmas[i])
        elif ratio <= 0:
            out[i, j] = 0.0
        else:
            out[i, j] = math.pow(ratio, sigmas[i])
    return triangle_window


TRIANGLE_WINDOW.planted = [
    Planted("inward normals", _make_triangle("inward"), "point inward"),
    Planted("min for max in phi", _make_triangle("min"), "not the min"),
    Planted("a negative base raised to sigma", _make_triangle("negative_base"), "negative base"),
    Planted("the centroid for the incentre", _make_triangle("centroid"), "incentre"),
    Planted("every triangle taken as counter-clockwise", _make_triangle("ccw"), "winding"),
    Planted("normals not normalised", _make_triangle("no_unit"), "unit vectors"),
    Planted("the package's own kernel", prim_kernels.triangle_setup_kernel, "package's own"),
    Planted("the reference itself", reference_triangle_window, "@gpulab.kernel"),
]


def _make_convex(mistake=None):
    no_shift, inward, plus_sign, hard, no_depth, all_slots = (
        mistake == m for m in ("no_shift", "inward", "plus", "hard", "no_depth", "all_slots"))

    @kernel
    def convex_window(normals, offsets, n_edges, depths, deltas, sigmas, pixels, out):
        j, i = cuda.grid(2)
        if i >= normals.shape[0] or j >= pixels.shape[0]:
            return
        k = normals.shape[1] if all_slots else n_edges[i]
        z = 1.0 if no_depth else depths[i]
        delta, sigma = deltas[i] * z, sigmas[i] * z
        px, py = pixels[j, 0], pixels[j, 1]
        m = -1e30
        for e in range(k):
            d = normals[i, e, 0] * px + normals[i, e, 1] * py + offsets[i, e]
            m = max(m, -d if inward else d)
        total = 0.0
        for e in range(k):
            d = normals[i, e, 0] * px + normals[i, e, 1] * py + offsets[i, e]
            d = -d if inward else d
            total += math.exp(delta * d) if no_shift else math.exp(delta * (d - m))
        if hard:
            phi = delta * m
        elif no_shift:
            phi = math.log(total)
        else:
            phi = delta * m + math.log(total)
        x = sigma * phi if not plus_sign else -sigma * phi
        out[i, j] = 0.0 if x > 80.0 else 1.0 / (1.0 + math.exp(x))
    return convex_window


CONVEX_WINDOW.planted = [
    Planted("log-sum-exp without the max shift", _make_convex("no_shift"), "shift the max out"),
    Planted("inward signed distances", _make_convex("inward"), "positive outside"),
    Planted("sigmoid(+sigma phi)", _make_convex("plus"), "sigmoid(-sigma' phi)"),
    Planted("the max alone (no log-sum-exp)", _make_convex("hard"), "smooth max"),
    Planted("sharpness not scaled by depth", _make_convex("no_depth"), "view depth"),
    Planted("padding slots used as edges", _make_convex("all_slots"), "n_edges"),
    Planted("the reference itself", reference_convex_window, "@gpulab.kernel"),
]


def _make_shade(mistake=None):
    f0_albedo, f0_dielectric, rough_linear, no_clamp, no_pi, no_alpha = (
        mistake == m for m in ("f0_albedo", "f0_dielectric", "rough_linear", "no_clamp", "no_pi", "no_alpha"))

    @kernel
    def shade(gbuffer, alpha, light_dir, light_rgb, fx, fy, cx, cy, out):
        x, y = cuda.grid(2)
        if x >= out.shape[1] or y >= out.shape[0]:
            return
        rx, ry = (x + 0.5 - cx) / fx, (y + 0.5 - cy) / fy
        inv = 1.0 / math.sqrt(rx * rx + ry * ry + 1.0)
        vx, vy, vz = -rx * inv, -ry * inv, -inv
        inv = 1.0 / math.sqrt(light_dir[0] ** 2 + light_dir[1] ** 2 + light_dir[2] ** 2)
        lx, ly, lz = light_dir[0] * inv, light_dir[1] * inv, light_dir[2] * inv
        hx, hy, hz = vx + lx, vy + ly, vz + lz
        inv = 1.0 / math.sqrt(hx * hx + hy * hy + hz * hz)
        hx, hy, hz = hx * inv, hy * inv, hz * inv
        nx, ny, nz = gbuffer[y, x, 1], gbuffer[y, x, 2], gbuffer[y, x, 3]
        n_l = nx * lx + ny * ly + nz * lz
        if not no_clamp:
            n_l = max(n_l, 0.0)
        n_v = max(nx * vx + ny * vy + nz * vz, 1e-4)
        n_h = max(nx * hx + ny * hy + nz * hz, 0.0)
        v_h = max(vx * hx + vy * hy + vz * hz, 0.0)
        r, metal = gbuffer[y, x, 7], gbuffer[y, x, 8]
        a2 = r * r if rough_linear else r * r * r * r
        denom = n_h * n_h * (a2 - 1.0) + 1.0
        ndf = a2 / (math.pi * denom * denom)
        k = (r + 1.0) * (r + 1.0) / 8.0
        geo = (n_l / (n_l * (1.0 - k) + k)) * (n_v / (n_v * (1.0 - k) + k))
        cover = 1.0 if no_alpha else alpha[y, x]
        for ch in range(3):
            albedo = gbuffer[y, x, 4 + ch]
            if f0_albedo:
                f0 = albedo
            elif f0_dielectric:
                f0 = 0.04
            else:
                f0 = 0.04 + (albedo - 0.04) * metal
            fresnel = f0 + (1.0 - f0) * (1.0 - v_h) ** 5
            spec = ndf * fresnel * geo / (4.0 * max(n_l, 1e-4) * n_v)
            diff = (1.0 - fresnel) * (1.0 - metal) * albedo / (1.0 if no_pi else math.pi)
            out[y, x, ch] = (diff + spec) * light_rgb[ch] * n_l * cover
    return shade


SHADE.planted = [
    Planted("F0 = albedo for dielectrics", _make_shade("f0_albedo"), "dielectrics reflect 4%"),
    Planted("F0 = 0.04 for metals too", _make_shade("f0_dielectric"), "depends on metallic"),
    Planted("GGX with a = roughness", _make_shade("rough_linear"), "roughness^2"),
    Planted("n.l not clamped", _make_shade("no_clamp"), "clamp n.l at 0"),
    Planted("diffuse without 1/pi", _make_shade("no_pi"), "albedo / pi"),
    Planted("coverage ignored", _make_shade("no_alpha"), "coverage alpha"),
    Planted("the package's own kernel", prim_kernels.shade_kernel, "package's own"),
    Planted("the reference itself", reference_shade, "@gpulab.kernel"),
]
