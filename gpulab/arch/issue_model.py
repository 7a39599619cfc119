"""A cycle-level model of one sub-core's issue stage, after Huerta et al., "Analyzing Modern
NVIDIA GPU cores" (arXiv 2503.20481).

Since Volta an NVIDIA SM has four sub-cores; each issues at most one instruction per cycle
from one of its warps. The paper reverse-engineers how it picks, and finds the compiler
doing much of the work through control bits in every instruction (decoded from SASS by
:mod:`gpulab.arch.sass`):

* **Stall counter** (4 bits): cycles before the warp's NEXT instruction may issue. The
  compiler sets it from the fixed latency of what the next instructions need, so no
  hardware checks fixed-latency dependences;
* **Yield** (1 bit): the warp does not issue in the next cycle, another warp may;
* **Dependence counters** SB0-SB5 (six per warp, 6 bits each) for variable-latency
  producers (memory loads, ...): the producer names a counter to increment at issue and
  decrement when its result is written (write counter) or its sources are read (read
  counter, for stores that must read a register before it is overwritten); a consumer
  carries a wait mask and issues only when those counters are 0;
* **the scheduler**, Compiler-Guided Greedy-Then-Youngest (CGGTY): keep issuing from the
  warp that issued last while it can (greedy), otherwise the youngest warp that can;
* **register file**: two banks per sub-core (register r in bank r % 2), each with ONE read
  port of 1024 bits (one register of all 32 lanes per cycle): an instruction whose sources
  need two reads from one bank holds the read stage an extra cycle, and the sub-core
  issues nothing meanwhile;
* **register file cache** driven by the compiler's reuse bits: a source operand flagged
  ``.reuse`` stays cached for the next instruction that reads the same register in the same
  operand slot, which then needs no bank read. The paper's section 5.3.1: one entry per bank,
  each holding three operand values (one per source slot), six in all; a cached value is
  gone once another read reaches the same bank in the same slot, hit or not, unless that
  read sets the reuse bit again (its Listing 4), which is what this model does.

These rules were checked against the paper's text (sections 4, 5.1.2, 5.3, 5.3.1), not only
its abstract: greedy, then the YOUNGEST warp (its Figure 4: W3 is the youngest, W0 the oldest);
Yield keeps the warp from issuing in the next cycle (a one-cycle bubble if no other warp is
ready); one FMUL bubble for two sources in one bank, two for an FFMA with all three. One
simplification: the paper finds a dependence counter's increment visible only the cycle
after issue (so the compiler gives such a producer a stall of 2); here it counts at issue,
which differs only for code that issues the consumer in the very next cycle.

What is simplified here: straight-line loop bodies repeated ``repeat`` times stand in for
branches; one issue per cycle with no fetch/decode stall (the paper models a stream-buffer
prefetcher); a fixed-latency result is ready ``FIXED_LATENCY[op]`` cycles after issue;
a variable-latency one after the latency you give it (the chase measures those). Sources
are read the cycle after issue (the paper's read stage), and an instruction cannot issue
while the previous one still holds the read stage.

    >>> body = parse_listing('''
    ...     FFMA R1, R2, R3, R1   [S4]
    ... ''')
    >>> run([body], repeat=3).cycles            # issues at 0, 4, 8; last result at 8 + 4
    12
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

__all__ = ["Instr", "parse_listing", "run", "Result", "Issue", "cggty", "gto", "lrr", "POLICIES",
           "FIXED_LATENCY", "DEFAULT_VARIABLE_LATENCY", "ffma_listing", "chase_listing", "predict_ffma_cycles",
           "mape", "SB_COUNT", "SB_MAX"]

SB_COUNT = 6              # dependence counters per warp (SB0-SB5)
SB_MAX = 63               # 6 bits each
STALL_MAX = 15            # 4 bits
BANKS = 2                 # register file banks per sub-core

#: fixed latencies (cycles from issue to result) the model assumes: 4 for every fixed-latency
#: operation (the paper's addition and FFMA take 4; its HADD2 takes 5, so for other ops this
#: is an assumption; the chapter's GPU run measures FFMA chains against it)
FIXED_LATENCY = {"default": 4}
#: a variable-latency producer with no latency given (cycles): an L1 hit, roughly
DEFAULT_VARIABLE_LATENCY = 32

STORE_OPS = {"STG", "STS", "ST", "STL", "RED", "BAR", "BRA", "EXIT", "NOP", "DEPBAR", "ISETP", "FSETP", "BSYNC",
             "BSSY", "CALL", "RET", "WARPSYNC"}


@dataclass(frozen=True)
class Instr:
    """One instruction with its control bits."""
    op: str
    dst: tuple = ()                  # registers written
    src: tuple = ()                  # registers read, in operand-slot order
    stall: int = 1                   # Stall counter (cycles until this warp's next issue)
    yield_: bool = False             # Yield: not this warp in the next cycle
    write_sb: int | None = None      # dependence counter held until the result is written
    read_sb: int | None = None       # dependence counter held until the sources are read
    wait_mask: int = 0               # bit k: wait for SBk == 0 before issuing
    reuse: tuple = ()                # per source slot: keep it in the register file cache
    latency: int | None = None       # a variable-latency producer's cycles to write-back
    text: str = ""

    def __post_init__(self):
        if not 0 <= self.stall <= STALL_MAX:
            raise ValueError(f"{self.text or self.op}: the stall counter has 4 bits (0-15), got {self.stall}")
        for sb in (self.write_sb, self.read_sb):
            if sb is not None and not 0 <= sb < SB_COUNT:
                raise ValueError(f"{self.text or self.op}: dependence counters are SB0-SB5, got SB{sb}")
        if not 0 <= self.wait_mask < (1 << SB_COUNT):
            raise ValueError(f"{self.text or self.op}: the wait mask has 6 bits, got {self.wait_mask:#x}")

    @property
    def variable(self) -> bool:
        return self.write_sb is not None


_CONTROL = re.compile(r"\[([^\]]*)\]\s*$")


def parse_listing(text: str) -> list[Instr]:
    """Parse a hand-written listing, one instruction a line, control bits in brackets:

        LDG R4, [R2]           [S1 W0 L300]      write counter SB0, latency 300
        FFMA R5, R4, R3.reuse, R5 [S4 B0 Y]      wait for SB0, stall 4, yield
        STG [R6], R5           [S1 R1]           read counter SB1

    S<n> stall, Y yield, W<k> write counter, R<k> read counter, B<ks> wait mask (B0, B01),
    L<n> latency; ``.reuse`` after a source sets its reuse bit. Lines starting with # are
    comments."""
    program = []
    for number, line in enumerate(text.strip().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = _CONTROL.search(line)
        control = m.group(1).split() if m else []
        asm = line[:m.start()].strip() if m else line
        fields = {"stall": 1, "yield_": False, "write_sb": None, "read_sb": None, "wait_mask": 0, "latency": None}
        for token in control:
            kind, value = token[0].upper(), token[1:]
            try:
                if kind == "S":
                    fields["stall"] = int(value)
                elif kind == "Y" and not value:
                    fields["yield_"] = True
                elif kind == "W":
                    fields["write_sb"] = int(value)
                elif kind == "R":
                    fields["read_sb"] = int(value)
                elif kind == "B":
                    fields["wait_mask"] = sum(1 << int(d) for d in value)
                elif kind == "L":
                    fields["latency"] = int(value)
                else:
                    raise ValueError
            except ValueError:
                raise ValueError(f"line {number}: control token {token!r} not understood "
                                 "(S<n>, Y, W<k>, R<k>, B<ks>, L<n>)") from None
        program.append(_instr_from_asm(asm, text=line, **fields))
    return program


def _instr_from_asm(asm: str, **fields) -> Instr:
    """Registers of an instruction's text: the first operand is written (unless the op
    writes no register), every other R<n> is read; RZ is the zero register."""
    asm = asm.rstrip(" ;")
    op_full, _, operands = asm.partition(" ")
    if op_full.startswith("@"):                        # a predicate guard: @P0 FFMA ...
        op_full, _, operands = operands.strip().partition(" ")
    op = op_full.split(".")[0].upper()
    parts = [p.strip() for p in operands.split(",")] if operands.strip() else []
    dst, src, reuse = [], [], []
    for k, part in enumerate(parts):
        regs = re.findall(r"\bR(\d+)(\.reuse)?", part)
        if k == 0 and op not in STORE_OPS and not part.startswith("["):
            dst += [int(r) for r, _ in regs]
            continue
        for r, flag in regs:
            src.append(int(r))
            reuse.append(bool(flag))
    return Instr(op, tuple(dst), tuple(src), reuse=tuple(reuse), **fields)


# ------------------------------------------------------------------ scheduling policies
# A policy picks one warp among those that can issue this cycle: pick(ready, last) -> warp,
# where ready is sorted by age (warp ids in launch order: a larger id is younger) and last
# is the warp that issued most recently (None before the first issue).


def cggty(ready: list, last) -> int:
    """Compiler-Guided Greedy-Then-Youngest: the last warp again if it can issue, else
    the youngest ready warp (the compiler's stall counters and yield bits decide when the
    last warp cannot)."""
    return last if last in ready else max(ready)


def gto(ready: list, last) -> int:
    """Greedy-Then-Oldest (GPGPU-Sim's and Accel-sim's usual scheduler)."""
    return last if last in ready else min(ready)


def lrr(ready: list, last) -> int:
    """Loose round-robin: the next ready warp after the last one."""
    if last is None:
        return min(ready)
    later = [w for w in ready if w > last]
    return min(later) if later else min(ready)


POLICIES = {"cggty": cggty, "gto": gto, "lrr": lrr}


# ------------------------------------------------------------------ the model


@dataclass(frozen=True)
class Issue:
    cycle: int
    warp: int
    pc: int                          # index in the body
    iteration: int
    op: str
    reads: int                       # register-bank reads (after the cache)
    cache_hits: int
    text: str


@dataclass
class Result:
    cycles: int                      # until the last result is written
    issues: list = field(default_factory=list)
    idle: dict = field(default_factory=dict)   # cycle -> why nothing issued
    hazards: list = field(default_factory=list)  # reads of a register before its value was ready
    bank_conflict_cycles: int = 0
    cache_hits: int = 0

    @property
    def issued(self) -> int:
        return len(self.issues)

    def timeline(self) -> list[dict]:
        """Rows for a plot: one per issued instruction."""
        return [dict(cycle=i.cycle, warp=i.warp, pc=i.pc, iteration=i.iteration, op=i.op, text=i.text)
                for i in self.issues]


@dataclass
class _Warp:
    wid: int
    body: list
    repeat: int
    pc: int = 0
    iteration: int = 0
    next_issue: int = 0
    sb: list = field(default_factory=lambda: [0] * SB_COUNT)
    ready_at: dict = field(default_factory=dict)   # register -> cycle its value is ready

    @property
    def done(self) -> bool:
        return self.iteration >= self.repeat

    @property
    def instr(self) -> Instr:
        return self.body[self.pc]

    def advance(self):
        self.pc += 1
        if self.pc == len(self.body):
            self.pc, self.iteration = 0, self.iteration + 1


def run(bodies: list, repeat: int = 1, policy="cggty", rf_cache: bool = True, read_ports: int = 1,
        latencies: dict | None = None, max_cycles: int = 1_000_000) -> Result:
    """Run warps on one sub-core. ``bodies``: one instruction list per warp (warp ids in
    list order: later is younger), each executed ``repeat`` times. ``policy``: a name of
    :data:`POLICIES` or a function pick(ready, last). ``latencies``: op -> cycles for
    variable-latency producers without their own ``latency``. Returns the :class:`Result`."""
    pick = POLICIES[policy] if isinstance(policy, str) else policy
    if not bodies or any(not b for b in bodies):
        raise ValueError("give at least one warp, each with at least one instruction")
    if read_ports < 1:
        raise ValueError(f"read_ports must be >= 1, got {read_ports}")
    latencies = latencies or {}
    warps = [_Warp(w, list(b), repeat) for w, b in enumerate(bodies)]
    releases: dict[int, list] = {}           # cycle -> [(warp, counter)] to decrement
    cache: dict = {}                         # (bank, slot) -> (warp, register)
    result = Result(0)
    read_free = 0                            # first cycle the read stage is free
    last = None
    completion = 0
    cycle = 0
    while not all(w.done for w in warps):
        if cycle > max_cycles:
            raise RuntimeError(f"no progress after {max_cycles} cycles: a wait on a counter nothing releases?")
        for wid, sb in releases.pop(cycle, []):
            warps[wid].sb[sb] -= 1
        ready = [w.wid for w in warps if _can_issue(w, cycle)]
        if not ready:
            result.idle[cycle] = "no warp ready"
        elif cycle < read_free:
            result.idle[cycle] = "register read (bank conflict)"
            result.bank_conflict_cycles += 1
        else:
            wid = pick(ready, last)
            if wid not in ready:
                raise ValueError(f"the policy picked warp {wid}, which cannot issue (ready: {ready})")
            warp = warps[wid]
            ins = warp.instr
            reads, hits = _read_operands(ins, wid, cache, rf_cache)
            read_cycles = max([-(-n // read_ports) for n in reads.values()] or [0])
            read_free = cycle + max(1, read_cycles)
            for r in ins.src:
                if warp.ready_at.get(r, 0) > cycle + 1:
                    result.hazards.append(f"cycle {cycle}: warp {wid} {ins.text or ins.op} reads R{r} "
                                          f"before it is written (ready at {warp.ready_at[r]})")
            done_at = _issue(warp, ins, cycle, read_cycles, releases, latencies)
            completion = max(completion, done_at)
            result.issues.append(Issue(cycle, wid, warp.pc, warp.iteration, ins.op,
                                       sum(reads.values()), hits, ins.text or ins.op))
            result.cache_hits += hits
            warp.advance()
            last = wid
        cycle += 1
    result.cycles = max(completion, cycle)
    return result


def _can_issue(w: _Warp, cycle: int) -> bool:
    if w.done or cycle < w.next_issue:
        return False
    mask = w.instr.wait_mask
    return all(w.sb[k] == 0 for k in range(SB_COUNT) if mask >> k & 1)


def _read_operands(ins: Instr, wid: int, cache: dict, rf_cache: bool):
    """Bank reads per bank after the register file cache, and the cache hits; updates the
    cache: a slot's entry stays only if this instruction set its reuse bit."""
    reads = {b: 0 for b in range(BANKS)}
    hits = 0
    seen = set()
    for slot, r in enumerate(ins.src):
        bank = r % BANKS
        if rf_cache and cache.get((bank, slot)) == (wid, r):
            hits += 1
        elif r not in seen:                  # one read serves a register used twice
            reads[bank] += 1
        seen.add(r)
        keep = rf_cache and slot < len(ins.reuse) and ins.reuse[slot]
        if keep:
            cache[(bank, slot)] = (wid, r)
        else:
            cache.pop((bank, slot), None)
    return reads, hits


