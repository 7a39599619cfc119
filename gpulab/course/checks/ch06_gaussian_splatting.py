"""Graded checks of chapter 06's assignment (solutions/06_gaussian_splatting.ipynb), on the
checks engine (:mod:`.engine`).

Task 1  ``conic_kernel(means_cam, cov3d, view_rot, fx, fy, lim_x, lim_y, conics, radii)``:
        the 2D conic and radius of a 3D covariance (EWA), one thread per Gaussian.
Task 2  ``ranges_kernel(sorted_keys, ranges)``: each tile's [start, end) in the sorted keys,
        one thread per key, ``ranges`` zeroed.
Task 3  ``composite_kernel(ranges, gaussian_ids, means2d, conics, opacities, colors,
        background, image, transmittance)``: one thread per pixel, one 16x16 block per
        tile, front-to-back compositing with early stop.

The inputs probe every constant of the specification: flat Gaussians (the 0.3 low-pass
and the 0.1 eigenvalue floor matter), means outside the field of view (the clamp), an
opaque Gaussian centred on a pixel (the 0.99 alpha cap), a stack that saturates a pixel
(the early stop). Tasks 1 and 2 launch some sizes with a different block size, so a
kernel that assumes one is caught. When a check fails, the feedback compares the answer
with the classic mistakes and names the one it matches; each task's planted wrong answers
are declared at the end of this module (tests/ch06_gaussian_splatting/test_ch06_planted.py runs them all).

Task 4  ``tile_ids_kernel(order, means2d, radii, offsets, tiles_x, tiles_y, tiles, ids)``:
        binning, the keys of the tile-major sort: the r-th nearest Gaussian writes the id of
        every tile its box touches, row by row, at its offset from the inclusive scan.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from numba import cuda

from ... import runtime
from ...harness import reference
from ...launch import kernel
from ...splat import kernels as splat_kernels
from ...splat import torch_impl as T
from ...splat.constants import ALPHA_MAX, ALPHA_MIN, EIGEN_FLOOR, LOW_PASS, SIGMAS, T_MIN, TILE
from ...splat.footprints import gaussian_params
from .engine import KERNEL, Hint, Planted, Sizes, Task

__all__ = ["check_task1", "check_task2", "check_task3", "check_task4", "task1_inputs", "task2_inputs",
           "task3_scene", "task4_inputs", "reference_conics", "reference_ranges", "reference_composite",
           "reference_tile_ids", "tile_ids_variant", "TILE_IDS",
           "projection_variant", "ranges_variant", "composite_variant", "VARIANTS",
           "conic_block", "ranges_block", "CONICS", "RANGES", "COMPOSITE"]

DEV = runtime.device


# ------------------------------------------------------------------ task 1

def conic_block(n: int) -> int:
    """Threads per block task 1 launches with: 32, and 64 from 100 Gaussians on (so a
    kernel that hard-codes 32 is caught)."""
    return 64 if n >= 100 else 32


def _random_rotation(gen, dtype=torch.float64):
    return T.quat_to_rotmat(torch.randn(1, 4, generator=gen, dtype=dtype))[0]


def task1_inputs(n: int, gen: torch.Generator):
    """(means_cam [n,3], cov3d [n,3,3] world, view_rot [3,3], fx, fy, lim_x, lim_y).

    About a quarter of the means lie outside 1.3 x the field of view (the clamp matters);
    about one covariance in ten is flat (zero scales), the first one always (without the
    low-pass its det is 0; its radius needs the 0.1 eigenvalue floor). Radii that land
    within 1e-3 of an integer before the ceil are avoided, so float32 and float64 agree.
    """
    fx = float(torch.empty(1).uniform_(40, 120, generator=gen))
    fy = fx * float(torch.empty(1).uniform_(0.8, 1.2, generator=gen))
    lim_x, lim_y = 1.3 * 32 / fx, 1.3 * 24 / fy           # a 64x48 image
    rows = []
    while sum(len(r[0]) for r in rows) < n:
        m = 2 * n + 8
        z = torch.empty(m, dtype=torch.float64).uniform_(0.5, 5.0, generator=gen)
        xy = (torch.rand(m, 2, generator=gen, dtype=torch.float64) * 2 - 1) * 1.6 * torch.tensor([lim_x, lim_y]) * z[:, None]
        means = torch.cat([xy, z[:, None]], 1)
        scales = torch.exp(-2.5 + 0.8 * torch.randn(m, 3, generator=gen, dtype=torch.float64))
        scales[torch.rand(m, generator=gen) < 0.1] = 0.0
        if not rows:
            scales[0] = 0.0                               # the first Gaussian is flat
        cov = T.covariance_3d(torch.randn(m, 4, generator=gen, dtype=torch.float64), scales)
        rows.append((means, cov))
    means = torch.cat([r[0] for r in rows])
    cov = torch.cat([r[1] for r in rows])
    view_rot = _random_rotation(gen)
    c2 = T.project_covariance(cov, means, view_rot, fx, fy, lim_x, lim_y)
    a, c = c2[:, 0, 0] + LOW_PASS, c2[:, 1, 1] + LOW_PASS
    det = a * c - c2[:, 0, 1] ** 2
    mid = 0.5 * (a + c)
    r = SIGMAS * torch.sqrt(mid + torch.sqrt((mid * mid - det).clamp_min(EIGEN_FLOOR)))
    safe = (r - torch.round(r)).abs() > 1e-3
    means, cov = means[safe][:n], cov[safe][:n]
    return (means.float(), cov.float(), view_rot.float(), np.float32(fx), np.float32(fy),
            np.float32(lim_x), np.float32(lim_y))


@reference
def reference_conics(means_cam, cov3d, view_rot, fx, fy, lim_x, lim_y):
    """(conics [N, 3] float32, radii [N] int32) from the torch specification, in float64."""
    c2 = T.project_covariance(cov3d.double(), means_cam.double(), view_rot.double(),
                              float(fx), float(fy), float(lim_x), float(lim_y))
    conic, radius, _ = T.conic_and_radius(c2)
    return conic.float(), radius.to(torch.int32)


def projection_variant(means_cam, cov3d, view_rot, fx, fy, lim_x, lim_y, *, low_pass=LOW_PASS,
                       clamp=True, use_view_rot=True, use_fy=True, off_diagonal_sign=-1.0,
                       larger_eigenvalue=True, eigen_floor=EIGEN_FLOOR, ceil=True):
    """Task 1 in float64 with switchable mistakes; with the defaults it equals
    :func:`reference_conics`. Returns (conics, radii) as float tensors (NaN where a
    mistake divides 0 by 0)."""
    means, cov = means_cam.double().cpu(), cov3d.double().cpu()
    rot = view_rot.double().cpu() if use_view_rot else torch.eye(3, dtype=torch.float64)
    fx, fy = float(fx), float(fy if use_fy else fx)
    x, y, z = means.unbind(-1)
    tx = (x / z).clamp(-float(lim_x), float(lim_x)) * z if clamp else x
    ty = (y / z).clamp(-float(lim_y), float(lim_y)) * z if clamp else y
    zero = torch.zeros_like(z)
    jac = torch.stack([fx / z, zero, -fx * tx / (z * z), zero, fy / z, -fy * ty / (z * z)], -1).reshape(-1, 2, 3)
    t = jac @ rot
    c2 = t @ cov @ t.transpose(-1, -2)
    a, b, c = c2[:, 0, 0] + low_pass, c2[:, 0, 1], c2[:, 1, 1] + low_pass
    det = a * c - b * b
    conic = torch.stack([c / det, off_diagonal_sign * b / det, a / det], -1)
    mid = 0.5 * (a + c)
    spread = torch.sqrt((mid * mid - det).clamp_min(eigen_floor))
    lam = mid + spread if larger_eigenvalue else mid - spread
    r = SIGMAS * torch.sqrt(lam)
    return conic.float(), (torch.ceil(r) if ceil else torch.trunc(r)).float()


def _launch_conics(kernel_, inputs, outputs, size):
    block = conic_block(size)
    kernel_[math.ceil(size / block), block](*inputs, *outputs)


def _close(a, b, rtol=1e-3, atol=1e-5) -> bool:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return a.shape == b.shape and torch.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True)


def _radii_close(out, alt) -> bool:
    """Radii equal but for a few that float32 rounding moves by one."""
    out, alt = out.detach().double().cpu().reshape(-1), alt.detach().double().cpu().reshape(-1)
    if out.shape != alt.shape or torch.isnan(out).any():
        return False
    diff = (out - alt).abs()
    return bool((diff <= 1).all()) and float((diff == 0).double().mean()) >= 0.95


def _projection_hint(say: str, **mistake) -> Hint:
    """A hint for the mistake ``mistake``: both outputs match :func:`projection_variant`."""
    def when(case):
        if case.error is not None or len(case.outputs) != 2:
            return False
        conic, radius = projection_variant(*case.inputs, **mistake)
        ref_conic, ref_radius = case.expected
        differs = not (_close(conic, ref_conic, 1e-4) and _radii_close(ref_radius, radius))
        return differs and _close(case.outputs[0], conic) and _radii_close(case.outputs[1], radius)

    return Hint(when, say)


def _divided_by_zero_det(case) -> bool:
    """A row whose conic is NaN although its radius was written: 0 / 0 with det = 0."""
    conic, radius = case.outputs[0].cpu(), case.outputs[1].cpu()
    return bool((torch.isnan(conic).any(-1) & ~torch.isnan(radius)).any())


def _rows_unwritten(case) -> bool:
    return case.error is None and bool(torch.isnan(case.outputs[1].cpu()).any()) and not _divided_by_zero_det(case)


CONICS = Task(
    chapter="06", number=1, title="2D conic and radius from a 3D covariance", kind=KERNEL,
    reference=reference_conics, make_inputs=task1_inputs,
    sizes=Sizes(sim=[1, 45, 100], hidden=[129, 257], gpu=[4096, 100_003]),
    launch=_launch_conics, rtol=1e-4, atol=1e-5, own_kernels=(splat_kernels,),
    candidate_name="conic_kernel",
    hints=[
        Hint(lambda case: bool(case.findings) or _rows_unwritten(case),
             "One thread per Gaussian: i = cuda.grid(1), and do not assume a block size (the check "
             "launches 32 or 64 threads per block)"),
        Hint(_divided_by_zero_det,
             "A conic is NaN: a flat Gaussian has det = 0 unless 0.3 (the low-pass) is added to "
             "a and c before the determinant"),
        Hint(lambda case: isinstance(case.error, ValueError) and "domain" in str(case.error),
             "The square root of a negative number: the radius uses the larger eigenvalue, "
             "lambda = mid + sqrt(max(0.1, mid^2 - det))"),
        _projection_hint("The x/z and y/z of J must be clamped to +-lim_x and +-lim_y (the field-of-view "
                         "clamp)", clamp=False),
        _projection_hint("The conic's middle term is -b / det (the inverse of [[a, b], [b, c]])",
                         off_diagonal_sign=1.0),
        _projection_hint("The radius uses the larger eigenvalue: lambda = mid + sqrt(max(0.1, mid^2 - det))",
                         larger_eigenvalue=False),
        _projection_hint("The radius is rounded up: math.ceil(3 * sqrt(lambda)), not truncated",
                         ceil=False),
        _projection_hint("The eigenvalue floor is 0.1: lambda = mid + sqrt(max(0.1, mid^2 - det))",
                         eigen_floor=0.0),
        _projection_hint("The view rotation is ignored: T = J W with W = view_rot", use_view_rot=False),
        _projection_hint("fy is ignored: the second row of J uses fy, not fx", use_fy=False),
    ],
    solution="conic_kernel",
)
check_task1 = CONICS.checker()


# ------------------------------------------------------------------ task 2

def ranges_block(n: int) -> int:
    """Threads per block task 2 launches with: 64, and 32 from 256 keys on."""
    return 32 if n > 256 else 64


def task2_inputs(n_keys: int, gen: torch.Generator):
    """(sorted keys [n_keys] int64, n_tiles): random tiles with gaps; first and last tiles used."""
    n_tiles = int(torch.randint(6, 40, (1,), generator=gen))
    tiles = torch.randint(0, n_tiles, (n_keys,), generator=gen)
    if n_keys >= 2:
        tiles[0], tiles[1] = 0, n_tiles - 1               # runs at both ends of the table
    depth = torch.rand(n_keys, generator=gen) * 10 + 0.2
    keys = (tiles << 32) | (depth.view(torch.int32).long() & 0xFFFFFFFF)
    return torch.sort(keys).values, n_tiles


@reference
def reference_ranges(sorted_keys, n_tiles):
    return T.tile_ranges(sorted_keys, n_tiles)


def ranges_variant(sorted_keys, n_tiles, *, end_shift=0, start_shift=0, close_last=True,
                   handled=None) -> torch.Tensor:
    """Task 2 with switchable mistakes (vectorized); with the defaults it equals
    :func:`reference_ranges`. ``handled(n)``: a mask of the keys whose thread ran."""
    tiles = sorted_keys.cpu() >> 32
    n = tiles.numel()
    ranges = torch.zeros(n_tiles, 2, dtype=torch.int64)
    ran = torch.ones(n, dtype=torch.bool) if handled is None else handled(n)
    border = torch.zeros(n, dtype=torch.bool)
    border[1:] = tiles[1:] != tiles[:-1]
    first = torch.nonzero(border & ran).reshape(-1)       # thread i opens a run, closes the previous
    ranges[tiles[first - 1], 1] = first + end_shift
    ranges[tiles[first], 0] = first + start_shift
    if close_last and n and bool(ran[-1]):
        ranges[tiles[-1], 1] = n
    return ranges.to(torch.int32)


def _handled_with_block_64(n: int) -> torch.Tensor:
    """The keys a kernel computing i = blockIdx.x * 64 + threadIdx.x reaches."""
    block = ranges_block(n)
    i = torch.arange(math.ceil(n / block))[:, None] * 64 + torch.arange(block)[None, :]
    ran = torch.zeros(n, dtype=torch.bool)
    ran[i[i < n]] = True
    return ran


def _launch_ranges(kernel_, inputs, outputs, size):
    block = ranges_block(size)
    kernel_[math.ceil(size / block), block](inputs[0], *outputs)


def _ranges_hint(say: str, **mistake) -> Hint:
    return Hint.matches(lambda keys, n_tiles: ranges_variant(keys, n_tiles, **mistake), say)


RANGES = Task(
    chapter="06", number=2, title="per-tile ranges of the sorted keys", kind=KERNEL,
    reference=reference_ranges, make_inputs=task2_inputs,
    sizes=Sizes(sim=[1, 2, 63, 64, 65, 300], hidden=[129, 1000], gpu=[1 << 20, 3_000_017]),
    launch=_launch_ranges, trials=2, output_fill="zeros", own_kernels=(splat_kernels,),
    candidate_name="ranges_kernel",
    hints=[
        Hint(lambda case: any(f.array == "ranges" and f.kind == "race" for f in case.findings),
             "Each element of ranges is written by one thread: only the thread of a run's first key "
             "writes (its start, and the end of the run before it)"),
        Hint(lambda case: isinstance(case.error, IndexError),
             "An index out of range: a key's tile is sorted_keys[i] >> 32 (its high 32 bits), and "
             "only keys 0 .. n - 1 exist"),
        _ranges_hint("The end is exclusive: ranges[prev, 1] = i, the index of the next run's first key "
                     "(not i - 1)", end_shift=-1),
        _ranges_hint("A run ends at the index of the next run's first key, ranges[prev, 1] = i "
                     "(not i + 1)", end_shift=1),
        _ranges_hint("A run starts at the index of its first key: ranges[tile, 0] = i", start_shift=1),
        _ranges_hint("The last run is never closed: the thread of the last key writes ranges[tile, 1] = n",
                     close_last=False),
        _ranges_hint("Keys were skipped: i = cuda.grid(1), whatever the block size (the check "
                     "launches 64 or 32 threads per block)", handled=_handled_with_block_64),
    ],
    solution="ranges_kernel",
)
check_task2 = RANGES.checker()


# ------------------------------------------------------------------ task 3

#: a Gaussian of opacity 1 centred on the centre of pixel (4, 12), in front of everything:
#: its alpha there reaches the 0.99 cap
_OPAQUE_AT = (4.5, 12.5)


def task3_scene(height: int, width: int, gen: torch.Generator, n_random: int = 14, crafted: bool = True):
    """A 2D scene, binned like the pipeline does; returns the kernel's inputs in order:
    (ranges, gaussian_ids, means2d, conics, opacities, colors, background).

    ``crafted`` adds an opaque Gaussian centred on pixel (4, 12) (alpha reaches the cap),
    four nearly opaque Gaussians stacked around pixel (8, 8) (the pixels there saturate:
    early stop) and two small ones straddling the tile border at x = 16. The random
    Gaussians' opacities stay below 0.95, so only the crafted one reaches the cap.
    """
    means, sig, opac = [], [], []
    if crafted:
        means += [list(_OPAQUE_AT)] + [[8.3, 8.2]] * 4 + [[15.8, 5.0], [16.3, 11.0]]
        sig += [[1.0, 1.0, 0.0]] + [[4.0, 3.0, 0.2]] * 4 + [[0.8, 1.0, 0.2], [1.0, 0.7, -0.1]]
        opac += [1.0] + [0.97] * 4 + [0.9, 0.8]
    m = torch.rand(n_random, 2, generator=gen) * torch.tensor([width, height])
    s = torch.cat([0.7 + 3 * torch.rand(n_random, 2, generator=gen), torch.rand(n_random, 1, generator=gen) - 0.5], 1)
    means2d = torch.cat([torch.tensor(means).reshape(-1, 2), m]).double()
    sig = torch.cat([torch.tensor(sig).reshape(-1, 3), s]).double()
    opacities = torch.cat([torch.tensor(opac), 0.3 + 0.65 * torch.rand(n_random, generator=gen)]).float()
    sx, sy, rho = sig[:, 0], sig[:, 1], sig[:, 2]
    cov2d = torch.stack([sx * sx, rho * sx * sy, rho * sx * sy, sy * sy], 1).reshape(-1, 2, 2) - LOW_PASS * torch.eye(2)
    conics, radius, _ = T.conic_and_radius(cov2d)
    depths = torch.rand(len(means2d), generator=gen) + 1.0
    if crafted:
        depths[:5] = torch.tensor([0.3, 0.5, 0.6, 0.7, 0.8])  # the opaque one, then the stack, in front
    radii = radius.to(torch.int32)
    keys, ids = T.sort_keys(*T.bin_gaussians(means2d.float(), radii, depths, width, height))
    tiles_x, tiles_y = T.tile_grid(width, height)
    ranges = T.tile_ranges(keys, tiles_x * tiles_y)
    colors = torch.rand(len(means2d), 3, generator=gen)
    background = torch.rand(3, generator=gen)
    return tuple(t.to(DEV) for t in (ranges, ids, means2d.float(), conics.float(), opacities, colors, background))


@reference
def reference_composite(ranges, gaussian_ids, means2d, conics, opacities, colors, background, height, width):
    """(image [H, W, 3], transmittance [H, W]) from the package's torch rasterizer."""
    params = gaussian_params(means2d, conics, opacities)
    return T.rasterize_tiles(params, colors, background, ranges, gaussian_ids, width, height)


