"""Schedules (how pixels are spread over threads), the launch plan of a repeated call, the
preallocated output, and the instruction counter (gpulab.fusion.isa) on known assembly."""
import pytest
import torch

import gpulab
from gpulab import fusion as fk
from gpulab.fusion import isa
from gpulab.fusion.codegen import BLOCK, Schedule

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CANDIDATES = [Schedule(1, False, True), Schedule(2, False, True), Schedule(8, False, True),
              Schedule(4, True, True), Schedule(4, False, False), Schedule(4, True, False)]


def _ids(s):
    return f"{s.per_thread}-{'stride' if s.grid_stride else 'tile'}-{'u' if s.unsigned_index else 's'}"


@pytest.mark.parametrize("schedule", CANDIDATES, ids=_ids)
def test_every_schedule_gives_the_same_bits(schedule):
    chain = [fk.affine(1.5, 0.25), fk.relu(), fk.clamp(-1.0, 2.0), fk.sigmoid()]
    gen = torch.Generator().manual_seed(3)
    for n in (7, 3 * BLOCK + 5):        # one partial tile; full tiles and a ragged end
        x = (torch.randn(n, generator=gen) * 3).to(gpulab.device)
        expected = fk.Pipeline(*chain)(x)
        got = fk.Pipeline(*chain, schedule=schedule)(x)
        assert torch.equal(got, expected), f"{schedule} differs at n={n}"
        torch.testing.assert_close(got, fk.Pipeline(*chain).reference(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("schedule", [Schedule(1, False, True), Schedule(2, True, False)], ids=_ids)
def test_schedules_on_images_and_reductions(schedule):
    img = torch.randint(0, 256, (13, 17, 3), dtype=torch.uint8).to(gpulab.device)
    pipe = fk.Pipeline(fk.crop(2, 3, 9, 11), fk.resize(5, 7), fk.mul(1 / 255), fk.normalize(MEAN, STD),
                       channels=3, schedule=schedule)
    torch.testing.assert_close(pipe(img), pipe.reference(img), rtol=1e-5, atol=1e-5)
    total = fk.Pipeline(fk.relu(), fk.reduce_sum(), schedule=schedule)
    x = torch.randn(2 * BLOCK + 3).to(gpulab.device)
    torch.testing.assert_close(total(x), total.reference(x), rtol=1e-5, atol=1e-4)


def test_the_source_says_its_schedule_and_index_type():
    chain = [fk.affine(2.0, 1.0), fk.relu()]
    unsigned = fk.Pipeline(*chain, schedule=Schedule(2, False, True)).source()
    assert "ix = uint64" in unsigned and "one tile per block" in unsigned
    assert "a1 = read_pixel(src, g, first + ix(BLOCK))" in unsigned and "a2 =" not in unsigned
    signed = fk.Pipeline(*chain, schedule=Schedule(4, True, False)).source()
    assert "ix = int64" in signed and "grid-stride loop" in signed and "a3 = read_pixel" in signed
    assert f"TILE = {4 * BLOCK} pixels" in signed


def test_bad_schedules_are_refused():
    for bad in (0, 17, True, 2.0):
        with pytest.raises(ValueError, match="per_thread"):
            Schedule(bad)
    with pytest.raises(ValueError, match="grid_stride must be True or False"):
        Schedule(4, "yes")
    with pytest.raises(TypeError, match="Schedule"):
        fk.Pipeline(fk.relu(), schedule=4)
    with pytest.raises(ValueError, match="blocks_per_sm"):
        fk.Pipeline(fk.relu())(torch.ones(3, device=gpulab.device), blocks_per_sm=0)


def test_a_repeated_shape_reuses_its_launch_plan(monkeypatch):
    pipe = fk.Pipeline(fk.affine(2.0, 1.0), fk.relu())
    planned = []
    original = fk.Pipeline._plan
    monkeypatch.setattr(fk.Pipeline, "_plan", lambda self, *a: planned.append(a) or original(self, *a))
    x = torch.randn(100).to(gpulab.device)
    for _ in range(3):
        torch.testing.assert_close(pipe(x), pipe.reference(x))
    assert len(planned) == 1
    y = torch.randn(10, 11).to(gpulab.device)
    torch.testing.assert_close(pipe(y), pipe.reference(y))                 # a new shape: a new plan
    torch.testing.assert_close(pipe(y.t()), pipe.reference(y.t()))         # non-contiguous: copied first
    assert len(planned) == 3
    img = torch.rand(9, 8).to(gpulab.device)
    crop_pipe = fk.Pipeline(fk.crop(0, 0, 4, 4), fk.relu())
    for rect in ([1, 2, 3, 4], (2, 1, 5, 6), (2, 1, 5, 6)):             # a list crop works (not kept)
        torch.testing.assert_close(crop_pipe(img, crop=rect), crop_pipe.reference(img, crop=rect))


def test_a_preallocated_output_is_written_in_place():
    pipe = fk.Pipeline(fk.affine(2.0, 1.0), fk.sigmoid())
    x = torch.randn(3 * BLOCK + 1).to(gpulab.device)
    out = torch.full_like(x, float("nan"))
    assert pipe(x, out=out) is out
    torch.testing.assert_close(out, pipe.reference(x))
    total = fk.Pipeline(fk.square(), fk.reduce_sum())
    acc = torch.full((1,), 123.0, device=gpulab.device)     # refilled with the identity first
    torch.testing.assert_close(total(x, out=acc), total.reference(x), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="shape"):
        pipe(x, out=torch.empty(5, device=gpulab.device))
    with pytest.raises(ValueError, match="float32"):
        pipe(x, out=torch.empty(x.numel(), dtype=torch.uint8, device=gpulab.device))
    with pytest.raises(ValueError, match="contiguous"):
        pipe(x[:6].reshape(2, 3), out=torch.empty(3, 2, device=gpulab.device).t())
    with pytest.raises(TypeError, match="torch.Tensor"):
        pipe(x, out=[0.0])


# --------------------------------------------------------------- instruction counts

PTX = """
.visible .entry fused(
	.param .u64 fused_param_0
)
{
	.reg .f32 	%f<8>;
	ld.param.u64 	%rd1, [fused_param_0];
	cvta.to.global.u64 	%rd2, %rd1;
	mov.u32 	%r1, %tid.x;
	setp.lt.u64 	%p1, %rd3, %rd4;
	@%p1 bra 	$L__BB0_2;
	bra.uni 	$L__BB0_1;

$L__BB0_2:
	ld.global.f32 	%f1, [%rd2];
	ld.global.f32 	%f2, [%rd2+1024];
	fma.rn.f32 	%f3, %f1, %f4, %f5;
	ex2.approx.ftz.f32 	%f6, %f3;
	rcp.rn.f32 	%f7, %f6;
	shl.b64 	%rd5, %rd3, 2;
	st.global.f32 	[%rd2], %f7;
	st.global.f32 	[%rd2+1024], %f7;
	ret;

$L__BB0_1:
	ret;
}
"""

SASS = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;                 /* 0x00000a00ff017b82 */
                                                                           /* 0x000fe20000000800 */
        /*0010*/                   S2R R0, SR_TID.X ;
        /*0020*/                   ISETP.GE.U32.AND P0, PT, R0, 0x100, PT ;
        /*0030*/               @P0 BRA `(.L_x_1) ;
        /*0040*/                   LDG.E R2, desc[UR4][R8.64] ;
        /*0050*/                   LDG.E R3, desc[UR4][R8.64+0x400] ;
        /*0060*/                   FFMA R4, R2, R5, R6 ;
        /*0070*/                   FFMA R7, R3, R5, R6 ;
        /*0080*/                   MUFU.RCP R10, R4 ;
        /*0090*/                   BSSY B0, `(.L_x_2) ;
        /*00a0*/                   FFMA R11, R4, R10, -1 ;
        /*00b0*/              @!P1 BRA `(.L_x_2) ;
        /*00c0*/                   MOV R20, 0xe0 ;
        /*00d0*/                   CALL.REL.NOINC `($__internal_0_$__cuda_sm3x_div_rn_noftz_f32_slowpath) ;
.L_x_2:
        /*00e0*/                   BSYNC B0 ;
        /*00f0*/                   STG.E desc[UR4][R12.64], R10 ;
        /*0100*/                   STG.E desc[UR4][R12.64+0x400], R7 ;
        /*0110*/                   EXIT ;
.L_x_1:
        /*0120*/                   ISETP.GE.U32.AND P2, PT, R0, 0x200, PT ;
        /*0130*/               @P2 EXIT ;
        /*0140*/                   LDG.E R2, desc[UR4][R8.64] ;
        /*0150*/                   FFMA R4, R2, R5, R6 ;
        /*0160*/                   STG.E desc[UR4][R12.64], R4 ;
        /*0170*/                   EXIT ;
.L_x_3:
        /*0180*/                   BRA `(.L_x_3) ;
$__internal_0_$__cuda_sm3x_div_rn_noftz_f32_slowpath:
        /*0190*/                   FFMA R10, R4, R10, R11 ;
        /*01a0*/                   RET.REL.NODEC R20 `(fused) ;
"""


def test_ptx_hot_path_is_the_full_tile():
    counts = isa.steady_state(PTX, per_thread=2)
    # the entry up to its branch (ld.param is an argument, a move), then the 2-load full tile
    assert counts["path"] == 14 and counts["per_pixel"] == 7.0
    c = counts["classes"]
    assert c["memory"] == 2.0 and c["sfu"] == 1.0 and c["fp32"] == 0.5 and c["integer"] == 1.0
    assert c["control"] == 1.0 and c["move"] == 1.5


def test_sass_hot_path_skips_the_slow_path_and_the_tail():
    blocks = isa.basic_blocks(SASS)
    assert [label for label, _ in blocks] == ["entry", ".L_x_2", ".L_x_1", ".L_x_3",
                                            "$__internal_0_$__cuda_sm3x_div_rn_noftz_f32_slowpath"]
    path = isa.hot_path(SASS)
    # entry (4) + the full tile up to the slow path's branch (8) + after it (4): the CALL is skipped
    assert len(path) == 16 and not any(line.startswith(("CALL", "MOV R20")) for line in path)
    assert sum(line.startswith("LDG") for line in path) == 2
    counts = isa.steady_state(SASS, per_thread=2)
    assert counts["per_pixel"] == 8.0
    assert counts["classes"] == {"memory": 2.5, "fp32": 1.5, "sfu": 0.5, "integer": 0.5, "control": 2.5,
                                 "move": 0.5, "other": 0.0}


@pytest.mark.skipif(gpulab.ON_GPU, reason="the simulator's refusal")
def test_instruction_counts_need_a_gpu():
    with pytest.raises(RuntimeError, match="needs a GPU"):
        isa.instruction_counts(fk.Pipeline(fk.relu()))


@pytest.mark.gpu
def test_gpu_instruction_counts_of_a_fused_kernel():
    pipe = fk.Pipeline(fk.affine(1.5, 0.25), fk.relu(), fk.clamp(-1.0, 2.0), fk.sigmoid())
    pipe(torch.randn(1 << 16, device=gpulab.device))
    counts = isa.instruction_counts(pipe)
    # one sigmoid: its exponential and its reciprocal run on the special-function unit
    assert counts["classes"]["sfu"] >= 2.0 and counts["classes"]["memory"] >= 2.0
    assert 8 < counts["per_pixel"] < 80, counts


@pytest.mark.gpu
def test_gpu_relu_and_clamp_drop_a_nan():
    """The GPU's max/min return the other operand when one is NaN (torch propagates it):
    what the lecture's 'what the chapter simplifies' says."""
    x = torch.tensor([float("nan"), -1.0, 2.0], device=gpulab.device)
    torch.testing.assert_close(fk.Pipeline(fk.relu())(x), torch.tensor([0.0, 0.0, 2.0], device=gpulab.device))
    assert torch.isnan(torch.relu(x)[0])


def test_a_predicated_early_exit_falls_through_to_the_work():
    """A thread past the end leaves at once (@P0 EXIT); the others fall through to the tile.
    (The counter followed no fall-through after an exit on the H200 run of 2026-12-01, so
    its counts of one-pixel and grid-stride schedules stopped at the exit.)"""
    sass = """
        /*0000*/                   S2R R0, SR_TID.X ;
        /*0010*/                   ISETP.GE.U32.AND P0, PT, R0, 0x100, PT ;
        /*0020*/               @P0 EXIT ;
        /*0030*/                   LDG.E R2, desc[UR4][R8.64] ;
        /*0040*/                   FFMA R4, R2, R5, R6 ;
        /*0050*/                   STG.E desc[UR4][R12.64], R4 ;
        /*0060*/                   EXIT ;
.L_x_0:
        /*0070*/                   BRA `(.L_x_0) ;
"""
    assert len(isa.hot_path(sass)) == 7 and isa.steady_state(sass, 1)["classes"]["memory"] == 2.0