def _issue(warp: _Warp, ins: Instr, cycle: int, read_cycles: int, releases: dict, latencies: dict) -> int:
    warp.next_issue = cycle + max(1, ins.stall)
    if ins.yield_:
        warp.next_issue = max(warp.next_issue, cycle + 2)
    if ins.variable:
        latency = ins.latency if ins.latency is not None else latencies.get(ins.op, DEFAULT_VARIABLE_LATENCY)
    else:
        latency = FIXED_LATENCY.get(ins.op, FIXED_LATENCY["default"])
    done_at = cycle + latency
    for counter, when in ((ins.write_sb, done_at), (ins.read_sb, cycle + 1 + read_cycles)):
        if counter is None:
            continue
        if warp.sb[counter] >= SB_MAX:
            raise RuntimeError(f"SB{counter} of warp {warp.wid} would pass {SB_MAX} (6 bits)")
        warp.sb[counter] += 1
        releases.setdefault(when, []).append((warp.wid, counter))
    for r in ins.dst:
        warp.ready_at[r] = done_at
    return done_at


# ------------------------------------------------------------------ the sweeps' listings


def ffma_listing(ilp: int, fma_latency: int = 4) -> list[Instr]:
    """The loop body of :func:`gpulab.arch.sweeps.ffma_kernel` as the compiler schedules it:
    ``ilp`` independent FFMAs (chain k: Rk <- Rk * R20 + R21), each with stall 1 but the
    last, whose stall makes the first chain's next FFMA wait out the latency. Operands a, b
    in registers R20, R21 (banks 0 and 1), flagged ``.reuse`` as ptxas flags operands the
    next instruction reads again (so back-to-back FFMAs of one warp read them from the cache)."""
    if not 1 <= ilp <= 8:
        raise ValueError(f"ilp must be 1..8, got {ilp}")
    body = []
    for k in range(ilp):
        stall = max(1, fma_latency - (ilp - 1)) if k == ilp - 1 else 1
        body.append(Instr("FFMA", (2 * k,), (2 * k, 20, 21), stall=stall, reuse=(False, True, True),
                          text=f"FFMA R{2 * k}, R{2 * k}, R20.reuse, R21.reuse [S{stall}]"))
    return body