# the classic mistakes, for feedback: what it is -> composite_variant's flags
VARIANTS = {
    "pixel centres at integer coordinates (missing +0.5)": dict(centre=0.0),
    "the transmittance is updated before it is used (weight = alpha * T_new)": dict(t_first=True),
    "no early stop (the loop never stops when T * (1 - alpha) < 1e-4)": dict(early_stop=False),
    "the saturating Gaussian is used before stopping (stop must come first)": dict(use_then_stop=True),
    "alpha is not capped at 0.99 (alpha = min(0.99, opacity * exp(power)))": dict(alpha_max=math.inf),
    "contributions below 1/255 are not skipped (skip when alpha < 1 / 255)": dict(alpha_min=0.0),
    "the background is left out (image = colour + T * background)": dict(background_weight=0.0),
}


def composite_variant(ranges, gaussian_ids, means2d, conics, opacities, colors, background, height, width,
                      centre: float = 0.5, early_stop: bool = True, use_then_stop: bool = False,
                      t_first: bool = False, alpha_max: float = ALPHA_MAX, alpha_min: float = ALPHA_MIN,
                      background_weight: float = 1.0):
    """A plain per-pixel compositor (tile by tile, one Gaussian at a time) with switchable
    mistakes; with the defaults it equals :func:`reference_composite`."""
    params = gaussian_params(means2d, conics, opacities).double().cpu()
    ranges, ids = ranges.cpu(), gaussian_ids.cpu().long()
    colors, background = colors.double().cpu(), background.double().cpu() * background_weight
    tiles_x, tiles_y = T.tile_grid(width, height)
    image = torch.zeros(tiles_y * TILE, tiles_x * TILE, 3, dtype=torch.float64)
    trans = torch.ones(tiles_y * TILE, tiles_x * TILE, dtype=torch.float64)
    ly, lx = torch.meshgrid(torch.arange(TILE), torch.arange(TILE), indexing="ij")
    for ty in range(tiles_y):
        for tx in range(tiles_x):
            px, py = tx * TILE + lx + centre, ty * TILE + ly + centre
            Tr = torch.ones(TILE, TILE, dtype=torch.float64)
            acc = torch.zeros(TILE, TILE, 3, dtype=torch.float64)
            done = torch.zeros(TILE, TILE, dtype=torch.bool)
            start, end = (int(v) for v in ranges[ty * tiles_x + tx])
            for k in range(start, end):
                g = params[int(ids[k])]
                dx, dy = g[0] - px, g[1] - py
                power = -0.5 * (g[2] * dx * dx + g[4] * dy * dy) - g[3] * dx * dy
                alpha = torch.where(power > 0, 0.0, (g[5] * torch.exp(power.clamp_max(0.0))).clamp_max(alpha_max))
                live = ~done & (alpha >= alpha_min) & (alpha > 0)
                test_T = Tr * (1 - alpha)
                stop = live & (test_T < T_MIN) & early_stop
                use = live if use_then_stop else live & ~stop
                w = alpha * (test_T if t_first else Tr)
                acc += torch.where(use, w, 0.0)[..., None] * colors[int(ids[k])]
                Tr = torch.where(use, test_T, Tr)
                done |= stop
            sl = (slice(ty * TILE, (ty + 1) * TILE), slice(tx * TILE, (tx + 1) * TILE))
            image[sl] = acc + Tr[..., None] * background
            trans[sl] = Tr
    return image[:height, :width].float().to(DEV), trans[:height, :width].float().to(DEV)


