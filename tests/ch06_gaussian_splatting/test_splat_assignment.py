"""Chapter 06 assignment checks: the right answers pass, each classic wrong answer fails.

Wrong answers are the solution's source with one planted change, so each test shows
exactly which bug the check must catch.
"""
import pytest
import torch

import gpulab
from gpulab.course.feedback import TaskFailed
from gpulab.splat import assignment as A

# A planted wrong kernel may read or write out of bounds. On a real GPU that can leave the
# process's CUDA context broken (every later CUDA call fails), so these run under the
# simulator only: what they test is the check's logic, which is the same on both.
planted_bugs_simulator_only = pytest.mark.skipif(
    gpulab.ON_GPU, reason="a planted out-of-bounds kernel can break the CUDA context on a GPU")


HEADER = "import math\nfrom numba import cuda\nimport gpulab\n"

CONIC = '''
@gpulab.kernel
def conic_kernel(means_cam, cov3d, view_rot, fx, fy, lim_x, lim_y, conics, radii):
    i = cuda.grid(1)
    if i >= means_cam.shape[0]:
        return
    x, y, z = means_cam[i, 0], means_cam[i, 1], means_cam[i, 2]
    tx = min(lim_x, max(-lim_x, x / z)) * z
    ty = min(lim_y, max(-lim_y, y / z)) * z
    j00, j02 = fx / z, -fx * tx / (z * z)
    j11, j12 = fy / z, -fy * ty / (z * z)
    a = b = c = 0.0
    for k in range(3):
        t0k = j00 * view_rot[0, k] + j02 * view_rot[2, k]
        t1k = j11 * view_rot[1, k] + j12 * view_rot[2, k]
        for l in range(3):
            t0l = j00 * view_rot[0, l] + j02 * view_rot[2, l]
            t1l = j11 * view_rot[1, l] + j12 * view_rot[2, l]
            s = cov3d[i, k, l]
            a += t0k * s * t0l
            b += t0k * s * t1l
            c += t1k * s * t1l
    a += 0.3
    c += 0.3
    det = a * c - b * b
    conics[i, 0] = c / det
    conics[i, 1] = -b / det
    conics[i, 2] = a / det
    mid = 0.5 * (a + c)
    lam = mid + math.sqrt(max(0.1, mid * mid - det))
    radii[i] = math.ceil(3.0 * math.sqrt(lam))
'''

RANGES = '''
@gpulab.kernel
def ranges_kernel(sorted_keys, ranges):
    i = cuda.grid(1)
    n = sorted_keys.shape[0]
    if i >= n:
        return
    tile = sorted_keys[i] >> 32
    if i > 0:
        prev = sorted_keys[i - 1] >> 32
        if tile != prev:
            ranges[prev, 1] = i
            ranges[tile, 0] = i
    if i == n - 1:
        ranges[tile, 1] = n
'''

COMPOSITE = '''
@gpulab.kernel
def composite_kernel(ranges, gaussian_ids, means2d, conics, opacities, colors, background, image, transmittance):
    height, width = image.shape[0], image.shape[1]
    x = cuda.blockIdx.x * 16 + cuda.threadIdx.x
    y = cuda.blockIdx.y * 16 + cuda.threadIdx.y
    if x >= width or y >= height:
        return
    tile = cuda.blockIdx.y * cuda.gridDim.x + cuda.blockIdx.x
    px = x + 0.5
    py = y + 0.5
    T = 1.0
    r = g = b = 0.0
    for k in range(ranges[tile, 0], ranges[tile, 1]):
        gid = gaussian_ids[k]
        dx = means2d[gid, 0] - px
        dy = means2d[gid, 1] - py
        power = -0.5 * (conics[gid, 0] * dx * dx + conics[gid, 2] * dy * dy) - conics[gid, 1] * dx * dy
        if power > 0.0:
            continue
        alpha = min(0.99, opacities[gid] * math.exp(power))
        if alpha < 1.0 / 255.0:
            continue
        test_T = T * (1.0 - alpha)
        if test_T < 1e-4:
            break
        w = alpha * T
        r += colors[gid, 0] * w
        g += colors[gid, 1] * w
        b += colors[gid, 2] * w
        T = test_T
    image[y, x, 0] = r + T * background[0]
    image[y, x, 1] = g + T * background[1]
    image[y, x, 2] = b + T * background[2]
    transmittance[y, x] = T
'''


def build(source: str, name: str, *changes):
    for old, new in changes:
        assert old in source, f"planted change not applicable: {old!r}"
        source = source.replace(old, new)
    namespace = {}
    exec(HEADER + source, namespace)
    return namespace[name]


def test_right_answers_pass():
    A.check_task1(build(CONIC, "conic_kernel"))
    A.check_task2(build(RANGES, "ranges_kernel"))
    A.check_task3(build(COMPOSITE, "composite_kernel"), seed=0)