def chase_listing(load_latency: int, address_latency: int = 4) -> list[Instr]:
    """The chase's loop body: the load (write counter SB0, variable latency) and the address
    of the next one from its result (IMAD.WIDE, waiting on SB0)."""
    return [Instr("LDG", (4,), (2,), stall=1, write_sb=0, latency=load_latency, text=f"LDG R4, [R2] [W0 L{load_latency}]"),
            Instr("IMAD", (2,), (4, 8, 6), stall=address_latency, wait_mask=1,
                  text=f"IMAD.WIDE R2, R4, 0x4, R6 [B0 S{address_latency}]")]


def predict_ffma_cycles(ilp: int, warps: int, iters: int, sub_cores: int = 4, policy="cggty") -> int:
    """Cycles the model gives a block of ``warps`` warps running ``iters`` rounds of the
    FFMA body: warps spread round-robin over the SM's sub-cores, the busiest decides."""
    per_core = -(-warps // sub_cores)
    return run([ffma_listing(ilp)] * per_core, repeat=iters, policy=policy).cycles


def mape(predicted, measured) -> float:
    """Mean absolute percentage error, in percent."""
    pairs = list(zip(predicted, measured, strict=True))
    if not pairs or any(m == 0 for _, m in pairs):
        raise ValueError("mape needs measurements, none of them zero")
    return 100.0 * sum(abs(p - m) / abs(m) for p, m in pairs) / len(pairs)