def _task3_inputs(size, gen):
    height, width = size
    n_random = 14 if height * width <= 32 * 32 else height * width // 64
    return (*task3_scene(height, width, gen, n_random=n_random), height, width)


def _launch_composite(kernel_, inputs, outputs, size):
    height, width = size
    tiles_x, tiles_y = T.tile_grid(width, height)
    kernel_[(tiles_x, tiles_y), (TILE, TILE)](*inputs[:7], *outputs)


def _variant_hint(name: str, flags: dict) -> Hint:
    """A hint for a classic mistake: image and transmittance both match the variant (the
    transmittance tells a late stop from no stop, whose images differ by less than 1e-4)."""
    def when(case):
        if case.error is not None or len(case.outputs) != 2:
            return False
        image, trans = composite_variant(*case.inputs, **flags)
        ref_image, ref_trans = case.expected
        differs = not (_close(image, ref_image, 1e-4, 1e-5) and _close(trans, ref_trans, 1e-4, 1e-6))
        return differs and _close(case.outputs[0], image, 1e-4, 1e-5) and _close(case.outputs[1], trans, 1e-4, 1e-6)

    return Hint(when, f"It matches compositing where {name}")


def _last_column_or_row_unwritten(case) -> bool:
    if not case.unwritten_only:
        return False
    mask = case.unwritten
    if mask.dim() == 3:
        mask = mask.any(-1)
    last_col, last_row = mask[:, -1].all(), mask[-1, :].all()
    return bool(last_col or last_row)


