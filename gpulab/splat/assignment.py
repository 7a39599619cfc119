"""Graded checks of chapter 06's assignment (solutions/06_gaussian_splatting.ipynb).

* Task 1, ``check_task1(conic_kernel)``: the 2D conic and radius of a 3D covariance (EWA).
* Task 2, ``check_task2(ranges_kernel)``: each tile's [start, end) in the sorted key list.
* Task 3, ``check_task3(composite_kernel)``: one thread per pixel, front-to-back
  compositing with early stop.

Each check runs the learner's kernel on fresh random inputs (sizes that are not multiples
of the block, awkward cases built in) and compares with the package's torch reference.
When task 3 is wrong, the check also compares the answer with the classic mistakes
(pixel centres without +0.5, transmittance updated before use, no early stop, stopping
after using the saturating Gaussian) and names the one it matches.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import runtime
from ..course.feedback import is_kernel, require, require_own_kernel, task
from ..harness import CheckFailed, candidate_running, check, compare, reference
from . import kernels as K, torch_impl as T
from .constants import ALPHA_MIN, T_MIN, TILE
from .footprints import gaussian_alpha, gaussian_params

__all__ = ["check_task1", "check_task2", "check_task3", "task1_inputs", "task2_inputs",
           "task3_scene", "reference_conics", "reference_ranges", "reference_composite",
           "composite_variant", "VARIANTS"]

DEV = runtime.device


# ------------------------------------------------------------------ task 1

def _random_rotation(gen, dtype=torch.float64):
    return T.quat_to_rotmat(torch.randn(1, 4, generator=gen, dtype=dtype))[0]


def task1_inputs(n: int, gen: torch.Generator):
    """(means_cam [n,3], cov3d [n,3,3] world, view_rot [3,3], fx, fy, lim_x, lim_y).

    About a quarter of the means lie outside 1.3 x the field of view (the clamp matters);
    some covariances are degenerate (zero scales). Radii that land within 1e-3 of an integer
    before the ceil are avoided, so float32 and float64 answers agree.
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
        cov = T.covariance_3d(torch.randn(m, 4, generator=gen, dtype=torch.float64), scales)
        rows.append((means, cov))
    means = torch.cat([r[0] for r in rows])
    cov = torch.cat([r[1] for r in rows])
    view_rot = _random_rotation(gen)
    c2 = T.project_covariance(cov, means, view_rot, fx, fy, lim_x, lim_y)
    a, c = c2[:, 0, 0] + T.LOW_PASS, c2[:, 1, 1] + T.LOW_PASS
    det = a * c - c2[:, 0, 1] ** 2
    mid = 0.5 * (a + c)
    r = 3 * torch.sqrt(mid + torch.sqrt((mid * mid - det).clamp_min(0.1)))
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


def check_task1(conic_kernel, block: int = 32) -> None:
    """Task 1: ``conic_kernel(means_cam, cov3d, view_rot, fx, fy, lim_x, lim_y, conics, radii)``."""
    with task("Task 1: 2D conic and radius from a 3D covariance"):
        require(is_kernel(conic_kernel), "pass the kernel itself (decorated with @gpulab.kernel)")

        def run(means_cam, cov3d, view_rot, fx, fy, lim_x, lim_y, conics, radii):
            blocks = (len(means_cam) + block - 1) // block
            conic_kernel[blocks, block](means_cam, cov3d, view_rot, fx, fy, lim_x, lim_y, conics, radii)

        try:
            check(run, reference_conics, task1_inputs, sizes=(1, 45, 100), trials=1,
                  rtol=1e-4, atol=1e-5, name="conic_kernel")
        except CheckFailed as exc:
            msg = str(exc)
            hint = (" Output 1 is the radius: ceil(3 * sqrt(largest eigenvalue)), with "
                    "lambda = mid + sqrt(max(0.1, mid^2 - det)) after the 0.3 low-pass."
                    if "output 1" in msg else
                    " Output 0 is the conic (c/det, -b/det, a/det) of cov2d = T Sigma T^T with "
                    "T = J W, J using x/z and y/z clamped to +-lim, and 0.3 added to the diagonal.")
            raise CheckFailed(msg + hint) from None


