"""gpulab.fusion: fused kernels against the unfused torch chain, known answers, bad input."""
import inspect
import math

import pytest
import torch

import gpulab
from gpulab import fusion as fk
from gpulab.launch import Kernel

TILE = fk.TILE
# sizes around the tile (and, with 2 blocks under the simulator, the grid-stride step)
SIZES = (1, 7, TILE - 1, TILE + 1, 5 * TILE + 3)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _flat_inputs(channels=1, dtype=torch.float32, scale=3.0):
    def make(n, gen):
        shape = (n, channels) if channels > 1 else (n,)
        if dtype == torch.uint8:
            return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
        return (torch.rand(shape, generator=gen) - 0.5) * 2 * scale
    return make


def _image(h, w, channels, gen, dtype=torch.float32):
    shape = (h, w, channels) if channels > 1 else (h, w)
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8).to(gpulab.device)
    return torch.rand(shape, generator=gen).to(gpulab.device)


@pytest.fixture
def launches(monkeypatch):
    """Counts kernel launches (of any gpulab kernel) while a test runs."""
    count = {"n": 0}
    original = Kernel.launch

    def counting(self, *args, **kwargs):
        count["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Kernel, "launch", counting)
    return count


CHAINS = {
    "affine-relu": [fk.affine(2.0, -1.0), fk.relu()],
    "anchors-8": [fk.affine(1.5, 0.25), fk.relu(), fk.clamp(-1.0, 2.0), fk.sigmoid()] * 2,
    "mixed": [fk.add(0.5), fk.mul(-1.25), fk.leaky_relu(0.1), fk.tanh(), fk.square(), fk.absolute()],
}


@pytest.mark.parametrize("name", CHAINS)
def test_map_chain_matches_torch(name):
    pipe = fk.Pipeline(*CHAINS[name])
    gpulab.check(pipe, pipe.reference, _flat_inputs(), sizes=SIZES, trials=1, writes_outputs=False)


def test_rgb_chains_match_torch():
    yuv = fk.Pipeline(fk.normalize(MEAN, STD), fk.rgb_to_yuv(), fk.clamp(-2.0, 2.0), channels=3)
    gray = fk.Pipeline(fk.normalize(MEAN, STD), fk.rgb_to_gray(), fk.sigmoid(), channels=3)
    for pipe in (yuv, gray):
        gpulab.check(pipe, pipe.reference, _flat_inputs(3, scale=1.0), sizes=(1, TILE + 5), trials=1,
                     writes_outputs=False)


def test_uint8_in_and_out_is_exact():
    pipe = fk.Pipeline(fk.to_float32(), fk.mul(2.0), fk.add(-100.0), fk.to_uint8(), channels=3)
    x = torch.randint(0, 256, (37, 3), dtype=torch.uint8).to(gpulab.device)
    y = pipe(x)
    assert y.dtype == torch.uint8 and y.shape == (37, 3)
    assert torch.equal(y, pipe.reference(x))
    assert torch.equal(y, (x.int() * 2 - 100).clamp(0, 255).to(torch.uint8))  # what the chain means


def test_any_shape_and_non_contiguous_input():
    pipe = fk.Pipeline(fk.affine(0.5, 1.0), fk.sigmoid())
    x = torch.randn(11, 13).to(gpulab.device).t()          # a transposed (non-contiguous) view
    y = pipe(x)
    assert y.shape == (13, 11)
    torch.testing.assert_close(y, torch.sigmoid(x * 0.5 + 1.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_crop_and_resize_match_torch(channels, dtype):
    gen = torch.Generator().manual_seed(channels)
    x = _image(13, 17, channels, gen, dtype)
    pipes = [fk.Pipeline(fk.crop(2, 3, 9, 11), channels=channels),
             fk.Pipeline(fk.resize(5, 7), channels=channels),               # down
             fk.Pipeline(fk.crop(1, 4, 6, 5), fk.resize(11, 9), channels=channels)]  # up
    for pipe in pipes:
        if dtype == torch.uint8 and pipe.maps == [] and pipe.reads[-1].name == "crop":
            assert torch.equal(pipe(x), pipe.reference(x))
            continue
        y, ref = pipe(x), pipe.reference(x)
        assert y.shape == ref.shape and y.dtype == ref.dtype == torch.float32
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-4)


def test_resize_then_ops_and_per_call_crop():
    pipe = fk.Pipeline(fk.crop(0, 0, 8, 8), fk.resize(6, 10), fk.normalize(MEAN, STD), fk.rgb_to_gray(),
                       channels=3)
    x = torch.rand(20, 30, 3).to(gpulab.device)
    for crop in [(3, 5, 12, 20), (0, 0, 20, 30), (19, 29, 1, 1)]:
        torch.testing.assert_close(pipe(x, crop=crop), pipe.reference(x, crop=crop), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("reduction", [fk.reduce_sum, fk.reduce_mean, fk.reduce_max, fk.reduce_min])
def test_reductions_match_torch(reduction):
    pipe = fk.Pipeline(fk.affine(1.5, 0.5), fk.tanh(), reduction())
    gpulab.check(pipe, pipe.reference, _flat_inputs(), sizes=(1, TILE + 1, 5 * TILE + 3), trials=1,
                 writes_outputs=False, rtol=1e-4, atol=1e-4)


def test_rgb_reduction_after_resize():
    pipe = fk.Pipeline(fk.crop(1, 1, 10, 12), fk.resize(7, 9), fk.rgb_to_yuv(), fk.reduce_mean(), channels=3)
    x = torch.rand(12, 15, 3).to(gpulab.device)
    y = pipe(x)
    assert y.shape == (3,)
    torch.testing.assert_close(y, pipe.reference(x), rtol=1e-4, atol=1e-5)


def test_one_launch_per_chain_and_cache_per_signature(launches):
    a = fk.Pipeline(fk.affine(2.0, 1.0), fk.relu(), fk.clamp(0.0, 3.0))
    b = fk.Pipeline(fk.affine(-1.0, 0.5), fk.relu(), fk.clamp(-1.0, 1.0))   # same ops, new parameters
    x = torch.randn(3 * TILE + 1).to(gpulab.device)
    a(x)
    assert launches["n"] == 1, "a chain of three ops must be one kernel launch"
    assert a.kernel() is b.kernel(), "chains that differ only in parameter values share a compiled kernel"
    torch.testing.assert_close(b(x), torch.clamp(torch.relu(x * -1.0 + 0.5), -1.0, 1.0))
    assert fk.Pipeline(fk.affine(2.0, 1.0), fk.relu()).kernel() is not a.kernel()
    assert a.kernel(torch.float32, batched=True) is not a.kernel()


def test_fastmath_is_a_separate_kernel_that_still_matches():
    precise = fk.Pipeline(*CHAINS["anchors-8"])
    fast = fk.Pipeline(*CHAINS["anchors-8"], fastmath=True)
    assert fast.kernel() is not precise.kernel()
    assert "@kernel(fastmath=True)" in fast.source() and "fastmath" not in precise.source()
    assert fast.source().count("fastmath=True") == fast.source().count("@cuda.jit") + 1
    gpulab.check(fast, precise.reference, _flat_inputs(), sizes=(TILE + 3,), trials=1, writes_outputs=False,
                 rtol=1e-4, atol=1e-5)


def test_generated_source_is_one_readable_kernel():
    pipe = fk.Pipeline(fk.affine(2.0, -1.0), fk.relu(), fk.reduce_sum())
    src = pipe.source()
    assert src.count("@kernel") == 1
    assert "v1 = v0 * p[0] + p[1]" in src and "v2 = max(v1, float32(0.0))" in src
    assert "cuda.atomic.add" in src and "cuda.syncthreads()" in src
    compile(src, "<generated>", "exec")
    # the source is registered, so gpulab.show_source and tracebacks can show it
    assert "def fused_affine_relu_sum" in inspect.getsource(pipe.kernel().py_func)


# ------------------------------------------------------------------ known answers

def test_known_answers():
    x = torch.tensor([-1.0, 0.0, 0.25, 0.5, 1.0, 3.0], device=gpulab.device)
    y = fk.Pipeline(fk.affine(2.0, -1.0), fk.relu(), fk.clamp(0.0, 2.0))(x)
    assert y.tolist() == [0.0, 0.0, 0.0, 0.0, 1.0, 2.0]
    red = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], device=gpulab.device)
    gray = fk.Pipeline(fk.rgb_to_gray(), channels=3)(red)
    torch.testing.assert_close(gray.cpu(), torch.tensor(fk.GRAY_WEIGHTS), rtol=0, atol=1e-7)
    assert fk.Pipeline(fk.reduce_sum())(torch.ones(1000, device=gpulab.device)).item() == 1000.0
    assert fk.Pipeline(fk.reduce_max())(torch.arange(777.0, device=gpulab.device)).item() == 776.0
    img = torch.arange(30.0, device=gpulab.device).reshape(5, 6)
    assert torch.equal(fk.Pipeline(fk.crop(1, 2, 3, 2))(img), img[1:4, 2:4])
    const = fk.Pipeline(fk.resize(7, 3))(torch.full((4, 5), 2.5, device=gpulab.device))
    assert torch.equal(const.cpu(), torch.full((7, 3), 2.5))     # interpolating a constant gives it back
    # 2x downscale at align_corners=False averages each 2x2 block
    torch.testing.assert_close(fk.Pipeline(fk.resize(2, 3))(img[:4]),
                               img[:4].reshape(2, 2, 3, 2).mean((1, 3)))


# ------------------------------------------------------------- horizontal fusion

def _batch(n_items, channels, gen, dtype=torch.float32):
    images, crops = [], []
    for _ in range(n_items):
        h, w = (int(v) for v in torch.randint(3, 20, (2,), generator=gen))
        images.append(_image(h, w, channels, gen, dtype))
        top, left = int(torch.randint(0, h - 1, (1,), generator=gen)), int(torch.randint(0, w - 1, (1,), generator=gen))
        crops.append((top, left, h - top, w - left))
    return images, crops


def test_batch_of_different_sizes_is_one_launch(launches):
    gen = torch.Generator().manual_seed(3)
    images, crops = _batch(5, 3, gen, torch.uint8)
    pipe = fk.Pipeline(fk.crop(0, 0, 1, 1), fk.resize(6, 5), fk.normalize((127.0,) * 3, (64.0,) * 3),
                       fk.rgb_to_gray(), channels=3)
    batch = pipe.pack(images, crops)
    launches["n"] = 0
    outs = pipe.run_batch(batch)
    assert launches["n"] == 1
    for out, ref in zip(outs, pipe.reference_batch(images, crops)):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)