COMPOSITE = Task(
    chapter="06", number=3, title="per-pixel compositing with early stop", kind=KERNEL,
    reference=reference_composite, make_inputs=_task3_inputs,
    # 1 x 2 tiles 9 wide (the cheapest first: most wrong answers fail there, and the
    # planted ones stop at their first failure); 2 tiles side by side, the right one 8
    # pixels wide; 2 x 2 tiles
    sizes=Sizes(sim=[(20, 9), (16, 24), (20, 18)], hidden=[(33, 17)], gpu=[(270, 480), (541, 963)]),
    launch=_launch_composite, rtol=1e-4, atol=1e-5, candidate_name="composite_kernel",
    hints=[
        Hint(lambda case: any(f.array in ("image", "transmittance") for f in case.findings),
             "Each thread owns one pixel: x = cuda.blockIdx.x * 16 + cuda.threadIdx.x, "
             "y = cuda.blockIdx.y * 16 + cuda.threadIdx.y"),
        Hint(lambda case: isinstance(case.error, IndexError),
             "An index out of range: a pixel exists when x < width and y < height, and its tile is "
             "cuda.blockIdx.y * cuda.gridDim.x + cuda.blockIdx.x (tiles per row = gridDim.x: do not "
             "hard-code it)"),
        Hint(_last_column_or_row_unwritten,
             "The last column or row was never written: a pixel (x, y) exists when x < width and "
             "y < height"),
        *[_variant_hint(name, flags) for name, flags in VARIANTS.items()],
    ],
    solution="composite_kernel",
)
check_task3 = COMPOSITE.checker()


