"""The issue model on hand-traced listings (each expected cycle worked out in the comment),
and the SASS control-bit decoder on a hand-written listing."""
import pytest

from gpulab.arch import issue_model as im
from gpulab.arch import sass


def issue_cycles(result, warp=None):
    return [i.cycle for i in result.issues if warp is None or i.warp == warp]


def test_stall_counter_spaces_dependent_ffmas():
    body = im.parse_listing("FFMA R1, R2, R3, R1 [S4]")
    r = im.run([body], repeat=3)
    assert issue_cycles(r) == [0, 4, 8] and r.cycles == 12 and not r.hazards


def test_too_small_a_stall_is_a_hazard():
    # the compiler's stall counter is the only guard of a fixed-latency dependence
    r = im.run([im.parse_listing("FFMA R1, R2, R3, R1 [S2]")], repeat=2)
    assert issue_cycles(r) == [0, 2] and len(r.hazards) == 1 and "R1" in r.hazards[0]


def test_cggty_is_greedy_then_youngest():
    # two FADDs with stall 1, then one with stall 4, in three warps (sources in both banks:
    # no read-port conflict):
    # cycle 0: nobody issued yet -> youngest (warp 2); it stays ready (stall 1): greedy keeps it
    # cycles 0,1,2: warp 2; then it waits 4 -> youngest ready is warp 1: cycles 3,4,5; then warp 0: 6,7,8
    body = im.parse_listing("""
        FADD R1, R2, R3 [S1]
        FADD R5, R6, R7 [S1]
        FADD R9, R10, R11 [S4]
    """)
    r = im.run([body] * 3, policy="cggty", rf_cache=False)
    assert [i.warp for i in r.issues] == [2, 2, 2, 1, 1, 1, 0, 0, 0]
    assert issue_cycles(r) == list(range(9))
    assert [i.warp for i in im.run([body] * 3, policy="gto").issues] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [i.warp for i in im.run([body] * 3, policy="lrr").issues] == [0, 1, 2] * 3


def test_yield_hands_the_next_cycle_to_another_warp():
    body = im.parse_listing("""
        FADD R1, R2, R3 [S1 Y]
        FADD R5, R6, R7 [S1]
    """)
    r = im.run([body] * 2)
    # cycle 0 warp 1 (youngest) yields -> cycle 1 warp 0, which yields too -> cycle 2 warp 1 again
    assert [(i.cycle, i.warp, i.pc) for i in r.issues] == [(0, 1, 0), (1, 0, 0), (2, 1, 1), (3, 0, 1)]


def test_dependence_counter_holds_the_consumer_until_the_load_returns():
    body = im.parse_listing("""
        LDG R4, [R2]          [S1 W0 L30]
        FADD R8, R9, R10      [S1]
        FFMA R5, R4, R3, R5   [S4 B0]
    """)
    r = im.run([body])
    # the FADD does not wait (no mask), the FFMA waits for SB0: released at 0 + 30
    assert issue_cycles(r) == [0, 1, 30] and r.cycles == 34 and not r.hazards
    assert 29 in r.idle and r.idle[29] == "no warp ready"


def test_a_consumer_without_the_wait_mask_is_a_hazard():
    body = im.parse_listing("""
        LDG R4, [R2]          [S1 W0 L30]
        FFMA R5, R4, R3, R5   [S4]
    """)
    assert im.run([body]).hazards


def test_read_counter_is_released_when_the_sources_are_read():
    body = im.parse_listing("""
        STG [R2], R4          [S1 R1]
        MOV R4, R9            [S1 B1]
    """)
    r = im.run([body])
    # STG issues at 0, reads R2 (bank 0) and R4 (bank 0) in cycles 1-2 -> SB1 released at 3
    assert issue_cycles(r) == [0, 3]


def test_two_reads_from_one_bank_hold_the_read_stage():
    # R2, R4, R6 all in bank 0: three reads through one port -> the next issue waits 3 cycles
    conflict = im.parse_listing("""
        FFMA R1, R2, R4, R6   [S1]
        FADD R3, R5, R7       [S1]
    """)
    r = im.run([conflict])
    assert issue_cycles(r) == [0, 3] and r.bank_conflict_cycles == 2
    # R2 (bank 0), R5 (bank 1), R7 (bank 1): two cycles; both banks read at once
    spread = im.parse_listing("""
        FFMA R1, R2, R5, R7   [S1]
        FADD R3, R9, R11      [S1]
    """)
    assert issue_cycles(im.run([spread])) == [0, 2]
    # two read ports per bank (the paper's what-if): three reads from bank 0 take 2 cycles
    assert issue_cycles(im.run([conflict], read_ports=2)) == [0, 2]


