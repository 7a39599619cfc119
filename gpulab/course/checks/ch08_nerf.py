"""Graded checks of assignment 08 (solutions/08_nerf.ipynb), on the checks engine.

Task 1: ``weights_kernel(t_starts, t_ends, sigmas, dir_norms, packed_info, weights)``: one
        thread per packed ray; ``delta = (t_end - t_start) * |d|``, ``alpha = 1 - exp(-sigma
        delta)``, exclusive ``T``, ``w = T alpha``; the ray stops (weight 0 from there on) at
        the first sample whose T is below 1e-4.
Task 2: ``sample_pdf(bins, weights, u)``: NeRF's inverse-CDF sampling (weights + 1e-5, CDF
        with a leading 0, ``searchsorted(right=True)``, denominators under 1e-5 set to 1).
Task 3: ``ema_update(occs, indices, new_occ)``: the occupancy grid's update (max(0.95 occ,
        new) on the evaluated cells; occupied where occ > min(mean of visible cells, 0.01)).
        Returns ``(occs, binary)``.
Task 4: ``neus_alpha(sdf_prev, sdf_next, inv_s)``: NeuS's opacity of a section,
        ``clip((Phi_s(f-) - Phi_s(f+) + 1e-5) / (Phi_s(f-) + 1e-5), 0, 1)``, Phi_s = sigmoid(s x).

Each task's inputs probe its constants (see the input makers); the wrong answers a
learner writes are named by matching the output against variants of the reference.
"""
from __future__ import annotations

import math

import torch
from numba import cuda

from ...harness import compare, mark_answers, reference
from ...launch import kernel
from ...nerf import kernels as nerf_kernels
from ...nerf import neus as nerf_neus
from ...nerf import occgrid as nerf_occgrid
from ...nerf import torch_impl as nerf_torch
from ...nerf.packing import pack_info
from .engine import FUNCTION, KERNEL, Planted, Sizes, Task

__all__ = ["check_task1", "check_task2", "check_task3", "check_task4", "WEIGHTS", "SAMPLE_PDF", "EMA",
           "NEUS_ALPHA", "EARLY_STOP_EPS", "task1_inputs", "task2_inputs", "task3_inputs", "task4_inputs",
           "weights_variant", "sample_pdf_variant", "ema_variant", "neus_alpha_variant"]

mark_answers(nerf_torch.render_weight_from_density, nerf_torch.sample_pdf, nerf_kernels.render_weight_from_density,
             nerf_kernels.sample_pdf, nerf_occgrid.ema_update, nerf_neus.neus_alpha)

EARLY_STOP_EPS = 1e-4


def _diagnose(case, variants: dict, says: dict, rtol: float, atol: float) -> str | None:
    """None when every output is right; else the mismatch, and the mistake whose variant
    of the reference gives exactly this output (when one does)."""
    outputs = case.outputs if isinstance(case.outputs, tuple) else (case.outputs,)
    problems = [compare(o, e, rtol, atol)[0] for o, e in zip(outputs, case.expected)]
    if len(outputs) != len(case.expected):
        return f"expected {len(case.expected)} outputs, got {len(outputs)}"
    if all(p is None for p in problems):
        return None
    first = next(p for p in problems if p is not None)
    for name, variant in variants.items():
        wrong = variant(*case.inputs)
        wrong = wrong if isinstance(wrong, tuple) else (wrong,)
        if all(compare(o, w.to(o.dtype), rtol, atol)[0] is None for o, w in zip(outputs, wrong)):
            return f"{first}. {says[name]}"
    return first


# ------------------------------------------------------------------ task 1: weights on packed rays