# ------------------------------------------------------------------ task 4

def tile_ids_block(n: int) -> int:
    """Threads per block task 4 launches with: 32, and 64 from 100 Gaussians on."""
    return 64 if n >= 100 else 32


def task4_inputs(n: int, gen: torch.Generator):
    """(order [n] int64, means2d [n, 2], radii [n] int32, offsets [n] int32, tiles_x, tiles_y).

    A screen of 40-120 x 30-90 pixels (partial tiles at the right and bottom); means up to
    25 pixels outside it, radii 0 (culled, about one in eight) to 30; one Gaussian far off
    screen (no tile at all). ``order`` sorts the Gaussians front to back; ``offsets`` is the
    inclusive scan of their tile counts in that order, as ``torch.cumsum`` gives it.
    """
    width = int(torch.randint(40, 121, (1,), generator=gen))
    height = int(torch.randint(30, 91, (1,), generator=gen))
    tiles_x, tiles_y = T.tile_grid(width, height)
    means2d = torch.rand(n, 2, generator=gen) * torch.tensor([width + 50.0, height + 50.0]) - 25.0
    radii = torch.randint(1, 31, (n,), generator=gen, dtype=torch.int32)
    radii[torch.rand(n, generator=gen) < 0.125] = 0
    radii[0] = max(int(radii[0]), 3)                      # at least one Gaussian writes keys
    means2d[0] = torch.tensor([width / 2, height / 2])
    if n > 2:
        means2d[2] = torch.tensor([-200.0, 10.0])          # far off screen: its box touches no tile
    depths = torch.rand(n, generator=gen) * 9.5 + 0.5
    order = torch.argsort(depths)
    x0, y0, x1, y1 = T.tile_rects(means2d, radii, width, height)
    counts = torch.where(radii > 0, (x1 - x0) * (y1 - y0), torch.zeros_like(x0))
    offsets = torch.cumsum(counts[order], 0).to(torch.int32)
    return order, means2d, radii, offsets, tiles_x, tiles_y


@reference
def reference_tile_ids(order, means2d, radii, offsets, tiles_x, tiles_y):
    """(tiles [L] int32, ids [L] int32): Gaussian by Gaussian front to back, tiles row by row."""
    width, height = tiles_x * TILE, tiles_y * TILE         # the same tile grid
    keys, rank = T.bin_gaussians(means2d[order], radii[order], torch.zeros(len(order), device=means2d.device),
                                 width, height)
    return (keys >> 32).to(torch.int32), order[rank.long()].to(torch.int32)


def tile_ids_variant(order, means2d, radii, offsets, tiles_x, tiles_y, *, swap=False, row_stride_y=False,
                     rank_ids=False):
    """Task 4 with switchable mistakes (the same slots written); the defaults give the reference."""
    width, height = tiles_x * TILE, tiles_y * TILE
    order, means2d, radii = order.cpu(), means2d.cpu(), radii.cpu()
    x0, y0, x1, y1 = T.tile_rects(means2d, radii, width, height)
    tiles, ids = [], []
    for r, i in enumerate(order.tolist()):
        if radii[i] <= 0:
            continue
        for ty in range(int(y0[i]), int(y1[i])):
            for tx in range(int(x0[i]), int(x1[i])):
                tiles.append(tx * tiles_y + ty if swap else (ty * tiles_y + tx if row_stride_y else ty * tiles_x + tx))
                ids.append(r if rank_ids else i)
    return torch.tensor(tiles, dtype=torch.int32), torch.tensor(ids, dtype=torch.int32)


def _launch_tile_ids(kernel_, inputs, outputs, size):
    block = tile_ids_block(size)
    kernel_[math.ceil(size / block), block](*inputs, *outputs)