# ------------------------------------------------------------------ task 2

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


def check_task2(ranges_kernel, block: int = 64) -> None:
    """Task 2: ``ranges_kernel(sorted_keys, ranges)``, launched one thread per key on zeroed ranges."""
    with task("Task 2: per-tile ranges of the sorted keys"):
        require(is_kernel(ranges_kernel), "pass the kernel itself (decorated with @gpulab.kernel)")
        require_own_kernel(ranges_kernel, K)

        def run(sorted_keys, n_tiles):
            ranges = torch.zeros(n_tiles, 2, dtype=torch.int32, device=DEV)
            ranges_kernel[(len(sorted_keys) + block - 1) // block, block](sorted_keys, ranges)
            return ranges

        try:
            check(run, reference_ranges, task2_inputs, sizes=(1, 2, 63, 64, 65, 300), trials=2,
                  writes_outputs=False, name="ranges_kernel")
        except CheckFailed as exc:
            raise CheckFailed(
                str(exc) + " Row t must be [start, end) with end exclusive: the index of the first "
                "key of the next tile (or the number of keys for the last run); empty tiles stay [0, 0]."
            ) from None


# ------------------------------------------------------------------ task 3

def task3_scene(height: int, width: int, gen: torch.Generator, n_random: int = 14, crafted: bool = True):
    """A 2D scene, binned like the pipeline does; returns the kernel's inputs in order:
    (ranges, gaussian_ids, means2d, conics, opacities, colors, background).

    ``crafted`` adds four nearly opaque Gaussians stacked around pixel (8, 8) (the pixels
    there saturate: early stop) and two small ones straddling the tile border at x = 16.
    """
    means, sig, opac = [], [], []
    if crafted:
        means += [[8.3, 8.2]] * 4 + [[15.8, 5.0], [16.3, 11.0]]
        sig += [[4.0, 3.0, 0.2]] * 4 + [[0.8, 1.0, 0.2], [1.0, 0.7, -0.1]]
        opac += [0.97] * 4 + [0.9, 0.8]
    m = torch.rand(n_random, 2, generator=gen) * torch.tensor([width, height])
    s = torch.cat([0.7 + 3 * torch.rand(n_random, 2, generator=gen), torch.rand(n_random, 1, generator=gen) - 0.5], 1)
    means2d = torch.cat([torch.tensor(means).reshape(-1, 2), m]).double()
    sig = torch.cat([torch.tensor(sig).reshape(-1, 3), s]).double()
    opacities = torch.cat([torch.tensor(opac), 0.3 + 0.7 * torch.rand(n_random, generator=gen)]).float()
    sx, sy, rho = sig[:, 0], sig[:, 1], sig[:, 2]
    cov2d = torch.stack([sx * sx, rho * sx * sy, rho * sx * sy, sy * sy], 1).reshape(-1, 2, 2) - T.LOW_PASS * torch.eye(2)
    conics, radius, _ = T.conic_and_radius(cov2d)
    depths = torch.rand(len(means2d), generator=gen) + 1.0
    if crafted:
        depths[:4] = torch.tensor([0.5, 0.6, 0.7, 0.8])       # the stack is in front
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


# the classic mistakes, for feedback: name -> (pixel centre, stop?, use-then-stop?, T first?)
VARIANTS = {
    "pixel centres at integer coordinates (missing +0.5)": dict(centre=0.0),
    "the transmittance is updated before it is used (weight = alpha * T_new)": dict(t_first=True),
    "no early stop (the loop never stops when T * (1 - alpha) < 1e-4)": dict(early_stop=False),
    "the saturating Gaussian is used before stopping (stop must come first)": dict(use_then_stop=True),
}


def composite_variant(ranges, gaussian_ids, means2d, conics, opacities, colors, background, height, width,
                      centre: float = 0.5, early_stop: bool = True, use_then_stop: bool = False,
                      t_first: bool = False):
    """A plain per-pixel compositor (tile by tile, one Gaussian at a time) with switchable
    mistakes; with the defaults it equals :func:`reference_composite`."""
    params = gaussian_params(means2d, conics, opacities).double().cpu()
    ranges, ids = ranges.cpu(), gaussian_ids.cpu().long()
    colors, background = colors.double().cpu(), background.double().cpu()
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
                g = int(ids[k])
                alpha = gaussian_alpha(params[g], px, py)
                live = ~done & (alpha >= ALPHA_MIN)
                test_T = Tr * (1 - alpha)
                stop = live & (test_T < T_MIN) & early_stop
                use = live if use_then_stop else live & ~stop
                w = alpha * (test_T if t_first else Tr)
                acc += torch.where(use, w, 0.0)[..., None] * colors[g]
                Tr = torch.where(use, test_T, Tr)
                done |= stop
            sl = (slice(ty * TILE, (ty + 1) * TILE), slice(tx * TILE, (tx + 1) * TILE))
            image[sl] = acc + Tr[..., None] * background
            trans[sl] = Tr
    return image[:height, :width].float().to(DEV), trans[:height, :width].float().to(DEV)


def _which_mistake(out, trans, inputs, height, width) -> str | None:
    for name, flags in VARIANTS.items():
        img_v, t_v = composite_variant(*inputs, height, width, **flags)
        if compare(out, img_v, 1e-4, 1e-5)[0] is None and compare(trans, t_v, 1e-4, 1e-6)[0] is None:
            return name
    return None


def check_task3(composite_kernel, seed: int | None = None) -> None:
    """Task 3: ``composite_kernel(ranges, gaussian_ids, means2d, conics, opacities, colors,
    background, image, transmittance)``, launched with one 16x16 block per tile."""
    with task("Task 3: per-pixel compositing with early stop"):
        require(is_kernel(composite_kernel), "pass the kernel itself (decorated with @gpulab.kernel)")
        gen = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**63)
        # (height, width): two tiles side by side, the right one 8 pixels wide; then 2 x 2 tiles
        for case, (height, width, crafted) in enumerate(((16, 24, True), (20, 18, False))):
            inputs = task3_scene(height, width, gen, crafted=crafted)
            ref_img, ref_t = reference_composite(*inputs, height, width)
            # outputs are windows of larger NaN buffers: a write past the image's edge lands
            # in the frame and is caught (on a GPU it would otherwise corrupt memory silently)
            image_buf = torch.full((height + 2, width + 2, 3), float("nan"), device=DEV)
            trans_buf = torch.full((height + 2, width + 2), float("nan"), device=DEV)
            image, trans = image_buf[1:-1, 1:-1], trans_buf[1:-1, 1:-1]
            tiles_x, tiles_y = T.tile_grid(width, height)
            with candidate_running("composite_kernel"):
                composite_kernel[(tiles_x, tiles_y), (TILE, TILE)](*inputs, image, trans)
            runtime.synchronize()
            frame = torch.ones(height + 2, width + 2, dtype=torch.bool, device=DEV)
            frame[1:-1, 1:-1] = False
            require(bool(torch.isnan(trans_buf[frame]).all() and torch.isnan(image_buf[frame]).all()),
                    f"{height}x{width} image: the kernel wrote outside the image; threads of a partial "
                    "tile whose pixel lies past the right or bottom edge must not write")
            problems = [p for p in (compare(image, ref_img, 1e-4, 1e-5)[0],
                                    compare(trans, ref_t, 1e-4, 1e-6)[0]) if p]
            if problems:
                what = "image" if compare(image, ref_img, 1e-4, 1e-5)[0] else "transmittance"
                mistake = _which_mistake(image, trans, inputs, height, width)
                where = f"{height}x{width} image, case {case + 1}: the {what} is wrong: {problems[0]}"
                if mistake:
                    require(False, f"{where}. It matches compositing where {mistake}.")
                require(False, where)
