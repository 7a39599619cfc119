"""Graded checks of assignment 14 (solutions/14_distributed.ipynb), on the checks engine.

Task 1: ``fsdp_bytes_per_rank(num_params, shard_degree, largest_unit_params)``: model-state
        bytes on one rank under ZeRO-3 with mixed-precision AdamW (16 bytes a parameter over
        the sharding degree, rounded up, plus the unsharded bf16 copies of the unit in use
        and the one prefetched).
Task 2: ``one_f_one_b(stage, num_stages, num_microbatches)``: stage s's order of forwards
        and backwards in 1F1B. Judged across all stages: valid (each micro-batch forward
        and backward once, no deadlock with blocking receives), at most ``p - s``
        micro-batches in flight, and 1F1B's order (not GPipe's).
Task 3: ``tp_mlp(x, w1, w3, w2, comm)``: the SwiGLU MLP with column-parallel w1/w3 and
        row-parallel w2, run on 1, 2 and 4 ranks (threads of one process, see
        :mod:`gpulab.dist.comm`); output and every gradient against one process (float64),
        and the collectives it called named when they are the mistake.
Task 4: ``plan_layers(time, mem, budget, switch)``: Galvatron's dynamic programme; the plan
        must fit the budget and be as fast as the best plan, which brute force finds.

Each task declares its planted wrong answers at the end of this module.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...dist import comm as dist_comm
from ...dist import fsdp as dist_fsdp
from ...dist import galvatron as G
from ...dist import pipeline as P
from ...dist import tp as dist_tp
from ...harness import mark_answers, reference
from .engine import FUNCTION, Planted, Sizes, Task

__all__ = ["check_task1", "check_task2", "check_task3", "check_task4", "FSDP_MEMORY", "ONE_F_ONE_B",
           "TP_MLP", "PLAN_LAYERS", "BYTES_PER_PARAM", "GATHERED_BYTES_PER_PARAM"]

# the package's own answers: a candidate that calls them fails like one calling a reference
mark_answers(dist_fsdp.fsdp_memory_bytes, P.one_f_one_b_schedule, P.gpipe_schedule, dist_tp.tp_mlp,
             G.dp_plan, G.brute_force_plan)

BYTES_PER_PARAM = 16           # bf16 param 2 + bf16 grad 2 + fp32 master, m, v 4 + 4 + 4
GATHERED_BYTES_PER_PARAM = 2   # the unsharded bf16 copy of a unit while it runs


def _number(x) -> torch.Tensor:
    return torch.tensor(float(x), dtype=torch.float64)


# ------------------------------------------------------------------ task 1: FSDP memory

#: (parameters, sharding degree, parameters of the largest unit): not multiples of the
#: degree (rounding shows), degree 1 (nothing sharded), a real model (Llama 3.1 8B, 8 GPUs)
_MEMORY_CASES = [(1000, 1, 100), (1001, 8, 97), (123_457, 3, 5000), (8_030_261_248, 8, 218_112_000)]
_MEMORY_HIDDEN = [(7, 4, 7), (70_553_706_496, 64, 855_654_400)]


def _memory_inputs(size, gen):
    return size


@reference
def fsdp_memory_reference(num_params, shard_degree, largest_unit_params):
    sharded = -(-num_params * BYTES_PER_PARAM // shard_degree)      # rounded up: chunks are padded
    return _number(sharded + 2 * largest_unit_params * GATHERED_BYTES_PER_PARAM)


def _memory_caller(candidate):
    def call(num_params, shard_degree, largest_unit_params):
        value = candidate(num_params, shard_degree, largest_unit_params)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError(f"fsdp_bytes_per_rank must return a number of bytes, got {type(value).__name__}")
        return _number(value)
    return call


def _memory_variant(mistake):
    def wrong(n, d, u):
        per = {"twelve": 12, "eight": 8}.get(mistake, BYTES_PER_PARAM)
        sharded = n * per / (1 if mistake == "unsharded" else d)
        sharded = math.floor(sharded) if mistake == "floor" else math.ceil(sharded)
        copies = {"no_gather": 0, "one_copy": 1}.get(mistake, 2)
        gathered = copies * u * GATHERED_BYTES_PER_PARAM / (d if mistake == "gather_sharded" else 1)
        return sharded + gathered
    return wrong


_MEMORY_DIAGNOSES = {
    "unsharded": "the model states are not divided by the sharding degree: under ZeRO-3 each rank "
                 "keeps 1/shard_degree of them",
    "twelve": "12 bytes a parameter leaves one thing out: 16 = bf16 parameter (2) + bf16 gradient (2) "
              "+ fp32 master weight, momentum and variance (4 + 4 + 4)",
    "eight": "8 bytes a parameter counts fp32 momentum and variance only: add the bf16 parameter, "
             "its gradient and the fp32 master copy (16 in all)",
    "floor": "rounded down: a rank's chunk is padded, so the bytes round UP (ceil)",
    "no_gather": "the unsharded copy is missing: before a unit runs its parameters are all-gathered "
                 "in bf16 (2 bytes each), for the unit in use and the one prefetched",
    "one_copy": "one unsharded copy counted: FSDP prefetches the next unit while one runs, so two "
                "gathered copies (in use + prefetched) are held",
    "gather_sharded": "the gathered copy is whole (every parameter of the unit), not divided by the "
                      "sharding degree",
}


def _verify_memory(case):
    got, want = float(case.outputs[0]), float(case.expected[0])
    if got == want:
        return None
    for mistake, say in _MEMORY_DIAGNOSES.items():
        if _memory_variant(mistake)(*case.inputs) == got != want:
            return f"{got:,.0f} bytes, expected {want:,.0f}: {say}"
    return f"{got:,.0f} bytes, expected {want:,.0f}"


FSDP_MEMORY = Task(
    chapter="14", number=1, title="FSDP (ZeRO-3) memory per rank", kind=FUNCTION,
    reference=fsdp_memory_reference, make_inputs=_memory_inputs,
    sizes=Sizes(sim=_MEMORY_CASES, hidden=_MEMORY_HIDDEN), adapt=_memory_caller, verify=_verify_memory,
    candidate_name="fsdp_bytes_per_rank", solution="fsdp_bytes_per_rank", no_races=False,
)
check_task1 = FSDP_MEMORY.checker()


# ------------------------------------------------------------------ task 2: 1F1B order

_SCHEDULE_CASES = [(1, 3), (2, 4), (4, 6), (3, 2), (4, 4)]
_SCHEDULE_HIDDEN = [(5, 9), (8, 3)]


def _schedule_inputs(size, gen):
    return size


@reference
def schedule_reference(num_stages, num_microbatches):
    return {"schedules": [P.one_f_one_b_schedule(s, num_stages, num_microbatches) for s in range(num_stages)]}


def _schedule_caller(candidate):
    def call(num_stages, num_microbatches):
        out = []
        for s in range(num_stages):
            actions = candidate(s, num_stages, num_microbatches)
            try:
                actions = [(str(kind), int(j)) for kind, j in actions]
            except (TypeError, ValueError):
                raise TypeError("one_f_one_b must return a list of (kind, micro-batch) pairs such as "
                                "[('F', 0), ('B', 0)]") from None
            out.append(actions)
        return {"schedules": out}
    return call


def _verify_schedule(case):
    p, m = case.inputs
    got, want = case.outputs[0]["schedules"], case.expected[0]["schedules"]
    if got == want:
        return None
    bad_kind = sorted({k for a in got for k, _ in a} - {"F", "B"})
    if bad_kind:
        return f"actions must be 'F' or 'B', got {bad_kind}"
    problem = P.validate_schedule(got, m)
    if problem:
        if problem.startswith("deadlock"):
            problem += (" (with blocking receives the stages' orders must fit: stage s needs stage s-1's "
                        "forward before its own, stage s+1's backward before its own; 1F1B warms up with "
                        "p - s - 1 forwards, fewer on later stages)")
        return problem
    if got == [P.gpipe_schedule(s, p, m) for s in range(p)]:
        return ("that is GPipe's order (every forward, then every backward), not 1F1B's: stage s would hold "
                "all m micro-batches' activations at once")
    for s, actions in enumerate(got):
        if P.in_flight(actions) > p - s:
            return (f"stage {s} holds {P.in_flight(actions)} micro-batches in flight (forwarded, not yet "
                    f"backwarded); 1F1B keeps at most p - s = {p - s}: warm up with p - s - 1 forwards")
    for s, (a, b) in enumerate(zip(got, want)):
        if a != b:
            k = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
            return (f"valid, but not 1F1B's order: stage {s}'s action {k} is {a[k][0]} {a[k][1]}, 1F1B runs "
                    f"{b[k][0]} {b[k][1]} (warm-up forwards, then one forward and one backward in turn, "
                    "then the remaining backwards, micro-batches in order)")
    return "the schedules differ from 1F1B's"


ONE_F_ONE_B = Task(
    chapter="14", number=2, title="the 1F1B pipeline schedule", kind=FUNCTION,
    reference=schedule_reference, make_inputs=_schedule_inputs,
    sizes=Sizes(sim=_SCHEDULE_CASES, hidden=_SCHEDULE_HIDDEN), adapt=_schedule_caller, verify=_verify_schedule,
    candidate_name="one_f_one_b", solution="one_f_one_b", no_races=False,
)
check_task2 = ONE_F_ONE_B.checker()


# ------------------------------------------------------------------ task 3: tensor-parallel MLP

#: (tokens, dim, ffn, world size): world size 1 first (a missing all-reduce passes there)
_TP_CASES = [(5, 8, 12, 1), (7, 8, 12, 2), (3, 16, 24, 4)]
_TP_HIDDEN = [(9, 12, 36, 4)]


def _tp_inputs(size, gen):
    tokens, dim, ffn, world = size
    x = torch.randn(tokens, dim, generator=gen)
    w1 = torch.randn(ffn, dim, generator=gen) / dim ** 0.5
    w3 = torch.randn(ffn, dim, generator=gen) / dim ** 0.5
    w2 = torch.randn(dim, ffn, generator=gen) / ffn ** 0.5
    upstream = torch.randn(tokens, dim, generator=gen)       # the gradient arriving at the output
    return x, w1, w3, w2, upstream, world


@reference
def tp_mlp_reference(x, w1, w3, w2, upstream, world):
    """One process, float64, on the CPU: output, input gradient, weight gradients."""
    x, w1, w3, w2 = (t.detach().cpu().double().requires_grad_() for t in (x, w1, w3, w2))
    y = F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)
    y.backward(upstream.cpu().double())
    return {"y": y.detach(), "dx": x.grad, "dw1": w1.grad, "dw3": w3.grad, "dw2": w2.grad}


def _tp_runner(candidate):
    def run(x, w1, w3, w2, upstream, world):
        # the thread ranks work on the CPU (on a GPU the engine hands the inputs over on the
        # device; autograd would run the ranks' CUDA backward passes on one thread, in turn)
        x, w1, w3, w2, upstream = (t.cpu() for t in (x, w1, w3, w2, upstream))

        def rank(comm):
            r, n = comm.rank, comm.world_size
            xr = x.detach().clone().requires_grad_()
            shards = [w1.chunk(n, 0)[r], w3.chunk(n, 0)[r], w2.chunk(n, 1)[r]]
            shards = [s.detach().clone().requires_grad_() for s in shards]
            y = candidate(xr, *shards, comm)
            if not isinstance(y, torch.Tensor) or y.shape != x.shape:
                raise TypeError(f"tp_mlp must return a tensor shaped like x {tuple(x.shape)}, got "
                                f"{getattr(y, 'shape', type(y).__name__)}")
            y.backward(upstream)
            grads = [None if s.grad is None else s.grad.detach() for s in shards]
            return y.detach(), None if xr.grad is None else xr.grad.detach(), grads

        world_ = dist_comm.ThreadWorld(world, timeout_s=20)
        results = _run_world(rank, world_)
        return {"ranks": results, "log": list(world_.log), "world": world}
    return run


def _run_world(body, world):
    """run_threads on a given world (so its log of collectives can be read afterwards)."""
    import threading

    n = world.world_size
    results, errors = [None] * n, [None] * n

    def target(r):
        try:
            results[r] = body(world.comm(r))
        except BaseException as exc:  # noqa: BLE001 (re-raised in the caller's thread)
            errors[r] = exc
            if not isinstance(exc, dist_comm.Deadlock):
                world.fail(f"rank {r} raised {type(exc).__name__}: {exc}")
        finally:
            world.finish(r)

    threads = [threading.Thread(target=target, args=(r,), daemon=True) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(world.timeout_s + 5)
    real = [e for e in errors if e is not None and not isinstance(e, dist_comm.Deadlock)]
    if real or any(errors):
        raise (real or [e for e in errors if e is not None])[0]
    return results


def _close(a, b, tol=1e-4):
    return a is not None and a.shape == b.shape and torch.allclose(a.double(), b, rtol=tol, atol=tol)


def _verify_tp(case):
    out, want = case.outputs[0], case.expected[0]
    n, ranks = out["world"], out["ranks"]
    at = f"at world size {n}"
    ffn = want["dw1"].shape[0]
    hidden_bytes = case.inputs[0].shape[0] * (ffn // n) * 4     # one rank's column-layer output
    reduces = [b for r, op, b in out["log"] if r == 0 and op == "all_reduce"]   # bytes of each
    y0 = ranks[0][0]
    if not _close(y0, want["y"]):
        if n > 1 and hidden_bytes in reduces:
            return (f"the output is wrong {at}: an all-reduce was applied to the column-parallel layer's "
                    "output; its slices are different hidden features, so summing them mixes features. "
                    "The only forward all-reduce comes after the row-parallel layer w2")
        if n > 1 and _close(y0 * n, want["y"]):
            return (f"the output is 1/{n} of the right one {at}: tensor parallelism SUMS the ranks' partial "
                    "products (an all-reduce), it does not average them")
        x, w1, w3, w2 = (t.cpu().double() for t in case.inputs[:4])
        partial0 = (F.silu(x @ w1.chunk(n, 0)[0].t()) * (x @ w3.chunk(n, 0)[0].t())) @ w2.chunk(n, 1)[0].t()
        if n > 1 and _close(y0, partial0):
            return (f"the output is wrong {at} (right only at world size 1): each rank's w2 product is a "
                    "partial sum over its slice of the hidden layer; all-reduce it "
                    "(reduce_from_parallel)")
        return f"the output differs from one process {at}"
    for r, (y, _, _) in enumerate(ranks):
        if not _close(y, want["y"]):
            return f"rank {r}'s output differs from rank 0's {at}: every rank must end with the whole output"
    for r, (_, dx, grads) in enumerate(ranks):
        if dx is None or any(g is None for g in grads):
            return f"rank {r} got no gradient for its input or a weight shard {at}: keep the computation differentiable"
        if not _close(dx, want["dx"]):
            if n > 1 and _close(dx, want["dx"] * n):
                return (f"the input gradient is {n} times too large {at}: it was summed over ranks twice (the "
                        "all-reduce after w2 must pass its gradient through unchanged: reduce_from_parallel's "
                        "backward is the identity; only copy_to_parallel sums gradients)")
            return (f"rank {r}'s input gradient is wrong {at}: each rank's gradient of x covers only its "
                    "slice of the hidden layer; sum it over ranks in backward (copy_to_parallel on the input)")
        want_w = [want["dw1"].chunk(n, 0)[r], want["dw3"].chunk(n, 0)[r], want["dw2"].chunk(n, 1)[r]]
        for name, g, w in zip(("w1", "w3", "w2"), grads, want_w):
            if not _close(g, w):
                return f"rank {r}'s gradient of its {name} shard is wrong {at}"
    return None


TP_MLP = Task(
    chapter="14", number=3, title="a tensor-parallel SwiGLU MLP", kind=FUNCTION,
    reference=tp_mlp_reference, make_inputs=_tp_inputs, pad_inputs=False,
    sizes=Sizes(sim=_TP_CASES, hidden=_TP_HIDDEN), adapt=_tp_runner, verify=_verify_tp,
    candidate_name="tp_mlp", solution="tp_mlp", no_races=False,
)
check_task3 = TP_MLP.checker()


# ------------------------------------------------------------------ task 4: the dynamic programme

def _hand_case():
    """3 layers, 2 strategies (fast and big, slow and small): the best plan uses exactly the
    budget (a strict < loses it), greedy takes layer 0 fast and then cannot afford the
    layer where speed matters most, and a switch cost decides between two equal plans."""
    time = torch.tensor([[1.0, 2.0], [1.0, 9.0], [1.0, 1.5]], dtype=torch.float64)
    mem = torch.tensor([[3, 1], [3, 1], [3, 1]])
    switch = torch.tensor([[0.0, 0.2], [0.2, 0.0]], dtype=torch.float64)
    return time, mem, 5, switch


def _switch_case():
    """2 layers whose fastest strategies differ: switching between them costs more than it
    saves, so the best plan keeps one strategy (a programme blind to switches does not)."""
    return (torch.tensor([[1.0, 1.1], [1.1, 1.0]], dtype=torch.float64), torch.tensor([[1, 1], [1, 1]]), 2,
            torch.tensor([[0.0, 0.5], [0.5, 0.0]], dtype=torch.float64))


def _infeasible_case():
    return (torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=torch.float64), torch.tensor([[4, 3], [4, 3]]), 5,
            torch.zeros(2, 2, dtype=torch.float64))


def _plan_inputs(size, gen):
    if size == "hand":
        return _hand_case()
    if size == "no plan fits":
        return _infeasible_case()
    if size == "switch":
        return _switch_case()
    layers, strategies = size
    time = torch.rand(layers, strategies, generator=gen, dtype=torch.float64) * 10
    mem = torch.randint(1, 6, (layers, strategies), generator=gen)
    switch = torch.rand(strategies, strategies, generator=gen, dtype=torch.float64) * 2
    switch.fill_diagonal_(0)
    # a budget between the smallest and the largest plan's memory: the constraint bites
    lo, hi = int(mem.min(1).values.sum()), int(mem.max(1).values.sum())
    budget = int(torch.randint(lo, hi + 1, (1,), generator=gen))
    return time, mem, budget, switch


_PLAN_CASES = ["hand", "switch", "no plan fits", (4, 3), (5, 2), (3, 4), (6, 3)]
_PLAN_HIDDEN = [(7, 3), (5, 4)]


@reference
def plan_reference(time, mem, budget, switch):
    best, plan = G.brute_force_plan(time.cpu().numpy(), mem.cpu().numpy(), budget, switch.cpu().numpy())
    return {"time": best, "plan": plan}


def _plan_caller(candidate):
    def call(time, mem, budget, switch):
        out = candidate(time.clone(), mem.clone(), budget, switch.clone())
        if not isinstance(out, tuple) or len(out) != 2:
            raise TypeError("plan_layers must return (total_time, plan): a number and a list with one "
                            "strategy index per layer (or (inf, None) when no plan fits)")
        total, plan = out
        return {"time": float(total), "plan": None if plan is None else [int(s) for s in plan]}
    return call


def _verify_plan(case):
    time, mem, budget, switch = case.inputs
    got, want = case.outputs[0], case.expected[0]
    t, m, sw = time.cpu().numpy(), mem.cpu().numpy(), switch.cpu().numpy()
    if want["plan"] is None:
        if got["plan"] is None and math.isinf(got["time"]):
            return None
        return "no plan fits this budget (every layer's smallest strategy together exceed it): return (inf, None)"
    if got["plan"] is None:
        return f"returned no plan, but one fits: the best takes {want['time']:.4g}"
    plan = got["plan"]
    if len(plan) != t.shape[0] or not all(0 <= s < t.shape[1] for s in plan):
        return f"the plan must hold one strategy index in 0..{t.shape[1] - 1} for each of the {t.shape[0]} layers"
    cost, used = G.plan_cost(t, m, plan, sw)
    if used > budget:
        return f"the plan uses {used} MiB, over the memory budget of {budget} MiB"
    if abs(cost - got["time"]) > 1e-6 * max(1.0, abs(cost)):
        no_switch = sum(t[i, s] for i, s in enumerate(plan))
        why = " (that is without the switch costs between layers)" if abs(no_switch - got["time"]) < 1e-6 else ""
        return f"the returned time {got['time']:.6g} is not the plan's cost {cost:.6g}{why}"
    if cost > want["time"] + 1e-9:
        said = f"the plan takes {cost:.6g}, the best plan (brute force) {want['time']:.6g}"
        why = []
        if plan == G.greedy_plan(t, m, budget, sw)[1]:
            why.append("that is the greedy plan (each layer its fastest strategy that fits); the programme "
                       "must weigh every layer's choice against the memory it leaves the others")
        if G.dp_plan(t, m, budget)[1] == plan:
            why.append("the switch costs between consecutive layers' strategies were left out of the choice")
        best_uses = G.plan_cost(t, m, want["plan"], sw)[1]
        if best_uses == budget and used < budget and G.dp_plan(t, m, budget - 1, sw)[1] == plan:
            why.append(f"the best plan uses exactly the budget ({budget} MiB), which is allowed (memory <= "
                       "budget, not <)")
        return said + "".join(f"; {w}" for w in why)
    return None


PLAN_LAYERS = Task(
    chapter="14", number=4, title="Galvatron's dynamic programme", kind=FUNCTION,
    reference=plan_reference, make_inputs=_plan_inputs, pad_inputs=False, trials=2,
    sizes=Sizes(sim=_PLAN_CASES, hidden=_PLAN_HIDDEN), adapt=_plan_caller, verify=_verify_plan,
    candidate_name="plan_layers", solution="plan_layers", no_races=False,
)
check_task4 = PLAN_LAYERS.checker()


# ------------------------------------------------------------------ planted wrong answers

def _memory_planted(mistake):
    wrong = _memory_variant(mistake)

    def fsdp_bytes_per_rank(num_params, shard_degree, largest_unit_params):
        return wrong(num_params, shard_degree, largest_unit_params)
    return fsdp_bytes_per_rank


FSDP_MEMORY.planted = [
    Planted("not sharded", _memory_planted("unsharded"), "divided by the sharding degree"),
    Planted("12 bytes a parameter", _memory_planted("twelve"), "16 = bf16 parameter"),
    Planted("optimizer moments only", _memory_planted("eight"), "8 bytes"),
    Planted("rounded down", _memory_planted("floor"), "round up"),
    Planted("no gathered copy", _memory_planted("no_gather"), "all-gathered"),
    Planted("no prefetched copy", _memory_planted("one_copy"), "prefetch"),
    Planted("gathered copy sharded", _memory_planted("gather_sharded"), "whole"),
    Planted("the package's own", lambda n, d, u: dist_fsdp.fsdp_memory_bytes(n, d, u), "instead of computing"),
]


def _warmup_schedule(warmup_of):
    def one_f_one_b(stage, num_stages, num_microbatches):
        w = min(warmup_of(stage, num_stages), num_microbatches)
        actions = [("F", j) for j in range(w)]
        for j in range(num_microbatches - w):
            actions += [("F", w + j), ("B", j)]
        return actions + [("B", j) for j in range(num_microbatches - w, num_microbatches)]
    return one_f_one_b


def _gpipe(stage, num_stages, num_microbatches):
    return [("F", j) for j in range(num_microbatches)] + [("B", j) for j in range(num_microbatches)]


def _backward_reversed(stage, num_stages, num_microbatches):
    # 1F1B's steady state, but the drain runs the last micro-batch first
    w = min(num_stages - stage - 1, num_microbatches)
    actions = [("F", j) for j in range(w)]
    for j in range(num_microbatches - w):
        actions += [("F", w + j), ("B", j)]
    return actions + [("B", j) for j in reversed(range(num_microbatches - w, num_microbatches))]


def _last_microbatch_dropped(stage, num_stages, num_microbatches):
    return _warmup_schedule(lambda s, p: p - s - 1)(stage, num_stages, max(num_microbatches - 1, 1)) \
        if num_microbatches > 1 else [("F", 0), ("B", 0)]


ONE_F_ONE_B.planted = [
    Planted("GPipe's order", _gpipe, "GPipe"),
    Planted("one warm-up forward too many", _warmup_schedule(lambda s, p: p - s), "in flight"),
    Planted("every stage warms up p - 1", _warmup_schedule(lambda s, p: p - 1), "in flight"),
    Planted("warm-up counts reversed (deadlocks)", _warmup_schedule(lambda s, p: s), "deadlock"),
    Planted("no warm-up", _warmup_schedule(lambda s, p: 0), "not 1F1B's order"),
    Planted("drain in reverse", _backward_reversed, "not 1F1B's order"),
    Planted("last micro-batch dropped", _last_microbatch_dropped, "once"),
    Planted("the package's own", lambda s, p, m: P.one_f_one_b_schedule(s, p, m), "instead of computing"),
]


def _tp_planted(mistake):
    def tp_mlp(x, w1, w3, w2, comm):
        if mistake != "no_input_sum":
            x = dist_comm.copy_to_parallel(x, comm)
        a, b = x @ w1.t(), x @ w3.t()
        if mistake == "reduce_column":
            a = dist_comm.reduce_from_parallel(a, comm)
        hidden = F.silu(b) * a if mistake == "silu_on_w3" else F.silu(a) * b
        y = hidden @ w2.t()
        if mistake == "no_reduce":
            return y
        if mistake == "summed_twice":
            return _AllReduceBothWays.apply(y, comm)
        y = dist_comm.reduce_from_parallel(y, comm)
        return y / comm.world_size if mistake == "average" else y
    return tp_mlp


class _AllReduceBothWays(torch.autograd.Function):
    """An all-reduce whose backward all-reduces too (a plausible 'symmetric' mistake)."""

    @staticmethod
    def forward(ctx, y, comm):
        ctx.comm = comm
        return comm.all_reduce(y)

    @staticmethod
    def backward(ctx, grad):
        return ctx.comm.all_reduce(grad), None


TP_MLP.planted = [
    Planted("all-reduce after the column layer", _tp_planted("reduce_column"), "column-parallel layer's output"),
    Planted("no all-reduce after w2 (right at world size 1 only)", _tp_planted("no_reduce"), "partial sum"),
    Planted("input gradient not summed", _tp_planted("no_input_sum"), "sum it over ranks in backward"),
    Planted("gradients summed twice", _tp_planted("summed_twice"), "twice"),
    Planted("averaged instead of summed", _tp_planted("average"), "SUMS"),
    Planted("silu on the w3 branch", _tp_planted("silu_on_w3"), "differs from one process"),
    Planted("the package's own", lambda x, w1, w3, w2, comm: dist_tp.tp_mlp(x, w1, w3, w2, comm),
            "instead of computing"),
]


def _planted_dp(time, mem, budget, switch=None):
    """A plain-Python copy of the programme for the planted answers (which must not call the
    package's, a marked answer): C[m][s] over memory levels, then the walk back."""
    L, S = time.shape
    sw = [[0.0] * S for _ in range(S)] if switch is None else switch.tolist()
    t, m = time.tolist(), mem.tolist()
    inf = math.inf
    C = [[t[0][s] if m[0][s] <= lvl else inf for s in range(S)] for lvl in range(budget + 1)]
    back = [None]
    for i in range(1, L):
        nxt = [[inf] * S for _ in range(budget + 1)]
        arg = [[0] * S for _ in range(budget + 1)]
        for lvl in range(budget + 1):
            for s in range(S):
                rest = lvl - m[i][s]
                if rest < 0:
                    continue
                k = min(range(S), key=lambda q: C[rest][q] + sw[q][s])
                nxt[lvl][s] = t[i][s] + C[rest][k] + sw[k][s]
                arg[lvl][s] = k
        C = nxt
        back.append(arg)
    if budget < 0:
        return inf, None
    s = min(range(S), key=lambda q: C[budget][q])
    if C[budget][s] == inf:
        return inf, None
    total, plan, lvl = C[budget][s], [s], budget
    for i in range(L - 1, 0, -1):
        prev = back[i][lvl][s]
        lvl -= m[i][s]
        s = prev
        plan.append(s)
    return total, plan[::-1]


def _greedy(time, mem, budget, switch):
    return G.greedy_plan(time.cpu().numpy(), mem.cpu().numpy(), budget, switch.cpu().numpy())


def _unconstrained(time, mem, budget, switch):
    return _planted_dp(time, mem, int(mem.max(1).values.sum()), switch)


def _strict_budget(time, mem, budget, switch):
    return _planted_dp(time, mem, budget - 1, switch)


def _no_switch(time, mem, budget, switch):
    total, plan = _planted_dp(time, mem, budget)
    if plan is None:
        return total, plan
    return G.plan_cost(time.cpu().numpy(), mem.cpu().numpy(), plan, switch.cpu().numpy())[0], plan


def _time_without_switches(time, mem, budget, switch):
    total, plan = _planted_dp(time, mem, budget, switch)
    if plan is None:
        return total, plan
    return float(sum(time[i, s] for i, s in enumerate(plan))), plan


def _always_a_plan(time, mem, budget, switch):
    total, plan = _planted_dp(time, mem, budget, switch)
    if plan is None:     # falls back to the smallest strategies, budget or not
        plan = [int(k) for k in mem.argmin(1)]
        total = G.plan_cost(time.cpu().numpy(), mem.cpu().numpy(), plan, switch.cpu().numpy())[0]
    return total, plan


PLAN_LAYERS.planted = [
    Planted("greedy per layer", _greedy, "greedy plan"),
    Planted("memory budget ignored", _unconstrained, "over the memory budget"),
    Planted("strict budget (<)", _strict_budget, "uses exactly the budget"),
    Planted("switch costs ignored in the choice", _no_switch, "switch costs"),
    Planted("returned time leaves out the switches", _time_without_switches, "without the switch costs"),
    Planted("a plan even when none fits", _always_a_plan, "no plan fits"),
    Planted("the package's own", lambda t, m, b, s: G.dp_plan(t.cpu().numpy(), m.cpu().numpy(), b, s.cpu().numpy()),
            "instead of computing"),
]