CONIC_BUGS = {
    "no low-pass": [("    a += 0.3\n    c += 0.3\n", "")],
    "no field-of-view clamp": [("min(lim_x, max(-lim_x, x / z)) * z", "x"), ("min(lim_y, max(-lim_y, y / z)) * z", "y")],
    "conic off-diagonal sign": [("conics[i, 1] = -b / det", "conics[i, 1] = b / det")],
    "radius from the smaller eigenvalue": [("lam = mid + math.sqrt", "lam = mid - math.sqrt")],
    "radius truncated, not ceiled": [("math.ceil(3.0 * math.sqrt(lam))", "int(3.0 * math.sqrt(lam))")],
    "view rotation ignored": [("j00 * view_rot[0, k] + j02 * view_rot[2, k]", "j00 * (k == 0) + j02 * (k == 2)"),
                              ("j11 * view_rot[1, k] + j12 * view_rot[2, k]", "j11 * (k == 1) + j12 * (k == 2)"),
                              ("j00 * view_rot[0, l] + j02 * view_rot[2, l]", "j00 * (l == 0) + j02 * (l == 2)"),
                              ("j11 * view_rot[1, l] + j12 * view_rot[2, l]", "j11 * (l == 1) + j12 * (l == 2)")],
}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # the no-low-pass kernel divides by det = 0
@pytest.mark.parametrize("bug", list(CONIC_BUGS))
def test_task1_rejects(bug):
    with pytest.raises(TaskFailed, match="Task 1"):
        A.check_task1(build(CONIC, "conic_kernel", *CONIC_BUGS[bug]))


RANGES_BUGS = {
    "inclusive end (off by one at the tile border)": [("ranges[prev, 1] = i\n", "ranges[prev, 1] = i - 1\n")],
    "end one past the border": [("ranges[prev, 1] = i\n", "ranges[prev, 1] = i + 1\n")],
    "start one past the border": [("ranges[tile, 0] = i\n", "ranges[tile, 0] = i + 1\n")],
    "last run never closed": [("    if i == n - 1:\n        ranges[tile, 1] = n\n", "")],
    "compares whole keys, not tiles": [("prev = sorted_keys[i - 1] >> 32", "prev = sorted_keys[i - 1]"),
                                       ("tile = sorted_keys[i] >> 32", "tile = sorted_keys[i]")],
}


@planted_bugs_simulator_only
@pytest.mark.parametrize("bug", list(RANGES_BUGS))
def test_task2_rejects(bug):
    with pytest.raises(TaskFailed, match="Task 2"):
        A.check_task2(build(RANGES, "ranges_kernel", *RANGES_BUGS[bug]))


COMPOSITE_BUGS = {
    "missing +0.5 pixel centre": ([("px = x + 0.5\n    py = y + 0.5", "px = x * 1.0\n    py = y * 1.0")], "missing \\+0.5"),
    "transmittance updated before use": ([("        w = alpha * T\n", "        T = test_T\n        w = alpha * T\n")],
                                         "updated before it is used"),
    "no early stop": ([("        if test_T < 1e-4:\n            break\n", "")], "no early stop"),
    "stops after using the saturating Gaussian": (
        [("        if test_T < 1e-4:\n            break\n", ""),
         ("        T = test_T\n", "        T = test_T\n        if test_T < 1e-4:\n            break\n")],
        "used before stopping"),
    "last column never written (off by one at the border)": ([("if x >= width or", "if x >= width - 1 or")], "never written"),
    "writes past the right edge (bounds off by one)": ([("if x >= width or", "if x > width or")], "outside the image|IndexError"),
}


@planted_bugs_simulator_only
@pytest.mark.parametrize("bug", list(COMPOSITE_BUGS))
def test_task3_rejects(bug):
    changes, message = COMPOSITE_BUGS[bug]
    with pytest.raises(TaskFailed, match=message):
        A.check_task3(build(COMPOSITE, "composite_kernel", *changes), seed=1)


@planted_bugs_simulator_only
def test_task3_scene_separates_every_mistake():
    gen = torch.Generator().manual_seed(3)
    inputs = A.task3_scene(16, 24, gen)
    ref_img, ref_t = A.reference_composite(*inputs, 16, 24)
    img, t = A.composite_variant(*inputs, 16, 24)
    torch.testing.assert_close(img, ref_img, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(t, ref_t, atol=1e-7, rtol=1e-5)
    for name, flags in A.VARIANTS.items():
        v_img, v_t = A.composite_variant(*inputs, 16, 24, **flags)
        assert (v_img - ref_img).abs().max() > 1e-3 or (v_t - ref_t).abs().max() > 1e-5, name


def test_checks_refuse_non_kernels_and_reference_calls():
    with pytest.raises(TaskFailed, match="kernel itself"):
        A.check_task1(lambda *a: None)

    @gpulab.kernel
    def cheating(sorted_keys, ranges):
        ranges[:, :] = A.reference_ranges(sorted_keys, ranges.shape[0])

    if gpulab.ON_GPU:   # a compiled kernel cannot call Python at all
        with pytest.raises(TaskFailed):
            A.check_task2(cheating)
    else:
        with pytest.raises(TaskFailed, match="reference"):
            A.check_task2(cheating)


def test_task2_refuses_the_package_kernel():
    from gpulab.splat import kernels as K
    with pytest.raises(TaskFailed, match="package's own"):
        A.check_task2(K.tile_ranges_kernel)