def _tile_ids_hint(say: str, **mistake) -> Hint:
    def when(case):
        if case.error is not None or len(case.outputs) != 2:
            return False
        tiles, ids = tile_ids_variant(*case.inputs, **mistake)
        differs = not (_close(tiles, case.expected[0], 0, 0) and _close(ids, case.expected[1], 0, 0))
        return differs and _close(case.outputs[0], tiles, 0, 0) and _close(case.outputs[1], ids, 0, 0)

    return Hint(when, say)


def _slot_starts_ends(offsets):
    ends = offsets.cpu().long()
    return torch.cat([ends.new_zeros(1), ends[:-1]]), ends


def _unwritten_if_skipped_by_block_64(case) -> torch.Tensor:
    """The slots left unwritten by a kernel that computes r = blockIdx.x * 64 + threadIdx.x."""
    order, offsets = case.inputs[0], case.inputs[3]
    n = len(order)
    block = tile_ids_block(n)
    r = torch.arange(math.ceil(n / block))[:, None] * 64 + torch.arange(block)[None, :]
    reached = torch.zeros(n, dtype=torch.bool)
    reached[r[r < n]] = True
    starts, ends = _slot_starts_ends(offsets)
    mask = torch.zeros(int(ends[-1]) if n else 0, dtype=torch.bool)
    for k in torch.nonzero(~reached).flatten().tolist():
        mask[starts[k]:ends[k]] = True
    return mask


def _unwritten_if_box_end_floored(case) -> torch.Tensor:
    """The slots left unwritten by a kernel that rounds the box's end down (floor for x1, y1)."""
    order, means2d, radii, offsets, tiles_x, tiles_y = case.inputs
    order, means2d, radii = order.cpu(), means2d.cpu().double(), radii.cpu().double()
    starts, ends = _slot_starts_ends(offsets)
    mask = torch.zeros(int(ends[-1]) if len(order) else 0, dtype=torch.bool)
    for r, i in enumerate(order.tolist()):
        if radii[i] <= 0:
            continue
        lo = [math.floor(min(max((float(means2d[i, a]) - float(radii[i])) / TILE, 0.0), g)) for a, g in ((0, tiles_x), (1, tiles_y))]
        hi = [math.floor(min(max((float(means2d[i, a]) + float(radii[i])) / TILE, 0.0), g)) for a, g in ((0, tiles_x), (1, tiles_y))]
        written = max(0, hi[0] - lo[0]) * max(0, hi[1] - lo[1])
        mask[starts[r] + written:ends[r]] = True
    return mask


def _unwritten_like(predict):
    def when(case):
        mask = case.unwritten
        if case.error is not None or mask.numel() == 0 or not mask.any():
            return False
        return torch.equal(mask.reshape(-1), predict(case))
    return when


TILE_IDS = Task(
    chapter="06", number=4, title="binning: the keys of the tile-major sort", kind=KERNEL,
    reference=reference_tile_ids, make_inputs=task4_inputs,
    sizes=Sizes(sim=[1, 3, 31, 64, 101], hidden=[257, 1000], gpu=[100_003, 1_000_000]),
    launch=_launch_tile_ids, trials=2, own_kernels=(splat_kernels,), candidate_name="tile_ids_kernel",
    hints=[
        Hint(lambda case: any(f.array in ("tiles", "ids") and f.kind == "race" for f in case.findings),
             "Two Gaussians wrote the same slot: each one writes only its own count of keys, from its "
             "offset, and a Gaussian with radius 0 is culled and writes none"),
        Hint(lambda case: isinstance(case.error, IndexError) or case.frame_touched,
             "A write past the slots: offsets is the inclusive scan, so the r-th Gaussian's keys go to "
             "offsets[r - 1] .. offsets[r] - 1 (from 0 for r = 0), a Gaussian with radius 0 is culled and "
             "writes none, and its box is clamped to the tile grid, x1 and y1 exclusive"),
        Hint(_unwritten_like(_unwritten_if_skipped_by_block_64),
             "Some Gaussians wrote nothing: every r = cuda.grid(1) < n takes part, whatever the block "
             "size (the check launches 32 or 64 threads per block)"),
        Hint(_unwritten_like(_unwritten_if_box_end_floored),
             "Gaussians wrote fewer keys than offsets gives them: the box spans tiles x0 = "
             "floor((mx - r) / 16) to x1 = ceil((mx + r) / 16), x1 exclusive (the same for y), "
             "clamped to the grid"),
        _tile_ids_hint("The tiles are transposed: tile id = ty * tiles_x + tx (row-major), not "
                       "tx * tiles_y + ty", swap=True),
        _tile_ids_hint("A row of tiles has tiles_x tiles: tile id = ty * tiles_x + tx, not ty * tiles_y + tx",
                       row_stride_y=True),
        _tile_ids_hint("ids must hold the Gaussian, order[r], not its rank r in the depth order",
                       rank_ids=True),
    ],
    solution="tile_ids_kernel",
)
check_task4 = TILE_IDS.checker()


# ------------------------------------------------------------------ planted wrong answers
# Plausible mistakes of each task. tests/chNN_slug/test_chNN_planted.py requires every one to be
# rejected with feedback containing its `expect` phrase.

