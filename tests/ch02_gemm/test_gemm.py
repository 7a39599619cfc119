"""The ladder of GEMM kernels against torch (float64) on random ragged shapes, K = 1,
beta != 0 and beta == 0 with a NaN c; the tiny simulator tilings here, the full ones on a GPU."""
import pytest
import torch

import gpulab
from gpulab.gemm import kernels as K, torch_impl as T


def _inputs(m, n, k, gen, beta):
    a = torch.randn(m, k, generator=gen).to(gpulab.device)
    b = torch.randn(k, n, generator=gen).to(gpulab.device)
    c = (torch.randn(m, n, generator=gen) if beta != 0 else torch.full((m, n), float("nan"))).to(gpulab.device)
    return a, b, c


def _expected(a, b, c, alpha, beta):
    out = alpha * (a.double() @ b.double())
    return out + beta * c.double() if beta != 0 else out


# one case per kernel under the simulator (a simulated thread costs ~1 ms): ragged edges
# everywhere, K = 1 for one, more than one K step and more than one block for the others
CASES = [("naive", (6, 5, 3), 0.0), ("coalesced", (5, 9, 1), -0.5), ("tiled", (7, 5, 6), 1.5),
         ("regtile1d", (9, 10, 5), -1.0), ("regtile2d", (17, 18, 9), 0.0), ("double_buffered", (17, 5, 13), 2.0)]


@pytest.mark.parametrize("name,shape,beta", CASES, ids=[c[0] for c in CASES])
def test_kernel_matches_torch(name, shape, beta):
    gen = torch.Generator().manual_seed(hash(name) % 1000)
    a, b, c = _inputs(*shape, gen, beta)
    out = K.gemm(a, b, c, alpha=0.75, beta=beta, kernel=name, tile=4 if name == "tiled" else 16)
    torch.testing.assert_close(out.double().cpu(), _expected(a, b, c, 0.75, beta).cpu(), rtol=1e-5, atol=1e-5)


def test_twins_agree_and_torch_twin_skips_c_when_beta_is_zero():
    gen = torch.Generator().manual_seed(3)
    a, b, c = _inputs(5, 4, 3, gen, 0.0)
    ours = K.gemm(a, b, c, alpha=2.0, beta=0.0, kernel="coalesced")
    spec = T.gemm(a, b, c, alpha=2.0, beta=0.0)
    assert not torch.isnan(spec).any()
    torch.testing.assert_close(ours, spec, rtol=1e-5, atol=1e-5)


def test_tiled_kernel_for_odd_t_and_empty_k():
    gen = torch.Generator().manual_seed(4)
    a, b, c = _inputs(4, 3, 0, gen, 1.0)
    out = K.gemm(a, b, c, alpha=1.0, beta=-2.0, kernel="tiled", tile=3)   # K = 0: out = beta * c
    torch.testing.assert_close(out, -2.0 * c)


def test_empty_output_and_bad_inputs():
    z = torch.zeros(0, 3, device=gpulab.device)
    assert K.gemm(z, torch.zeros(3, 2, device=gpulab.device)).shape == (0, 2)
    a, b = torch.zeros(2, 3, device=gpulab.device), torch.zeros(3, 4, device=gpulab.device)
    with pytest.raises(TypeError, match="float32"):
        K.gemm(a.double(), b)
    with pytest.raises(ValueError, match="a's columns must equal b's rows"):
        K.gemm(a, b.t())
    with pytest.raises(ValueError, match="c is None"):
        T.gemm(a, b, beta=1.0)
    with pytest.raises(ValueError, match=r"c must be \(2, 4\)"):
        K.gemm(a, b, torch.zeros(4, 2, device=gpulab.device), beta=1.0)
    with pytest.raises(ValueError, match="kernel must be one of"):
        K.gemm(a, b, kernel="cublas")
    with pytest.raises(ValueError, match="T must be an int from 1 to 32"):
        K.tiled_kernel(33)


def test_register_tilings_are_checked():
    from gpulab.gemm.tiling import RegisterTiling
    with pytest.raises(ValueError, match="power-of-two"):
        RegisterTiling(bm=12, bn=16, bk=4, tm=4, tn=4)
    with pytest.raises(ValueError, match="share"):
        RegisterTiling(bm=4, bn=4, bk=1, tm=1, tn=1)
    cfg = RegisterTiling(bm=128, bn=128, bk=8, tm=8, tn=8)
    assert (cfg.threads, cfg.a_loads, cfg.b_loads, cfg.shared_bytes) == (256, 4, 4, 4 * 8 * (132 + 128))