def test_batch_flat_items_and_reduction():
    gen = torch.Generator().manual_seed(4)
    sizes = [1, TILE, TILE + 1, 3, 2 * TILE + 7]
    items = [torch.randn(n, generator=gen).to(gpulab.device) for n in sizes]
    pipe = fk.Pipeline(fk.affine(0.5, -0.25), fk.sigmoid())
    for out, x in zip(pipe.batch(items), items):
        assert out.shape == x.shape
        torch.testing.assert_close(out, torch.sigmoid(x * 0.5 - 0.25), rtol=1e-5, atol=1e-6)
    summed = fk.Pipeline(fk.square(), fk.reduce_sum()).batch(items)
    assert summed.shape == (len(items), 1)
    torch.testing.assert_close(summed[:, 0], torch.stack([(x * x).sum() for x in items]), rtol=1e-4, atol=1e-5)
    # an empty item is allowed for maps (it just has no tiles)
    outs = pipe.batch([torch.empty(0, device=gpulab.device), items[1]])
    assert outs[0].shape == (0,) and outs[1].shape == items[1].shape


# --------------------------------------------------------------------- bad input

@pytest.mark.parametrize("build, error, words", [
    (lambda: fk.Pipeline(fk.relu(), fk.crop(0, 0, 2, 2)), ValueError, "must come first"),
    (lambda: fk.Pipeline(fk.resize(2, 2), fk.crop(0, 0, 2, 2)), ValueError, "crop followed by"),
    (lambda: fk.Pipeline(fk.reduce_sum(), fk.relu()), ValueError, "last operation"),
    (lambda: fk.Pipeline(fk.rgb_to_gray()), ValueError, "3-channel"),
    (lambda: fk.Pipeline(fk.rgb_to_gray(), fk.rgb_to_gray(), channels=3), ValueError, "3-channel"),
    (lambda: fk.Pipeline(fk.relu), TypeError, "parentheses"),
    (lambda: fk.Pipeline(fk.relu(), channels=0), ValueError, "channels"),
    (lambda: fk.clamp(1.0, 0.0), ValueError, "low <= high"),
    (lambda: fk.crop(0, 0, 0, 3), ValueError, "height, width >= 1"),
    (lambda: fk.normalize((0.5,), (0.0,)), ValueError, "non-zero"),
])
def test_bad_chains_are_refused(build, error, words):
    with pytest.raises(error, match=words):
        build()