def _make_conic(mistake=None):
    # plain bools: numba freezes them into the kernel as constants
    (no_low_pass, no_clamp, plus_b, smaller_lambda, truncated, floor_zero, no_rot, fx_for_y,
     block_32) = (mistake == m for m in ("no_low_pass", "no_clamp", "plus_b", "smaller_lambda", "truncated",
                                         "floor_zero", "no_rot", "fx_for_y", "block_32"))

    @kernel
    def conic(means_cam, cov3d, view_rot, fx, fy, lim_x, lim_y, conics, radii):
        i = cuda.blockIdx.x * 32 + cuda.threadIdx.x if block_32 else cuda.grid(1)
        if i >= means_cam.shape[0]:
            return
        x, y, z = means_cam[i, 0], means_cam[i, 1], means_cam[i, 2]
        tx = x if no_clamp else min(lim_x, max(-lim_x, x / z)) * z
        ty = y if no_clamp else min(lim_y, max(-lim_y, y / z)) * z
        f_y = fx if fx_for_y else fy
        j00, j02 = fx / z, -fx * tx / (z * z)
        j11, j12 = f_y / z, -f_y * ty / (z * z)
        a = b = c = 0.0
        for k in range(3):
            w0k = (1.0 if k == 0 else 0.0) if no_rot else view_rot[0, k]
            w1k = (1.0 if k == 1 else 0.0) if no_rot else view_rot[1, k]
            w2k = (1.0 if k == 2 else 0.0) if no_rot else view_rot[2, k]
            t0k, t1k = j00 * w0k + j02 * w2k, j11 * w1k + j12 * w2k
            for l in range(3):
                w0l = (1.0 if l == 0 else 0.0) if no_rot else view_rot[0, l]
                w1l = (1.0 if l == 1 else 0.0) if no_rot else view_rot[1, l]
                w2l = (1.0 if l == 2 else 0.0) if no_rot else view_rot[2, l]
                t0l, t1l = j00 * w0l + j02 * w2l, j11 * w1l + j12 * w2l
                s = cov3d[i, k, l]
                a += t0k * s * t0l
                b += t0k * s * t1l
                c += t1k * s * t1l
        if not no_low_pass:
            a += 0.3
            c += 0.3
        det = a * c - b * b
        conics[i, 0] = c / det
        conics[i, 1] = b / det if plus_b else -b / det
        conics[i, 2] = a / det
        mid = 0.5 * (a + c)
        spread = math.sqrt(max(0.0 if floor_zero else 0.1, mid * mid - det))
        lam = mid - spread if smaller_lambda else mid + spread
        radii[i] = int(3.0 * math.sqrt(lam)) if truncated else math.ceil(3.0 * math.sqrt(lam))

    return conic


CONICS.planted = [
    Planted("no low-pass", _make_conic("no_low_pass"), "low-pass"),
    Planted("no field-of-view clamp", _make_conic("no_clamp"), "field-of-view clamp"),
    Planted("conic middle term +b / det", _make_conic("plus_b"), "-b / det"),
    # its square root of a negative number raises under the simulator; on a GPU it is NaN
    Planted("radius from the smaller eigenvalue", _make_conic("smaller_lambda"), "larger eigenvalue",
            simulator_only=True),
    Planted("radius truncated, not rounded up", _make_conic("truncated"), "rounded up"),
    Planted("eigenvalue floor 0 instead of 0.1", _make_conic("floor_zero"), "floor is 0.1"),
    Planted("view rotation ignored", _make_conic("no_rot"), "view rotation is ignored"),
    Planted("fx used for both rows (fy ignored)", _make_conic("fx_for_y"), "fy is ignored"),
    Planted("block size hard-coded as 32", _make_conic("block_32"), "block size"),
    Planted("the reference itself", reference_conics, "@gpulab.kernel"),
]


def _make_ranges(mistake=None):
    inclusive_end, end_plus_one, start_plus_one, last_open, whole_keys, block_64, every_thread_ends = (
        mistake == m for m in ("inclusive_end", "end_plus_one", "start_plus_one", "last_open", "whole_keys",
                               "block_64", "every_thread_ends"))

    @kernel
    def ranges_(sorted_keys, ranges):
        i = cuda.blockIdx.x * 64 + cuda.threadIdx.x if block_64 else cuda.grid(1)
        n = sorted_keys.shape[0]
        if i >= n:
            return
        tile = sorted_keys[i] if whole_keys else sorted_keys[i] >> 32
        if every_thread_ends:
            ranges[tile, 1] = i + 1                       # every thread of the run: a race
        if i > 0:
            prev = sorted_keys[i - 1] if whole_keys else sorted_keys[i - 1] >> 32
            if tile != prev:
                if not every_thread_ends:
                    ranges[prev, 1] = i - 1 if inclusive_end else (i + 1 if end_plus_one else i)
                ranges[tile, 0] = i + 1 if start_plus_one else i
        if i == n - 1 and not (last_open or every_thread_ends):
            ranges[tile, 1] = n

    return ranges_


RANGES.planted = [
    Planted("inclusive end", _make_ranges("inclusive_end"), "end is exclusive"),
    Planted("end one past the border", _make_ranges("end_plus_one"), "not i + 1"),
    Planted("start one past the border", _make_ranges("start_plus_one"), "ranges[tile, 0] = i"),
    Planted("last run never closed", _make_ranges("last_open"), "last run is never closed"),
    Planted("compares whole keys, not tiles", _make_ranges("whole_keys"), ">> 32", simulator_only=True),
    Planted("block size hard-coded as 64", _make_ranges("block_64"), "whatever the block size"),
    Planted("every thread writes its run's end", _make_ranges("every_thread_ends"), "written by one thread",
            simulator_only=True),
    Planted("the package's own kernel", splat_kernels.tile_ranges_kernel, "package's own"),
    Planted("the reference itself", reference_ranges, "@gpulab.kernel"),
]


