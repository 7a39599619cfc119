"""Graded checks of assignment 01 (solutions/01_gpu_architecture.ipynb), on the checks engine.

Task 1: ``make_chain(lines, stride, seed)``: the chase's array, int32 or int64 of
        ``lines * stride`` elements, the first element of each line holding the index of
        the next line's first element, all lines on ONE random cycle. Judged by its
        properties: one cycle through every line (a permutation's several cycles are
        named), entries at line starts only, not in order.
Task 2: ``chase_kernel(array, steps, out)``: one thread follows ``steps`` loads from index 0
        and stores where it ends in out[0] (a chase whose result is never stored is named).
Task 3: ``bank_wavefronts(addresses, itemsize)``: the shared-memory wavefronts of each warp
        access (32 banks of 4-byte words, broadcasts free, inactive lanes -1).
Task 4: ``blocks_per_sm(threads, registers, shared_bytes)``: the occupancy calculator on an
        H200 (register granularity, sub-partitions, the 1 KiB reserve, 128-byte rounding).
Task 5: ``pick_warp(ready, last)``: the CGGTY scheduling policy, run inside the issue model
        on random listings; the order of issue must be CGGTY's.

Each task declares its planted wrong answers at the end of this module.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ...arch import banks as arch_banks
from ...arch import chase as arch_chase
from ...arch import issue_model as im
from ...arch import occupancy as arch_occ
from ...harness import mark_answers, reference
from .engine import FUNCTION, KERNEL, Hint, Planted, Sizes, Task

__all__ = ["check_task1", "check_task2", "check_task3", "check_task4", "check_task5", "MAKE_CHAIN", "CHASE",
           "BANKS", "OCCUPANCY", "SCHEDULER"]

# the package's own answers: a candidate that calls them fails like one calling a reference
mark_answers(arch_chase.random_cycle, arch_chase.sattolo, arch_chase.chase_array, arch_chase.follow,
             arch_banks.conflict_ways, arch_occ.occupancy, im.cggty)


# ------------------------------------------------------------------ task 1: one random cycle

_CHAIN_SIZES = [(1, 32), (3, 32), (16, 32), (64, 8), (100, 1)]
_CHAIN_HIDDEN = [(2, 16), (257, 32)]


def _chain_inputs(size, gen):
    lines, stride = size
    return lines, stride, int(torch.randint(0, 2**31 - 1, (1,), generator=gen))


@reference
def chain_reference(lines, stride, seed):
    """One valid answer (any one-cycle chain is right: the verifier judges properties)."""
    succ = _cycle(lines, seed)
    array = torch.zeros(lines * stride, dtype=torch.int64)
    array[::stride] = succ * stride
    return array


def _cycle(lines, seed):
    order = torch.randperm(lines, generator=torch.Generator().manual_seed(seed))
    succ = torch.empty(lines, dtype=torch.int64)
    succ[order] = torch.roll(order, -1)
    return succ


def _verify_chain(case):
    lines, stride, _ = case.inputs
    out = case.outputs[0]
    if not isinstance(out, torch.Tensor) or out.dtype not in (torch.int32, torch.int64) or out.dim() != 1:
        return f"return a 1-D int32 or int64 tensor, got {type(out).__name__} {getattr(out, 'dtype', '')}"
    if out.numel() != lines * stride:
        return f"{out.numel()} elements, expected lines * stride = {lines * stride} (one line of stride elements each)"
    a = out.cpu().numpy().astype(np.int64)
    heads = a[::stride]
    if heads.min() < 0 or heads.max() >= a.size:
        return (f"an index is out of range (0..{a.size - 1}): the last line must point back into the array "
                "(the chain is a cycle)")
    if np.any(heads % stride):
        return (f"an entry points into the middle of a line: the chain links line starts (multiples of "
                f"stride={stride}), one element per cache line, so every load is a new line")
    succ = heads // stride
    try:
        lengths = arch_chase.cycle_lengths(succ)
    except ValueError:
        return ("two lines point to the same line (or one is never reached): the successors must be a "
                "permutation of the lines")
    if len(lengths) > 1:
        shown = ", ".join(map(str, lengths[:4])) + (", ..." if len(lengths) > 4 else "")
        return (f"the chain has {len(lengths)} cycles (lengths {shown}): a chase from index 0 circles in "
                f"{_cycle_through_zero(succ)} of the {lines} lines, a smaller working set than asked. A random "
                "permutation (np.random.permutation, torch.randperm) has about ln(n) cycles; Sattolo's "
                "algorithm (swap i with a j < i, never i itself) makes ONE")
    if lines >= 16:
        # a fixed step between most lines (+1: in order, -1: backwards, +k: a constant stride) is a
        # pattern a prefetcher (and the TLB) follows; a random cycle has no step that common
        steps = (succ - np.arange(lines)) % lines
        step, count = np.unique(steps, return_counts=True)
        common = int(step[np.argmax(count)])
        if count.max() > 3 * lines // 4:          # a random cycle of 16 lines: never seen in 10^5
            signed = common - lines if common > lines // 2 else common
            return (f"the chain visits the lines in order, most lines pointing {signed:+d} lines on: a prefetcher "
                    "(and the TLB) sees the pattern and hides the latency; visit them in a random order (one "
                    "random cycle)")
    return None


def _cycle_through_zero(succ):
    j, n = int(succ[0]), 1
    while j != 0:
        j, n = int(succ[j]), n + 1
    return n


MAKE_CHAIN = Task(
    chapter="01", number=1, title="one random cycle, one element per line", kind=FUNCTION,
    reference=chain_reference, make_inputs=_chain_inputs,
    sizes=Sizes(sim=_CHAIN_SIZES, hidden=_CHAIN_HIDDEN, gpu=[(1 << 16, 32)]),
    verify=_verify_chain, candidate_name="make_chain", solution="make_chain", no_races=False,
)
check_task1 = MAKE_CHAIN.checker()


# ------------------------------------------------------------------ task 2: the chase kernel

#: (lines, stride, steps): one step, a pass, several passes (the cycle wraps), odd strides
_CHASE_SIZES = [(2, 32, 1), (13, 32, 20), (40, 8, 95)]
_CHASE_HIDDEN = [(7, 16, 7), (64, 32, 130)]


def _chase_inputs(size, gen):
    lines, stride, steps = size
    succ = _cycle(lines, int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    array = torch.zeros(lines * stride, dtype=torch.int32)
    array[::stride] = (succ * stride).to(torch.int32)
    return array, steps


@reference
def chase_reference(array, steps):
    """out[0] = the index ``steps`` loads from 0 end on (float64, as the engine's frames)."""
    if array.is_meta:
        return torch.zeros(1, dtype=torch.float64, device="meta")
    a = array.cpu().numpy()
    j = 0
    for _ in range(steps):
        j = int(a[j])
    return torch.tensor([float(j)], dtype=torch.float64)


def _launch_chase(kernel, inputs, outputs, size):
    array, steps = inputs
    kernel[1, 1](array, steps, outputs[0])


def _chase_variant(mistake):
    def end(array, steps):
        a = array.cpu().numpy()
        j = 0
        hops = steps - 1 if mistake == "short" else steps
        for _ in range(hops):
            j = int(a[j])
        return torch.tensor([float(j)], dtype=torch.float64)
    return end


CHASE = Task(
    chapter="01", number=2, title="the pointer chase", kind=KERNEL,
    reference=chase_reference, make_inputs=_chase_inputs,
    sizes=Sizes(sim=_CHASE_SIZES, hidden=_CHASE_HIDDEN, gpu=[(1 << 15, 32, 4096)]),
    launch=_launch_chase, candidate_name="chase_kernel", solution="chase_kernel",
    own_kernels=(arch_chase,),
    hints=[
        Hint(lambda case: case.unwritten.any(),
             "the chase's result is never stored: on a GPU the compiler deletes loads whose value is never "
             "used, and the timing then measures nothing. Store the last index in out[0]"),
        Hint.matches(_chase_variant("short"), "one load too few: follow exactly `steps` loads from index 0"),
        Hint(lambda case: case.output is not None and float(case.output[0]) == float(case.inputs[0][0])
             and case.inputs[1] > 1,
             "every load reads the same element: each load's address must be the value the previous load "
             "returned (j = array[j]), or the loads overlap and the chase times throughput, not latency"),
    ],
)
check_task2 = CHASE.checker()


# ------------------------------------------------------------------ task 3: bank conflicts

_BANK_SIZES = [(1, 4), (12, 4), (12, 8)]
_BANK_HIDDEN = [(40, 4), (25, 8)]


def _bank_inputs(size, gen):
    """Warp accesses that probe every rule: strides 1-33 (conflicts, odd strides free),
    broadcasts (lanes sharing words), random words in a small range, inactive lanes."""
    warps, itemsize = size
    lanes = torch.arange(32, dtype=torch.int64)
    rows = []
    for w in range(warps):
        kind = w % 4
        if kind == 0:
            stride = int(torch.randint(1, 34, (1,), generator=gen)) if w else 2
            row = lanes * stride * itemsize
        elif kind == 1:                      # broadcast: 4 lanes per word, words 32 apart (one bank)
            row = (lanes // 4) * 32 * 4
        elif kind == 2:                      # random words in 96 words: conflicts and shared words
            row = torch.randint(0, 96 // (itemsize // 4), (32,), generator=gen) * itemsize
        elif (w // 4) % 2 == 0:              # stride 32, half the lanes inactive
            row = lanes * 32 * itemsize
            row[torch.randperm(32, generator=gen)[:16]] = -1
        else:                                # stride 1, random lanes inactive but lane 31 (bank 31 in use,
            row = lanes * itemsize           # so an inactive lane counted as word -1 shows there)
            row[torch.randperm(31, generator=gen)[:12]] = -1
        rows.append(row)
    return torch.stack(rows), itemsize


@reference
def bank_reference(addresses, itemsize):
    return arch_banks.conflict_ways(addresses, itemsize)


def _bank_variant(mistake):
    def ways(addresses, itemsize):
        out = []
        for row in addresses.cpu().tolist():
            if mistake != "inactive":
                row = [a for a in row if a >= 0]
            per_bank: dict = {}
            for a in row:
                words = max(1, itemsize // 4)
                first = a if mistake == "bytes" else a // 4
                for word in range(first, first + words):
                    bank = word % (16 if mistake == "sixteen" else 32)
                    per_bank.setdefault(bank, [])
                    per_bank[bank].append(word)
            if mistake == "no_broadcast":
                counts = [len(v) for v in per_bank.values()]
            else:
                counts = [len(set(v)) for v in per_bank.values()]
            if mistake == "distinct_banks":
                out.append(len(per_bank))
            elif mistake == "ideal":
                words = len({w for v in per_bank.values() for w in v})
                out.append(math.ceil(words / 32))
            else:
                out.append(max(counts, default=0))
        return torch.tensor(out, dtype=torch.int64)
    return ways


BANKS = Task(
    chapter="01", number=3, title="shared-memory bank conflicts", kind=FUNCTION,
    reference=bank_reference, make_inputs=_bank_inputs,
    sizes=Sizes(sim=_BANK_SIZES, hidden=_BANK_HIDDEN), candidate_name="bank_wavefronts",
    solution="bank_wavefronts", no_races=False,
    hints=[
        Hint.matches(_bank_variant("no_broadcast"),
                     "lanes that read the same word share it (a broadcast): count DIFFERENT words per bank"),
        Hint.matches(_bank_variant("bytes"), "banks hold 4-byte words: the bank is (address // 4) % 32, not address % 32"),
        Hint.matches(_bank_variant("sixteen"), "shared memory has 32 banks, not 16"),
        Hint.matches(_bank_variant("distinct_banks"),
                     "the cost is the busiest bank's number of different words (the passes it needs), "
                     "not how many banks are hit"),
        Hint.matches(_bank_variant("inactive"), "lanes with address -1 are inactive: leave them out"),
        Hint.matches(_bank_variant("ideal"),
                     "that is the fewest passes the words could take if they were spread over the banks; "
                     "each bank delivers one word per pass, so count the words of the busiest bank"),
    ],
)
check_task3 = BANKS.checker()


# ------------------------------------------------------------------ task 4: occupancy

#: each row probes one rule (the comment: what a mistake there would give)
_OCC_CONFIGS = [
    (256, 32, 0),        # 8 warps a block: 8 blocks (warps)
    (256, 33, 0),        # 1056 registers a warp round up to 1280: 6 blocks (7 without the granularity)
    (64, 16, 57 * 1024),  # 58368 + 1024 reserve: 3 blocks (4 without the reserve)
    (32, 96, 0),         # 3072 registers a warp: 5 per sub-partition = 20 (21 counting the SM's 64K at once)
    (100, 32, 0),        # 100 threads are 4 warps, not 3: 16 blocks (21)
    (32, 16, 0),         # one warp a block: the 32-block limit (64 warps would allow 64)
    (64, 16, 10649),     # 11673 bytes round up to 11776: 19 blocks (20 unrounded)
    (1024, 65, 0),       # 32 warps x 2304 registers > 64K: does not launch, 0
    (1024, 32, 0),       # 2 blocks
    (96, 40, 20_000),    # 11 blocks (shared memory)
    (128, 16, 0),        # 4 warps, 512 registers a warp: the 64-warp limit alone, 16 blocks (32 without it)
]


def _occ_inputs(size, gen):
    configs = list(_OCC_CONFIGS)
    if size == "shuffled":
        order = torch.randperm(len(configs), generator=gen).tolist()
        configs = [configs[i] for i in order]
    if size == "random":
        configs = []
        for _ in range(12):
            threads = int(torch.randint(1, 1025, (1,), generator=gen))
            regs = int(torch.randint(16, 129, (1,), generator=gen))
            shared = int(torch.randint(0, 60_000, (1,), generator=gen))
            configs.append((threads, regs, shared))
    return (torch.tensor(configs, dtype=torch.int64),)


@reference
def occupancy_reference(configs):
    return torch.tensor([float(arch_occ.occupancy(int(t), int(r), int(s)).blocks_per_sm)
                         for t, r, s in configs.tolist()], dtype=torch.float64)


def _occ_caller(candidate):
    def call(configs):
        out = []
        for t, r, s in configs.tolist():
            value = candidate(int(t), int(r), int(s))
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"blocks_per_sm must return an int (blocks per SM), got {type(value).__name__}")
            out.append(float(value))
        return torch.tensor(out, dtype=torch.float64)
    return call


def _occ_variant(mistake):
    def blocks(threads, registers, shared):
        warps = threads // 32 if mistake == "floor_warps" else math.ceil(threads / 32)
        warps = max(warps, 1)
        per_warp = registers * 32 if mistake == "no_granularity" else 256 * math.ceil(registers * 32 / 256)
        if per_warp * (4 * math.ceil(warps / 4)) > 65536 or per_warp * warps > 65536:
            by_regs = 0
        elif mistake == "sm_wide":
            by_regs = (65536 // per_warp) // warps
        else:
            by_regs = ((16384 // per_warp) * 4) // warps
        total = shared + (0 if mistake == "no_reserve" else 1024)
        total = total if mistake == "no_rounding" else 128 * math.ceil(total / 128)
        by_shared = 233472 // total if total else 10**9
        limits = [by_regs, by_shared] + ([] if mistake == "no_warp_limit" else [64 // warps])
        if mistake != "no_block_limit":
            limits.append(32)
        return int(min(limits))
    return blocks


def _occ_variant_batch(mistake):
    one = _occ_variant(mistake)
    return lambda configs: torch.tensor([float(one(*row)) for row in configs.tolist()], dtype=torch.float64)


OCCUPANCY = Task(
    chapter="01", number=4, title="the occupancy calculator", kind=FUNCTION,
    reference=occupancy_reference, make_inputs=_occ_inputs,
    sizes=Sizes(sim=["table", "shuffled"], hidden=["random"]), adapt=_occ_caller,
    candidate_name="blocks_per_sm", solution="blocks_per_sm", no_races=False,
    hints=[
        Hint.matches(_occ_variant_batch("no_granularity"),
                     "registers are allocated per warp in units of 256: round registers * 32 UP to a multiple of 256"),
        Hint.matches(_occ_variant_batch("no_reserve"),
                     "the driver reserves 1 KiB of shared memory per block (since Ampere): add 1024 bytes to each block"),
        Hint.matches(_occ_variant_batch("sm_wide"),
                     "the 64K registers are split over 4 sub-partitions: a sub-partition holds "
                     "16384 // registers-per-warp warps, times 4"),
        Hint.matches(_occ_variant_batch("floor_warps"), "a block of 100 threads takes 4 warp slots: round threads / 32 UP"),
        Hint.matches(_occ_variant_batch("no_block_limit"), "an SM holds at most 32 blocks, however small"),
        Hint.matches(_occ_variant_batch("no_warp_limit"), "an SM holds at most 64 warps (2048 threads), whatever "
                                                          "the registers and shared memory allow"),
        Hint.matches(_occ_variant_batch("no_rounding"), "shared memory is allocated in 128-byte units: round each block's bytes UP"),
    ],
)
check_task4 = OCCUPANCY.checker()


# ------------------------------------------------------------------ task 5: the scheduler

_SCHED_SIZES = [(2, 6), (3, 8), (4, 10)]
_SCHED_HIDDEN = [(6, 12), (8, 16)]


def _sched_inputs(size, gen):
    """Random warp bodies (size = (warps, instructions)): FADDs with stall 1-4, some with
    Yield, loads on SB0 of 6-40 cycles and consumers that wait for them."""
    warps, length = size
    scenario = []
    for _ in range(warps):
        body = []
        for k in range(length):
            r = float(torch.rand((), generator=gen))
            stall = int(torch.randint(1, 5, (1,), generator=gen))
            if r < 0.2:
                body.append(im.Instr("LDG", (2 * k + 1,), (20,), stall=1, write_sb=0,
                                     latency=int(torch.randint(6, 41, (1,), generator=gen)), text="LDG"))
            elif r < 0.35:
                body.append(im.Instr("FADD", (40,), (2 * k + 1, 21), stall=stall, wait_mask=1, text="FADD (waits SB0)"))
            else:
                body.append(im.Instr("FADD", (40 + k,), (21, 22), stall=stall, yield_=r > 0.9, text="FADD"))
        scenario.append(body)
    return (scenario,)


def _issue_order(scenario, policy):
    result = im.run(scenario, policy=policy, rf_cache=False)
    return torch.tensor([float(i.warp) for i in result.issues], dtype=torch.float64)


@reference
def scheduler_reference(scenario):
    return _issue_order(scenario, "cggty")


def _sched_caller(candidate):
    def call(scenario):
        def policy(ready, last):
            pick = candidate(list(ready), last)
            if isinstance(pick, bool) or not isinstance(pick, (int, np.integer)):
                raise TypeError(f"pick_warp must return a warp id (an int), got {type(pick).__name__}")
            return int(pick)
        return _issue_order(scenario, policy)
    return call


def _order_under(policy):
    return lambda scenario: _issue_order(scenario, policy)


def _youngest_always(ready, last):
    return max(ready)


def _oldest_always(ready, last):
    return min(ready)


SCHEDULER = Task(
    chapter="01", number=5, title="the CGGTY scheduler", kind=FUNCTION,
    reference=scheduler_reference, make_inputs=_sched_inputs,
    sizes=Sizes(sim=_SCHED_SIZES, hidden=_SCHED_HIDDEN), adapt=_sched_caller, pad_inputs=False,
    candidate_name="pick_warp", solution="pick_warp", no_races=False,
    hints=[
        Hint.matches(_order_under(im.gto), "that is greedy-then-OLDEST (GTO): when the last warp cannot issue, "
                                           "CGGTY takes the YOUNGEST ready warp (the largest id)"),
        Hint.matches(_order_under(im.lrr), "that is round-robin: CGGTY is greedy (the last warp again while it can issue)"),
        Hint.matches(_order_under(_youngest_always),
                     "not greedy: while the warp that issued last can issue, CGGTY keeps it, even if a younger one is ready"),
        Hint.matches(_order_under(_oldest_always), "oldest first and not greedy: CGGTY keeps the last warp, then the youngest"),
    ],
)
check_task5 = SCHEDULER.checker()


# ------------------------------------------------------------------ planted wrong answers

def _chain_planted(mistake):
    def make_chain(lines, stride, seed):
        gen = torch.Generator().manual_seed(seed)
        if mistake == "permutation":
            succ = torch.randperm(lines, generator=gen)
        elif mistake == "sequential":
            succ = (torch.arange(lines) + 1) % lines
        elif mistake == "backwards":                  # one cycle too, walked from the last line down
            succ = (torch.arange(lines) - 1) % lines
        elif mistake == "fisher_yates":               # j drawn from 0..i: Fisher-Yates, not Sattolo
            succ = list(range(lines))
            for i in range(lines - 1, 0, -1):
                j = int(torch.randint(0, i + 1, (1,), generator=gen))
                succ[i], succ[j] = succ[j], succ[i]
            succ = torch.tensor(succ)
        else:
            succ = _cycle(lines, seed)
        array = torch.zeros(lines * stride, dtype=torch.int64)
        if mistake == "no_stride":
            array[:lines] = succ
            return array
        array[::stride] = succ * stride
        if mistake == "past_the_end":
            array[int(torch.nonzero(array[::stride] == 0)[0]) * stride] = lines * stride
        return array
    return make_chain


def _own_chain(lines, stride, seed):
    array = arch_chase.chase_array(lines * 128, generator=torch.Generator().manual_seed(seed))
    return array


MAKE_CHAIN.planted = [
    Planted("torch.randperm: several cycles", _chain_planted("permutation"), "cycles"),
    Planted("Fisher-Yates instead of Sattolo", _chain_planted("fisher_yates"), "Sattolo"),
    Planted("lines in order", _chain_planted("sequential"), "in order"),
    Planted("lines in order, backwards", _chain_planted("backwards"), "-1 lines on"),
    Planted("one element per line ignored", _chain_planted("no_stride"), "one element per cache line"),
    Planted("the last line points past the end", _chain_planted("past_the_end"), "out of range"),
    Planted("the package's own", _own_chain, "instead of computing"),
]


def _chase_planted(mistake):
    import gpulab

    never_stored, short, same_element, wrong_start = (mistake == m for m in
                                                      ("never_stored", "short", "same_element", "wrong_start"))

    @gpulab.kernel
    def chase_kernel(array, steps, out):
        j = 0
        if wrong_start:
            j = array[0]                               # starts at line 1 of the chain, not index 0
        hops = steps - 1 if short else steps
        for _ in range(hops):
            if same_element:
                j = array[0]                           # the address does not depend on the last load
            else:
                j = array[j]
        if never_stored:
            if j == -12345:                            # the result is never written
                out[0] = j
        else:
            out[0] = j
    return chase_kernel


CHASE.planted = [
    Planted("the result is never stored", _chase_planted("never_stored"), "never stored"),
    Planted("one load too few", _chase_planted("short"), "one load too few"),
    Planted("loads not chained", _chase_planted("same_element"), "previous load returned"),
    Planted("starts at the wrong element", _chase_planted("wrong_start"), "expected"),
    Planted("the reference itself", chase_reference, "@gpulab.kernel"),
    Planted("the package's own path kernel", arch_chase.chase_path_kernel, "package's own"),
]


def _bank_planted(mistake):
    variant = _bank_variant(mistake)

    def bank_wavefronts(addresses, itemsize):
        return variant(addresses, itemsize)
    return bank_wavefronts


BANKS.planted = [
    Planted("broadcasts counted as conflicts", _bank_planted("no_broadcast"), "broadcast"),
    Planted("bank of the byte address", _bank_planted("bytes"), "4-byte words"),
    Planted("16 banks", _bank_planted("sixteen"), "32 banks"),
    Planted("banks hit, not passes", _bank_planted("distinct_banks"), "busiest bank"),
    Planted("inactive lanes counted", _bank_planted("inactive"), "inactive"),
    Planted("the ideal, not the banks", _bank_planted("ideal"), "fewest passes"),
    Planted("the package's own", lambda a, s: arch_banks.conflict_ways(a, s), "instead of computing"),
]


def _occ_planted(mistake):
    variant = _occ_variant(mistake)

    def blocks_per_sm(threads, registers, shared_bytes):
        return variant(threads, registers, shared_bytes)
    return blocks_per_sm


OCCUPANCY.planted = [
    Planted("register granularity ignored", _occ_planted("no_granularity"), "units of 256"),
    Planted("per-block shared-memory reserve ignored", _occ_planted("no_reserve"), "reserves 1 KiB"),
    Planted("registers counted SM-wide", _occ_planted("sm_wide"), "sub-partitions"),
    Planted("warps rounded down", _occ_planted("floor_warps"), "round threads / 32 UP"),
    Planted("no 32-block limit", _occ_planted("no_block_limit"), "at most 32 blocks"),
    Planted("no 64-warp limit", _occ_planted("no_warp_limit"), "at most 64 warps"),
    Planted("shared bytes not rounded", _occ_planted("no_rounding"), "128-byte units"),
    Planted("the package's own", lambda t, r, s: arch_occ.occupancy(t, r, s).blocks_per_sm, "instead of computing"),
]


def _last_even_if_not_ready(ready, last):
    return last if last is not None else max(ready)


SCHEDULER.planted = [
    Planted("greedy then oldest (GTO)", im.gto, "OLDEST"),
    Planted("round-robin", im.lrr, "round-robin"),
    Planted("youngest, not greedy", _youngest_always, "not greedy"),
    Planted("oldest, not greedy", _oldest_always, "oldest first"),
    Planted("the last warp even when it cannot issue", _last_even_if_not_ready, "cannot issue"),
    Planted("the package's own", lambda ready, last: im.cggty(ready, last), "instead of computing"),
]