@pytest.mark.parametrize("pipe, x, error, words", [
    (fk.Pipeline(fk.relu()), [1.0, 2.0], TypeError, "torch.Tensor"),
    (fk.Pipeline(fk.relu()), torch.ones(4, dtype=torch.float64, device=gpulab.device), TypeError, "float32 or uint8"),
    (fk.Pipeline(fk.relu()), torch.ones(4, dtype=torch.uint8, device=gpulab.device), TypeError, "to_float32"),
    (fk.Pipeline(fk.rgb_to_gray(), channels=3), torch.ones(4, 4, device=gpulab.device), ValueError, "3 channels"),
    (fk.Pipeline(fk.crop(0, 0, 2, 2)), torch.ones(8, device=gpulab.device), ValueError, r"shape \(H, W\)"),
    (fk.Pipeline(fk.crop(3, 0, 2, 2)), torch.ones(4, 4, device=gpulab.device), ValueError, "does not fit"),
    (fk.Pipeline(fk.reduce_sum()), torch.ones(0, device=gpulab.device), ValueError, "empty"),
])
def test_bad_inputs_get_clear_errors(pipe, x, error, words):
    with pytest.raises(error, match=words):
        pipe(x)


def test_bad_batches_get_clear_errors():
    pipe = fk.Pipeline(fk.crop(0, 0, 2, 2))
    with pytest.raises(ValueError, match="2 crop rectangles"):
        pipe.pack([torch.ones(4, 4, device=gpulab.device)], crops=[(0, 0, 1, 1), (0, 0, 1, 1)])
    with pytest.raises(ValueError, match="item 1 .*does not fit|does not fit"):
        pipe.pack([torch.ones(4, 4, device=gpulab.device), torch.ones(2, 2, device=gpulab.device)],
                  crops=[(0, 0, 3, 3), (0, 0, 3, 3)])
    with pytest.raises(ValueError, match="non-empty list"):
        pipe.pack([])
    with pytest.raises(ValueError, match="no crop"):
        fk.Pipeline(fk.resize(2, 2))(torch.ones(4, 4, device=gpulab.device), crop=(0, 0, 2, 2))
    with pytest.raises(TypeError, match="Batch"):
        pipe.run_batch([torch.ones(4, 4, device=gpulab.device)])