def _make_composite(mistake=None):
    (integer_centre, t_first, no_stop, use_then_stop, no_cap, no_alpha_min, no_background, short_bounds,
     long_bounds, thread_pixel, two_tiles_per_row) = (
        mistake == m for m in ("integer_centre", "t_first", "no_stop", "use_then_stop", "no_cap",
                               "no_alpha_min", "no_background", "short_bounds", "long_bounds",
                               "thread_pixel", "two_tiles_per_row"))

    @kernel
    def composite(ranges, gaussian_ids, means2d, conics, opacities, colors, background, image, transmittance):
        height, width = image.shape[0], image.shape[1]
        x = cuda.threadIdx.x if thread_pixel else cuda.blockIdx.x * 16 + cuda.threadIdx.x
        y = cuda.threadIdx.y if thread_pixel else cuda.blockIdx.y * 16 + cuda.threadIdx.y
        if short_bounds:
            if x >= width - 1 or y >= height:
                return
        elif long_bounds:
            if x > width or y >= height:
                return
        elif x >= width or y >= height:
            return
        tiles_per_row = 2 if two_tiles_per_row else cuda.gridDim.x
        tile = cuda.blockIdx.y * tiles_per_row + cuda.blockIdx.x
        px = x * 1.0 if integer_centre else x + 0.5
        py = y * 1.0 if integer_centre else y + 0.5
        T_ = 1.0
        r = g = b = 0.0
        for k in range(ranges[tile, 0], ranges[tile, 1]):
            gid = gaussian_ids[k]
            dx = means2d[gid, 0] - px
            dy = means2d[gid, 1] - py
            power = -0.5 * (conics[gid, 0] * dx * dx + conics[gid, 2] * dy * dy) - conics[gid, 1] * dx * dy
            if power > 0.0:
                continue
            alpha = opacities[gid] * math.exp(power)
            if not no_cap:
                alpha = min(0.99, alpha)
            if alpha < 1.0 / 255.0 and not no_alpha_min:
                continue
            test_T = T_ * (1.0 - alpha)
            if test_T < 1e-4 and not (no_stop or use_then_stop):
                break
            w = alpha * (test_T if t_first else T_)
            r += colors[gid, 0] * w
            g += colors[gid, 1] * w
            b += colors[gid, 2] * w
            T_ = test_T
            if use_then_stop and test_T < 1e-4:
                break
        bg = 0.0 if no_background else 1.0
        image[y, x, 0] = r + T_ * background[0] * bg
        image[y, x, 1] = g + T_ * background[1] * bg
        image[y, x, 2] = b + T_ * background[2] * bg
        transmittance[y, x] = T_

    return composite


COMPOSITE.planted = [
    Planted("pixel centres without +0.5", _make_composite("integer_centre"), "missing +0.5"),
    Planted("transmittance updated before use", _make_composite("t_first"), "updated before it is used"),
    Planted("no early stop", _make_composite("no_stop"), "no early stop"),
    Planted("the saturating Gaussian used, then stop", _make_composite("use_then_stop"), "used before stopping"),
    Planted("alpha not capped at 0.99", _make_composite("no_cap"), "capped at 0.99"),
    Planted("alpha below 1/255 not skipped", _make_composite("no_alpha_min"), "1 / 255"),
    Planted("background argument ignored", _make_composite("no_background"), "background is left out"),
    Planted("last column never written", _make_composite("short_bounds"), "last column"),
    Planted("bounds check one column too far", _make_composite("long_bounds"), "bounds"),
    Planted("pixel from the thread index alone", _make_composite("thread_pixel"), "cuda.blockIdx.x * 16",
            simulator_only=True),
    Planted("two tiles per row hard-coded", _make_composite("two_tiles_per_row"), "gridDim.x",
            simulator_only=True),
    Planted("the reference itself", reference_composite, "@gpulab.kernel"),
]


def _make_tile_ids(mistake=None):
    swap, row_stride_y, rank_ids, inclusive_start, block_64, culled_write, floor_end = (
        mistake == m for m in ("swap", "row_stride_y", "rank_ids", "inclusive_start", "block_64",
                               "culled_write", "floor_end"))

    @kernel
    def tile_ids_(order, means2d, radii, offsets, tiles_x, tiles_y, tiles, ids):
        r = cuda.blockIdx.x * 64 + cuda.threadIdx.x if block_64 else cuda.grid(1)
        if r >= order.shape[0]:
            return
        i = order[r]
        if radii[i] <= 0 and not culled_write:
            return
        k = offsets[r] if inclusive_start else (0 if r == 0 else offsets[r - 1])
        rad = radii[i] * 1.0
        x0 = int(math.floor(min(max((means2d[i, 0] - rad) / 16.0, 0.0), tiles_x * 1.0)))
        y0 = int(math.floor(min(max((means2d[i, 1] - rad) / 16.0, 0.0), tiles_y * 1.0)))
        end_x = min(max((means2d[i, 0] + rad) / 16.0, 0.0), tiles_x * 1.0)
        end_y = min(max((means2d[i, 1] + rad) / 16.0, 0.0), tiles_y * 1.0)
        x1 = int(math.floor(end_x)) if floor_end else int(math.ceil(end_x))
        y1 = int(math.floor(end_y)) if floor_end else int(math.ceil(end_y))
        for ty in range(y0, y1):
            for tx in range(x0, x1):
                if swap:
                    tiles[k] = tx * tiles_y + ty
                elif row_stride_y:
                    tiles[k] = ty * tiles_y + tx
                else:
                    tiles[k] = ty * tiles_x + tx
                ids[k] = r if rank_ids else i
                k += 1

    return tile_ids_


TILE_IDS.planted = [
    Planted("tiles transposed (tx * tiles_y + ty)", _make_tile_ids("swap"), "transposed"),
    Planted("row stride tiles_y instead of tiles_x", _make_tile_ids("row_stride_y"), "tiles_x tiles"),
    Planted("ids hold the depth rank, not the Gaussian", _make_tile_ids("rank_ids"), "order[r]"),
    Planted("keys start at offsets[r] (the inclusive scan read as exclusive)", _make_tile_ids("inclusive_start"),
            "inclusive scan", simulator_only=True),
    Planted("block size hard-coded as 64", _make_tile_ids("block_64"), "whatever the block size"),
    Planted("culled Gaussians (radius 0) write keys too", _make_tile_ids("culled_write"), "radius 0",
            simulator_only=True),
    Planted("box end rounded down (floor for x1, y1)", _make_tile_ids("floor_end"), "ceil((mx + r) / 16)"),
    Planted("the package's own kernel", splat_kernels.write_tile_ids_kernel, "package's own"),
    Planted("the reference itself", reference_tile_ids, "@gpulab.kernel"),
]
