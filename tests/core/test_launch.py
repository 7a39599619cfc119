"""The fast launcher: same results as numba's own launch, clear errors on misuse."""
import math

import pytest
import torch
from numba import cuda

import gpulab
from gpulab.launch import LaunchError


def _affine(x, out, scale, shift):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = x[i] * scale + shift


def _transpose_add(a, b, out, bump):
    r, c = cuda.grid(2)
    if r < out.shape[0] and c < out.shape[1]:
        out[r, c] = a[c, r] + b[r, c] + bump


def _count_true(flags, n, counter, enabled):
    i = cuda.grid(1)
    if enabled and i < n and flags[i] != 0:
        cuda.atomic.add(counter, 0, 1)


affine = gpulab.kernel(_affine)
transpose_add = gpulab.kernel(_transpose_add)
count_true = gpulab.kernel(_count_true)


@pytest.mark.parametrize("n", [1, 255, 257, 1000])
def test_float_scalars_and_sizes(n):
    x = gpulab.randn(n)
    out = torch.full_like(x, float("nan"))
    affine[math.ceil(n / 128), 128](x, out, 2.5, -1.0)
    torch.testing.assert_close(out, x * 2.5 - 1.0)


def test_float64_and_int_scalar():
    x = gpulab.randn(300, dtype=torch.float64)
    out = torch.full_like(x, float("nan"))
    affine[3, 128](x, out, 3, 0.25)   # an int scale next to a float shift
    torch.testing.assert_close(out, x * 3 + 0.25)


def test_2d_non_contiguous_view():
    a = gpulab.randn(37, 21)            # read transposed: a[c, r]
    b = gpulab.randn(50, 37 * 2)[:21, ::2]   # a strided, non-contiguous view
    assert not b.is_contiguous()
    out = torch.full((21, 37), float("nan"), device=gpulab.device)
    transpose_add[(2, 3), (16, 16)](a, b, out, 1.0)
    torch.testing.assert_close(out, a.T + b + 1.0)


def test_int_tensor_bool_scalar_and_atomics():
    flags = (gpulab.rand(999) > 0.5).to(torch.int32)
    counter = torch.zeros(1, dtype=torch.int32, device=gpulab.device)
    count_true[8, 128](flags, 999, counter, True)
    assert int(counter) == int(flags.sum())
    count_true[8, 128](flags, 999, counter, False)
    assert int(counter) == int(flags.sum())


def test_empty_grid_is_a_no_op():
    out = gpulab.zeros(4)
    affine[0, 128](gpulab.zeros(0), gpulab.zeros(0), 1.0, 1.0)
    assert torch.equal(out, gpulab.zeros(4))


def test_launch_configuration_errors():
    x = gpulab.zeros(8)
    with pytest.raises(LaunchError, match="launch"):
        affine(x, x, 1.0, 1.0)
    with pytest.raises(LaunchError, match=r"kernel\[grid, block\]"):
        affine[1]
    with pytest.raises(LaunchError, match="1024 threads"):
        affine[1, (64, 32)]
    with pytest.raises(LaunchError, match="negative"):
        affine[-1, 32]


def test_kernel_shows_its_source():
    assert "out[i] = x[i] * scale + shift" in affine.source


def test_wrong_device_is_refused():
    other = torch.zeros(4, device="cuda" if gpulab.SIMULATOR and torch.cuda.is_available() else "cpu")
    if other.device.type == gpulab.device.type:
        pytest.skip("needs a tensor on the other device")
    with pytest.raises(ValueError, match="device"):
        gpulab.as_kernel_array(other)


@pytest.mark.gpu
def test_cpu_tensor_on_gpu_gives_clear_error():
    with pytest.raises(ValueError, match="gpulab.device"):
        affine[1, 32](torch.zeros(4), torch.zeros(4), 1.0, 1.0)


@pytest.mark.gpu
def test_fast_path_matches_numba_launch_and_caches_plans():
    plain = cuda.jit(_affine)
    x = gpulab.randn(5000)
    out_fast = torch.full_like(x, float("nan"))
    out_numba = torch.full_like(x, float("nan"))
    affine[40, 128](x, out_fast, 0.5, 2.0)
    plain[40, 128](x, out_numba, 0.5, 2.0)
    torch.cuda.synchronize()
    assert torch.equal(out_fast, out_numba)
    before = len(affine._plans)
    affine[40, 128](x, out_fast, 0.5, 2.0)
    assert len(affine._plans) == before


@pytest.mark.gpu
def test_launch_on_a_side_stream():
    s = torch.cuda.Stream()
    x = gpulab.randn(4096)
    out = torch.full_like(x, float("nan"))
    with torch.cuda.stream(s):
        affine[32, 128](x, out, 2.0, 0.0)   # picks torch's current stream
    s.synchronize()
    torch.testing.assert_close(out, 2 * x)


def test_an_exercise_stub_kernel_raises_not_implemented():
    def stub(x):
        i = cuda.grid(1)
        # YOUR CODE HERE
        raise NotImplementedError('use cuda.grid(1) and a bounds check')

    k = gpulab.kernel(stub)
    assert k._stub == "use cuda.grid(1) and a bounds check"
    with pytest.raises(NotImplementedError, match="bounds check"):
        k[1, 32](gpulab.zeros(4))
        gpulab.synchronize()
    assert affine._stub is None