def _dense(values: torch.Tensor, packed_info: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed values as [n_rays, longest] float64 rows (0 past each ray's end) and the mask of real entries."""
    counts = packed_info[:, 1].cpu()
    width = int(counts.max()) if len(counts) else 0
    cols = torch.arange(width)
    mask = cols[None, :] < counts[:, None]
    index = (packed_info[:, :1].cpu() + cols[None, :]).clamp(max=max(values.shape[0] - 1, 0))
    dense = values.detach().cpu().double()[index] if values.numel() else torch.zeros(mask.shape, dtype=torch.float64)
    return torch.where(mask, dense, torch.zeros_like(dense)), mask


def weights_variant(mistake: str | None = None):
    """The reference (``mistake=None``) or one mistake of it, in float64 on packed rays."""
    def weights(t_starts, t_ends, sigmas, dir_norms, packed_info):
        delta, mask = _dense(t_ends.double() - t_starts.double(), packed_info)
        sigma, _ = _dense(sigmas, packed_info)
        norm = torch.ones_like(delta[:, :1]) if mistake == "no_norm" else dir_norms.detach().cpu().double()[:, None]
        tau = sigma * (1.0 if mistake == "no_delta" else delta * norm)
        inclusive = torch.cumsum(tau, 1)
        trans = torch.exp(-(inclusive if mistake == "inclusive" else inclusive - tau))
        w = trans * (1.0 - torch.exp(-tau))
        if mistake != "no_stop":
            below = trans < EARLY_STOP_EPS
            if mistake == "late_stop":               # tests T after the sample: stops one late
                below = torch.cat([torch.zeros_like(below[:, :1]), (torch.exp(-inclusive) < EARLY_STOP_EPS)[:, :-1]], 1)
            w = torch.where(torch.cumsum(below.long(), 1) > 0, torch.zeros_like(w), w)
        out = torch.zeros(t_starts.shape[0], dtype=torch.float64)
        positions = (packed_info[:, :1].cpu() + torch.arange(mask.shape[1])[None, :])[mask]
        out[positions] = w[mask]
        return out.float().to(t_starts.device)
    return weights


@reference
def reference_weights(t_starts, t_ends, sigmas, dir_norms, packed_info):
    return weights_variant(None)(t_starts, t_ends, sigmas, dir_norms, packed_info)


def _optical_depths(counts: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per-sample optical depths such that no transmittance lands within a factor 3 of 1e-4
    (rays that do are drawn again), ray 0 being the hand-made one."""
    info = pack_info(counts)
    n = int(counts.sum())
    tau = -torch.log(torch.rand(n, generator=gen).clamp_min(1e-7)) * 1.3
    tau[:3] = torch.tensor([-math.log(2e-5), -math.log(0.1), 0.5])
    for _ in range(100):
        dense, mask = _dense(tau, info)
        trans = torch.exp(-torch.cumsum(dense, 1))
        bad_rays = (((trans > EARLY_STOP_EPS / 3) & (trans < EARLY_STOP_EPS * 3)) & mask).any(1)
        if not bool(bad_rays.any()):
            return tau
        ray = torch.repeat_interleave(torch.arange(len(counts)), counts)
        redo = bad_rays[ray]
        tau[redo] = -torch.log(torch.rand(int(redo.sum()), generator=gen).clamp_min(1e-7)) * 1.3
    raise RuntimeError("could not draw optical depths away from the early-stop threshold")


def task1_inputs(n_rays: int, gen: torch.Generator):
    """Packed rays of 0..11 samples, |d| in [1, 2]; ray 0 crosses T = 1e-4 in its first
    sample (T = 2e-5 after it, then alpha 0.9: a weight of 1.8e-5 that must be 0). No T
    lands within a factor 3 of 1e-4, so float32 cannot flip where a ray stops."""
    counts = torch.randint(0, 12, (n_rays,), generator=gen)
    counts[0] = 3
    info = pack_info(counts)
    norms = 1.0 + torch.rand(n_rays, generator=gen)
    tau = _optical_depths(counts, gen)
    n = int(counts.sum())
    t_starts = torch.rand(n, generator=gen) * 3
    deltas = 0.02 + 0.2 * torch.rand(n, generator=gen)
    ray = torch.repeat_interleave(torch.arange(n_rays), counts)
    sigmas = (tau / (deltas * norms[ray])).float()
    return t_starts, t_starts + deltas, sigmas, norms, info


def _launch_weights(kernel_, inputs, outputs, size):
    block = 64 if size >= 40 else 32
    kernel_[math.ceil(size / block), block](*inputs, *outputs)


_WEIGHT_SAYS = {
    "inclusive": "The transmittance is inclusive: T_i must be the product over the samples BEFORE i "
                 "(exclusive), so the first sample of a ray sees T = 1",
    "no_norm": "delta is not scaled by |d|: t is measured in units of the ray's direction, so the "
               "distance is (t_end - t_start) * dir_norms[ray]",
    "no_delta": "alpha = 1 - exp(-sigma) ignores the interval: alpha = 1 - exp(-sigma * delta)",
    "no_stop": "the rays were marched past T < 1e-4: once a sample's transmittance is below 1e-4 "
               "the ray stops and the rest of its weights are 0",
    "late_stop": "the ray stops one sample late: test the transmittance BEFORE the sample (T_i < 1e-4), "
                 "not after it",
}

WEIGHTS = Task(
    chapter="08", number=1, title="weights on packed rays, with early termination", kind=KERNEL,
    reference=reference_weights, make_inputs=task1_inputs,
    sizes=Sizes(sim=[1, 9, 45], hidden=[70], gpu=[100_003, 1 << 18]),
    launch=_launch_weights, rtol=1e-4, atol=1e-6, own_kernels=(nerf_kernels,), candidate_name="weights_kernel",
    verify=lambda case: _diagnose(case, {m: weights_variant(m) for m in _WEIGHT_SAYS}, _WEIGHT_SAYS, 1e-4, 1e-6),
    solution="weights_kernel",
)
check_task1 = WEIGHTS.checker()


# ------------------------------------------------------------------ task 2: inverse-CDF sampling

def sample_pdf_variant(mistake: str | None = None):
    def sample(bins, weights, u):
        padded = weights if mistake == "no_padding" else weights + 1e-5
        pdf = padded / padded.sum(-1, keepdim=True)
        cdf = torch.cumsum(pdf, -1)
        if mistake != "no_zero":
            cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf], -1)
        k = torch.searchsorted(cdf.contiguous(), u.contiguous(), right=(mistake != "right_false"))
        below = (k - 1).clamp(min=0)
        above = k.clamp(max=cdf.shape[1] - (2 if mistake == "above_short" else 1))
        c0, c1 = cdf.gather(1, below), cdf.gather(1, above)
        b0, b1 = bins.gather(1, below), bins.gather(1, above)
        denom = c1 - c0
        if mistake != "no_guard":
            denom = torch.where(denom < 1e-5, torch.ones_like(denom), denom)
        return b0 + (u - c0) / denom * (b1 - b0)
    return sample


@reference
def reference_sample_pdf(bins, weights, u):
    return sample_pdf_variant(None)(bins, weights, u)


def task2_inputs(n_rays: int, gen: torch.Generator):
    """Rays of 8 bins, about a third of them empty; ray 0 has no weight at all (the padding
    makes it uniform, without it 0/0). u mixes random values, values inside empty bins (the
    1e-5 guard decides) and values EQUAL to the CDF at the end of an empty bin, computed the
    way the spec does (there right=True and right=False part)."""
    b = 8
    bins = torch.sort(torch.rand(n_rays, b + 1, generator=gen) * 4, dim=1).values
    weights = torch.rand(n_rays, b, generator=gen) * (torch.rand(n_rays, b, generator=gen) < 0.65)
    weights[:, 1] = 0.0                                      # at least one empty bin in every ray
    weights[:, 4] = weights[:, 4] + 0.5                      # and one that surely is not
    weights[0] = 0.0
    padded = weights + 1e-5
    cdf = torch.cat([torch.zeros(n_rays, 1), torch.cumsum(padded / padded.sum(-1, keepdim=True), -1)], -1)
    u = torch.rand(n_rays, 12, generator=gen) * 0.999
    empty = (weights == 0)
    for r in range(n_rays):
        bins_empty = torch.nonzero(empty[r])[:, 0]
        for j, e in enumerate(bins_empty[:3].tolist()):
            u[r, j] = cdf[r, e + 1]                               # exactly where an empty bin ends
            u[r, 3 + j] = 0.5 * (cdf[r, e] + cdf[r, e + 1])       # inside an empty bin
    return bins, weights, u


_PDF_SAYS = {
    "right_false": "searchsorted must use right=True: a u equal to a CDF value falls in the bin that "
                   "starts there, not the (empty) bin that ends there",
    "no_padding": "NaN for a ray without weight: add 1e-5 to the weights before normalising "
                  "(an empty ray then gets a uniform pdf, not 0 / 0)",
    "no_zero": "the CDF needs a leading 0 (B + 1 entries, one per bin edge): without it every sample "
               "lands one bin off",
    "no_guard": "a denominator under 1e-5 must be replaced by 1 (NeRF's guard: a near-empty bin puts "
                "its samples at its start)",
    "above_short": "above is clamped one short: above = min(k, B), the last edge's index",
}

SAMPLE_PDF = Task(
    chapter="08", number=2, title="hierarchical sampling by inverse CDF", kind=FUNCTION,
    reference=reference_sample_pdf, make_inputs=task2_inputs,
    sizes=Sizes(sim=[1, 5, 33], hidden=[64], gpu=[4096]), rtol=1e-4, atol=1e-4, candidate_name="sample_pdf",
    verify=lambda case: _diagnose(case, {m: sample_pdf_variant(m) for m in _PDF_SAYS}, _PDF_SAYS, 1e-4, 1e-4),
    solution="sample_pdf", no_races=False,
)
check_task2 = SAMPLE_PDF.checker()


# ------------------------------------------------------------------ task 3: the EMA update

def ema_variant(mistake: str | None = None):
    def update(occs, indices, new_occ):
        occs = occs.clone()
        old = occs[indices]
        if mistake == "mean":
            occs[indices] = 0.95 * old + 0.05 * new_occ
        elif mistake == "no_decay":
            occs[indices] = torch.maximum(old, new_occ)
        else:
            occs[indices] = torch.maximum(old * 0.95, new_occ)
        if mistake == "decay_all":
            others = torch.ones_like(occs, dtype=torch.bool)
            others[indices] = False
            occs = torch.where(others & (occs >= 0), occs * 0.95, occs)
        visible = occs if mistake == "mean_with_invisible" else occs[occs >= 0]
        mean = float(visible.mean())
        threshold = {"fixed": 0.01, "max_thre": max(mean, 0.01)}.get(mistake, min(mean, 0.01))
        binary = occs >= threshold if mistake == "geq" else occs > threshold
        return occs, binary.float()
    return update


@reference
def reference_ema(occs, indices, new_occ):
    return ema_variant(None)(occs, indices, new_occ)


def task3_inputs(size, gen: torch.Generator):
    """``size = (cells, regime)``: "low" (mean occupancy under 0.01: the mean is the
    threshold) or "high" (above it: 0.01 is). A tenth of the cells are invisible (-1); half
    are evaluated (unique indices); some cells sit exactly on the threshold."""
    cells, regime = size
    scale = 0.004 if regime == "low" else 0.06
    occs = torch.rand(cells, generator=gen) * scale * 2 * (torch.rand(cells, generator=gen) < 0.7)
    occs[torch.randperm(cells, generator=gen)[: cells // 10]] = -1.0
    indices = torch.randperm(cells, generator=gen)[: cells // 2]
    new = torch.rand(len(indices), generator=gen) * scale * 2 * (torch.rand(len(indices), generator=gen) < 0.6)
    if regime == "high":                          # cells that end exactly at 0.01: > and >= differ
        untouched = torch.ones(cells, dtype=torch.bool)
        untouched[indices] = False
        untouched &= occs >= 0
        spare = torch.nonzero(untouched)[:, 0]
        occs[spare[:3]] = 0.01
        occs[spare[3:5]] = 0.0                    # empty cells that stay empty: a negative threshold shows
        occs[spare[5:7]] = 0.0099                 # just under: any threshold below 0.01 shows (not only >=)
        for extra in spare[7:12]:                 # a mean counting the -1 cells must not land near 0.01
            if abs(float(ema_variant(None)(occs, indices, new)[0].mean()) - 0.01) > 2e-3:
                break
            occs[extra] = -1.0
    return occs, indices, new


def _ema_caller(candidate):
    def call(occs, indices, new_occ):
        result = candidate(occs, indices, new_occ)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise TypeError("ema_update must return a tuple (occs, binary)")
        occs_out, binary = result
        if not isinstance(binary, torch.Tensor) or binary.dtype != torch.bool:
            raise TypeError("binary must be a bool tensor (occs > threshold)")
        return occs_out, binary.float()
    return call


_EMA_SAYS = {
    "mean": "the update is a mean (0.95 occ + 0.05 new): it must be a max, occ = max(0.95 occ, new), so "
            "one dense sample keeps a cell alive",
    "no_decay": "no decay: occ = max(0.95 * occ, new); without the 0.95 an emptied cell never fades",
    "decay_all": "cells that were not evaluated must keep their occupancy: only the evaluated ones decay",
    "fixed": "a fixed 0.01 threshold: it is min(mean occupancy, 0.01), so a faint scene keeps its cells",
    "max_thre": "the threshold is min(mean, 0.01), not max",
    "mean_with_invisible": "the mean must leave out invisible cells (occ < 0, marked -1)",
    "geq": "occupied means occ > threshold (strictly), not >=",
}

EMA = Task(
    chapter="08", number=3, title="the occupancy grid's EMA update and threshold", kind=FUNCTION,
    reference=reference_ema, make_inputs=task3_inputs,
    sizes=Sizes(sim=[(64, "high"), (64, "low"), (257, "low"), (333, "high")], hidden=[(1000, "low"), (999, "high")],
                gpu=[(128 ** 3, "low"), (128 ** 3, "high")]),
    rtol=1e-5, atol=1e-7, adapt=_ema_caller, candidate_name="ema_update",
    verify=lambda case: _diagnose(case, {m: ema_variant(m) for m in _EMA_SAYS}, _EMA_SAYS, 1e-5, 1e-7),
    solution="ema_update", no_races=False,
)
check_task3 = EMA.checker()


# ------------------------------------------------------------------ task 4: NeuS alpha

def neus_alpha_variant(mistake: str | None = None):
    def alpha(sdf_prev, sdf_next, inv_s):
        s = 1.0 if mistake == "no_s" else inv_s
        if mistake == "density":                   # the logistic density phi_s instead of its CDF
            phi = lambda x: s * torch.sigmoid(s * x) * (1 - torch.sigmoid(s * x))
            prev, nxt = phi(sdf_prev), phi(sdf_next)
        else:
            prev, nxt = torch.sigmoid(sdf_prev * s), torch.sigmoid(sdf_next * s)
        if mistake == "swapped":
            prev, nxt = nxt, prev
        eps = 0.0 if mistake == "no_eps" else 1e-5
        denom = (nxt if mistake == "by_next" else prev) + eps
        a = (prev - nxt + eps) / denom
        return a.clip(max=1.0) if mistake == "no_clamp" else a.clip(0.0, 1.0)
    return alpha


@reference
def reference_neus_alpha(sdf_prev, sdf_next, inv_s):
    return neus_alpha_variant(None)(sdf_prev, sdf_next, inv_s)


def task4_inputs(n: int, gen: torch.Generator, inv_s: float = 64.0):
    """Sections of every kind: crossing the surface inward, leaving it (alpha clamps to 0),
    far outside, and deep inside (sigmoid(s f-) underflows to 0: 0/0 without the 1e-5)."""
    mid = (torch.rand(n, generator=gen) - 0.5) * 0.2
    half = (torch.rand(n, generator=gen) - 0.6) * 0.05            # mostly entering, some leaving
    prev, nxt = mid - half, mid + half
    prev[0], nxt[0] = -20.0, -20.1                                 # deep inside
    if n > 1:
        prev[1], nxt[1] = -0.01, 0.012                             # leaving: negative before the clamp
    if n > 2:
        prev[2], nxt[2] = 1.5, 1.45                                # outside
    return prev, nxt, float(inv_s * (1 + (n % 3)))


_NEUS_SAYS = {
    "no_clamp": "alpha is negative where the ray leaves the surface: clip it at 0",
    "no_eps": "NaN deep inside the surface: sigmoid(s f-) underflows to 0, so add 1e-5 to the numerator "
              "and the denominator",
    "swapped": "the section's ends are swapped: alpha = (Phi(f-) - Phi(f+)) / Phi(f-) with f- the START",
    "density": "Phi_s is the logistic CDF sigmoid(s x), not its density",
    "by_next": "divide by Phi_s(f-) (the start of the section) + 1e-5, not Phi_s(f+)",
    "no_s": "s is ignored: Phi_s(x) = sigmoid(inv_s * x)",
}

NEUS_ALPHA = Task(
    chapter="08", number=4, title="NeuS: SDF to opacity", kind=FUNCTION,
    reference=reference_neus_alpha, make_inputs=task4_inputs,
    sizes=Sizes(sim=[3, 1, 50], hidden=[200], gpu=[1 << 20]), rtol=1e-4, atol=1e-5, candidate_name="neus_alpha",
    verify=lambda case: _diagnose(case, {m: neus_alpha_variant(m) for m in _NEUS_SAYS}, _NEUS_SAYS, 1e-4, 1e-5),
    solution="neus_alpha", no_races=False,
)
check_task4 = NEUS_ALPHA.checker()


# ------------------------------------------------------------------ planted wrong answers

def _make_weights_kernel(mistake=None):
    inclusive, no_norm, no_stop, dense_start, no_delta = (
        mistake == m for m in ("inclusive", "no_norm", "no_stop", "dense_start", "no_delta"))

    @kernel
    def weights_kernel(t_starts, t_ends, sigmas, dir_norms, packed_info, weights):
        r = cuda.grid(1)
        if r >= packed_info.shape[0]:
            return
        count = packed_info[r, 1]
        start = r * count if dense_start else packed_info[r, 0]     # assumes equal-length rays
        norm = 1.0 if no_norm else dir_norms[r]
        depth = 0.0
        stopped = False
        for i in range(start, start + count):
            tau = sigmas[i] * (1.0 if no_delta else (t_ends[i] - t_starts[i]) * norm)
            if inclusive:
                depth += tau
            trans = math.exp(-depth)
            if trans < EARLY_STOP_EPS and not no_stop:
                stopped = True
            weights[i] = 0.0 if stopped else trans * (1.0 - math.exp(-tau))
            if not inclusive:
                depth += tau

    return weights_kernel


def _sample_pdf_by_package(bins, weights, u):
    return nerf_torch.sample_pdf(bins, weights, u)


def _ema_by_reference(occs, indices, new_occ):
    return reference_ema(occs, indices, new_occ)


def _ema_bool(mistake):
    fn = ema_variant(mistake)
    return lambda *a: (lambda o, b: (o, b.bool()))(*fn(*a))


WEIGHTS.planted = [
    Planted("inclusive cumprod", _make_weights_kernel("inclusive"), "exclusive"),
    Planted("delta not scaled by |d|", _make_weights_kernel("no_norm"), "|d|"),
    Planted("rays marched past T < 1e-4", _make_weights_kernel("no_stop"), "marched past"),
    Planted("alpha without the interval", _make_weights_kernel("no_delta"), "sigma * delta"),
    Planted("start from r * count (equal-length rays assumed)", _make_weights_kernel("dense_start"),
            "thread", simulator_only=True),   # reads past the samples or races: the tracer names the threads
    Planted("the package's own kernel", nerf_kernels.weight_from_density_kernel, "package's own"),
]
SAMPLE_PDF.planted = [
    Planted("searchsorted right=False", sample_pdf_variant("right_false"), "right=True"),
    Planted("no 1e-5 padding", sample_pdf_variant("no_padding"), "1e-5"),
    Planted("CDF without its leading 0", sample_pdf_variant("no_zero"), "leading 0"),
    Planted("no denominator guard", sample_pdf_variant("no_guard"), "guard"),
    Planted("above clamped one short", sample_pdf_variant("above_short"), "min(k, B)"),
    Planted("calls the package's sample_pdf", _sample_pdf_by_package, "reference"),
]
EMA.planted = [
    Planted("mean instead of max", _ema_bool("mean"), "must be a max"),
    Planted("fixed 0.01 threshold", _ema_bool("fixed"), "min(mean occupancy, 0.01)"),
    Planted("no decay", _ema_bool("no_decay"), "never fades"),
    Planted("every cell decays", _ema_bool("decay_all"), "keep their occupancy"),
    Planted("max instead of min", _ema_bool("max_thre"), "not max"),
    Planted("invisible cells in the mean", _ema_bool("mean_with_invisible"), "invisible"),
    Planted(">= instead of >", _ema_bool("geq"), "strictly"),
    Planted("calls the reference", _ema_by_reference, "reference"),
]
NEUS_ALPHA.planted = [
    Planted("alpha not clamped at 0", neus_alpha_variant("no_clamp"), "clip it at 0"),
    Planted("no 1e-5", neus_alpha_variant("no_eps"), "NaN"),
    Planted("ends swapped", neus_alpha_variant("swapped"), "swapped"),
    Planted("density instead of CDF", neus_alpha_variant("density"), "logistic CDF"),
    Planted("divided by Phi(f+)", neus_alpha_variant("by_next"), "not Phi_s(f+)"),
    Planted("s ignored", neus_alpha_variant("no_s"), "s is ignored"),
]