# ------------------------------------------------------------------- GPU only

@pytest.mark.gpu
def test_gpu_every_op_compiles_and_matches_at_size():
    """The simulator does not type-check like the compiler: run every op on the GPU."""
    n = (1 << 20) + 13
    # every map op in two kernels (each compile costs seconds on a busy GPU machine)
    chains = [fk.Pipeline(*CHAINS["anchors-8"] * 2, *CHAINS["mixed"]),
              fk.Pipeline(fk.normalize(MEAN, STD), fk.rgb_to_yuv(), fk.rgb_to_gray(), channels=3)]
    for pipe in chains:
        gpulab.check(pipe, pipe.reference, _flat_inputs(pipe.channels, scale=1.0), sizes=(n,), trials=1,
                     writes_outputs=False, rtol=1e-5, atol=1e-5)
    fast = fk.Pipeline(*CHAINS["anchors-8"] * 2, fastmath=True)
    gpulab.check(fast, fast.reference, _flat_inputs(), sizes=(n,), trials=1, writes_outputs=False,
                 rtol=1e-4, atol=1e-5)
    u8 = fk.Pipeline(fk.to_float32(), fk.mul(2.0), fk.add(-100.0), fk.to_uint8(), channels=3)
    x = torch.randint(0, 256, (n, 3), dtype=torch.uint8, device=gpulab.device)
    assert torch.equal(u8(x), u8.reference(x))


@pytest.mark.gpu
@pytest.mark.parametrize("reduction", [fk.reduce_sum, fk.reduce_mean, fk.reduce_max, fk.reduce_min])
def test_gpu_reductions_at_size(reduction):
    pipe = fk.Pipeline(fk.affine(1.5, 0.5), fk.tanh(), reduction())
    x = torch.rand(1 << 22, device=gpulab.device) - 0.5
    torch.testing.assert_close(pipe(x), pipe.reference(x), rtol=1e-4, atol=1e-2)
    if reduction in (fk.reduce_sum, fk.reduce_max):   # RGB: one additive and one order reduction
        rgb = fk.Pipeline(fk.normalize(MEAN, STD), fk.rgb_to_yuv(), reduction(), channels=3)
        y = torch.rand(123457, 3, device=gpulab.device)
        torch.testing.assert_close(rgb(y), rgb.reference(y), rtol=1e-4, atol=1e-2)


@pytest.mark.gpu
def test_gpu_image_batch_crop_resize_normalize():
    gen = torch.Generator().manual_seed(7)
    images, crops = [], []
    for _ in range(64):
        h, w = (int(v) for v in torch.randint(40, 300, (2,), generator=gen))
        images.append(torch.randint(0, 256, (h, w, 3), generator=gen, dtype=torch.uint8).to(gpulab.device))
        crops.append((h // 7, w // 5, h - h // 7 - 1, w - w // 5))
    pipe = fk.Pipeline(fk.crop(0, 0, 1, 1), fk.resize(64, 64), fk.mul(1 / 255), fk.normalize(MEAN, STD),
                       channels=3)
    outs = pipe.batch(images, crops)
    for out, ref in zip(outs, pipe.reference_batch(images, crops)):
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    for k in (0, 17, 63):   # the per-item path agrees with the batch
        torch.testing.assert_close(pipe(images[k], crop=crops[k]), outs[k])