def test_reuse_bit_serves_the_next_instruction_from_the_cache():
    body = im.parse_listing("""
        FFMA R1, R2, R4.reuse, R6.reuse   [S1]
        FFMA R3, R8, R4, R6               [S1]
        FADD R9, R10, R11                 [S1]
    """)
    r = im.run([body])
    # first: R2, R4, R6 from bank 0 (3 cycles); second: R4, R6 hit slots 1, 2: only R8 is read
    assert [i.cache_hits for i in r.issues] == [0, 2, 0] and [i.reads for i in r.issues] == [3, 1, 2]
    assert issue_cycles(r) == [0, 3, 4]
    off = im.run([body], rf_cache=False)           # without the cache the second reads 3 too
    assert [i.reads for i in off.issues] == [3, 3, 2] and issue_cycles(off) == [0, 3, 6]


def test_listing_errors_name_the_problem():
    with pytest.raises(ValueError, match="4 bits"):
        im.parse_listing("FFMA R1, R2, R3, R1 [S16]")
    with pytest.raises(ValueError, match="SB0-SB5"):
        im.parse_listing("LDG R1, [R2] [W6]")
    with pytest.raises(ValueError, match="not understood"):
        im.parse_listing("FFMA R1, R2, R3, R1 [Q3]")
    # waiting on a counter nothing holds costs nothing (it is already 0)
    assert issue_cycles(im.run([im.parse_listing("FADD R1, R2, R3 [B3]")])) == [0]


def test_ffma_sweep_model_shape():
    # one warp: 4 cycles per round of one FFMA, 8 FFMAs issue back to back (1 a cycle)
    assert im.predict_ffma_cycles(1, 1, 10) == 40
    assert im.predict_ffma_cycles(8, 1, 10) == 84
    # four warps spread over four sub-cores cost what one does
    assert im.predict_ffma_cycles(1, 4, 10) == im.predict_ffma_cycles(1, 1, 10)
    assert im.mape([110, 90], [100, 100]) == pytest.approx(10.0)


def _word(ctrl, low=0):
    return f"/* 0x{sass.encode_control(ctrl, low):016x} */"


def test_control_bits_decode_a_hand_written_listing():
    # a high word as a kernel's first MOV commonly carries: stall 2, no barriers; and a stall-0 yield
    assert sass.format_control(sass.decode_control(0x000FE40000000F00)) == "B------:R-:W-:-:S02"
    assert sass.format_control(sass.decode_control(0x000FC00000000000)) == "B------:R-:W-:Y:S00"
    ld = sass.Control(1, False, 2, None, 0, 0)
    ffma = sass.Control(4, True, None, None, 0b000100, 0b0010)
    listing = f"""
        /*0000*/                   LDG.E R4, [R2.64] ;                        /* 0x0000000402047981 */
                                                                              {_word(ld, 0x1E1900)}
        /*0010*/                   FFMA R5, R4, R3.reuse, R5 ;                /* 0x0000000304057223 */
                                                                              {_word(ffma, 5)}
    """
    program = sass.parse_sass(listing, latencies={"LDG": 40})
    assert [i.op for i in program] == ["LDG", "FFMA"]
    assert program[0].write_sb == 2 and program[0].latency == 40 and program[0].dst == (4,)
    assert program[1].wait_mask == 0b100 and program[1].yield_ and program[1].stall == 4
    assert program[1].reuse == (False, True, False)       # the bit agrees with the text's R3.reuse
    assert program[1].src == (4, 3, 5)
    r = im.run([program])
    assert issue_cycles(r) == [0, 40] and not r.hazards
    for c in (ld, ffma):
        assert sass.decode_control(sass.encode_control(c, 0x1234)) == c


def test_loop_body_finds_the_backward_branch():
    plain = sass.Control(1, False, None, None, 0, 0)
    lines = []
    for addr, asm in ((0x00, "MOV R1, c[0x0][0x28]"), (0x10, "FFMA R5, R4, R3, R5"), (0x20, "FFMA R6, R4, R3, R6"),
                      (0x30, "@P0 BRA 0x10"), (0x40, "EXIT")):
        lines += [f"        /*{addr:04x}*/   {asm} ;   /* 0x0000000000000000 */", f"        {_word(plain)}"]
    assert [i.op for i in sass.loop_body("\n".join(lines))] == ["FFMA", "FFMA", "BRA"]
    # nvdisasm's form: a label before the target, the branch naming it
    labelled = "\n".join(lines[:2] + [".L_x_0:"] + lines[2:6] + [lines[6].replace("BRA 0x10", "BRA `(.L_x_0)")] + lines[7:])
    assert [i.op for i in sass.loop_body(labelled)] == ["FFMA", "FFMA", "BRA"]
    assert sass.loop_body("\n".join(lines[:6])) == []