def test_chapter_11_uses_the_core():
    from gpulab.moe import kernels as moe
    assert moe.TILING == K.REGTILE_2D, "chapter 11's grouped GEMM and chapter 02's 2D kernel share one tiling"
    assert "_core.multiply" in moe.grouped_gemm_kernel.source


def test_numba_can_type_the_core():
    """Kernels call ``core.multiply(...)``: numba's compiler must type ``core`` (the
    simulator runs Python and would not notice; a SimpleNamespace failed on the GPU)."""
    from numba import types
    from numba.core.registry import cpu_target

    from gpulab.gemm.tiling import make_core
    core = make_core(K.REGTILE_2D)
    # the typing context resolves a global's type as numba's compiler does
    assert isinstance(cpu_target.typing_context.resolve_value_type(core), types.Module)
    assert core.cfg == K.REGTILE_2D and callable(core.multiply)


@pytest.mark.gpu
@pytest.mark.parametrize("name", K.KERNELS)
def test_gpu_full_size_kernels_match_torch(name):
    gen = torch.Generator().manual_seed(11)
    a, b, c = _inputs(1000, 1030, 777, gen, -0.5)
    out = K.gemm(a, b, c, alpha=1.25, beta=-0.5, kernel=name, tile=16)
    torch.testing.assert_close(out.double(), _expected(a, b, c, 1.25, -0.5), rtol=1e-4, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("tile", [1, 7, 16, 32])
def test_gpu_tiled_kernel_any_t(tile):
    gen = torch.Generator().manual_seed(tile)
    a, b, c = _inputs(257, 130, 65, gen, 0.0)
    out = K.gemm(a, b, c, alpha=1.0, beta=0.0, kernel="tiled", tile=tile)
    torch.testing.assert_close(out.double(), _expected(a, b, c, 1.0, 0.0), rtol=1e-4, atol=1e-3)


@pytest.mark.gpu
def test_gpu_resources_of_the_ladder():
    from gpulab.gemm import resources as R
    a = torch.zeros(256, 256, device=gpulab.device)
    fn, _, _, grouped = K.launch_config("regtile2d", 256, 256)
    args = (a, a.view(1, 256, 256), a, 1.0, 0.0, a)
    regs = R.get_regs_per_thread(fn, args)
    assert 32 <= regs <= 255
    assert R.get_shared_mem_per_block(fn, args) == K.REGTILE_2D.shared_bytes


def _ptx_counts(ptx: str) -> dict:
    """Instructions of a PTX listing by opcode (what the move must not change)."""
    counts = {}
    for line in ptx.splitlines():
        word = line.strip().split(" ")[0].split("\t")[0]
        if word and not word.startswith(("//", ".", "{", "}", "$", "@")) and not word.endswith(":"):
            counts[word] = counts.get(word, 0) + 1
    return counts


@pytest.mark.gpu
def test_gpu_chapter_11_kernel_compiles_as_before_the_move():
    """The grouped GEMM built on the core compiles to the loads, stores, barriers and FMAs
    of the kernel the H200 timed before the move (kept verbatim in
    moe_kernel_before_move.py), in no more instructions (the core's int32 k counter drops a
    wrap-around fix-up: sm_90 SASS 87 instructions a k step against 103)."""
    import importlib.util
    from pathlib import Path

    from gpulab.moe import kernels as moe
    spec = importlib.util.spec_from_file_location("moe_before", Path(__file__).with_name("moe_kernel_before_move.py"))
    before = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(before)
    assert (before.BM, before.BN, before.BK, before.TM, before.TN) == (moe.BM, moe.BN, moe.BK, moe.TM, moe.TN)
    from numba import types
    f32_2d, i32 = types.float32[:, ::1], types.int32[::1]
    sig = (f32_2d, types.float32[:, :, ::1], i32, i32, i32, types.boolean, f32_2d)
    counts = {}
    for label, k in (("before", before.grouped_gemm_kernel), ("now", moe.grouped_gemm_kernel)):
        k.dispatcher.compile(sig)
        counts[label] = _ptx_counts(k.dispatcher.inspect_asm(sig))
    for op in ("fma.rn.f32", "ld.shared.f32", "st.shared.f32", "bar.sync", "ld.global.f32", "ld.local.f32",
               "st.local.f32"):   # local: the micro-tile stayed in registers (the inlining worked)
        assert counts["now"].get(op, 0) == counts["before"].get(op, 0), (op, counts)
    total_before, total_now = sum(counts["before"].values()), sum(counts["now"].values())
    assert total_now <= total_before, (total_before, total_now)
