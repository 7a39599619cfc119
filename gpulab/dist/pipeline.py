"""Pipeline parallelism: stage s of p holds a contiguous slice of the blocks.

A batch is cut into m micro-batches. A *schedule* is, for each stage, the order of its
actions ``("F", j)`` (forward of micro-batch j) and ``("B", j)`` (its backward). Stage s
receives the activation of micro-batch j from stage s-1 before ``F j`` and sends its own
to stage s+1 after; the gradients flow the other way in ``B j``.

* GPipe (Huang et al., arXiv 1811.06965): every forward, then every backward. Stage s keeps
  m micro-batches' activations.
* 1F1B (PipeDream-Flush, Narayanan et al., arXiv 2006.09503): stage s runs ``p - s - 1``
  warm-up forwards, then alternates one forward and one backward, then drains the
  remaining backwards. At most ``p - s`` micro-batches are in flight on stage s, so the
  activation memory is bounded by p, not m; the bubble is the same.

With equal stages and a backward twice the forward, both leave each stage idle for a
fraction ``(p - 1) / (m + p - 1)`` of the step: the *bubble*.

``run_schedule`` executes a schedule on any ``Comm`` (gloo processes, or threads); sends
are non-blocking, receives block, so a schedule whose orders do not fit together
deadlocks (the thread world says so at once). Native: ``torch.distributed.pipelining``'s
``PipelineStage`` with ``ScheduleGPipe``, ``Schedule1F1B`` and ``ScheduleInterleaved1F1B``.
"""
from __future__ import annotations

import torch
from torch import nn

from .comm import Comm
from .groups import member
from .model import ModelConfig, Transformer, build_model, loss_fn, synthetic_batch

__all__ = ["gpipe_schedule", "one_f_one_b_schedule", "bubble_fraction", "validate_schedule", "in_flight",
           "simulate_timeline", "stage_layers", "build_stage", "run_schedule", "pipeline_by_hand",
           "pipeline_native", "hybrid_3d"]


def _check(stage: int, num_stages: int, num_microbatches: int) -> None:
    if num_stages < 1 or num_microbatches < 1:
        raise ValueError(f"need at least one stage and one micro-batch, got p={num_stages}, m={num_microbatches}")
    if not 0 <= stage < num_stages:
        raise ValueError(f"stage must be in 0..{num_stages - 1}, got {stage}")


def gpipe_schedule(stage: int, num_stages: int, num_microbatches: int) -> list[tuple[str, int]]:
    """All forwards, then all backwards (in reverse micro-batch order is not needed: any
    order works for the backward as long as the stages agree; GPipe runs them in order)."""
    _check(stage, num_stages, num_microbatches)
    return [("F", j) for j in range(num_microbatches)] + [("B", j) for j in range(num_microbatches)]


def one_f_one_b_schedule(stage: int, num_stages: int, num_microbatches: int) -> list[tuple[str, int]]:
    """1F1B: ``min(p - s - 1, m)`` warm-up forwards, then one forward and one backward in
    turn, then the remaining backwards."""
    _check(stage, num_stages, num_microbatches)
    warmup = min(num_stages - stage - 1, num_microbatches)
    actions = [("F", j) for j in range(warmup)]
    for j in range(num_microbatches - warmup):
        actions += [("F", warmup + j), ("B", j)]
    actions += [("B", j) for j in range(num_microbatches - warmup, num_microbatches)]
    return actions


def bubble_fraction(num_stages: int, num_microbatches: int) -> float:
    """Idle fraction of each stage in GPipe and 1F1B: ``(p - 1) / (m + p - 1)``."""
    _check(0, num_stages, num_microbatches)
    return (num_stages - 1) / (num_microbatches + num_stages - 1)


def in_flight(actions) -> int:
    """Most micro-batches forwarded but not yet backwarded at any point of one stage's order."""
    live = peak = 0
    for kind, _ in actions:
        live += 1 if kind == "F" else -1
        peak = max(peak, live)
    return peak


def validate_schedule(schedules: list[list[tuple[str, int]]], num_microbatches: int) -> str | None:
    """None if every stage runs F j and B j once each, F before B, and the orders fit
    together across stages; else a sentence naming the first problem."""
    for s, actions in enumerate(schedules):
        for kind in ("F", "B"):
            seen = sorted(j for k, j in actions if k == kind)
            if seen != list(range(num_microbatches)):
                return f"stage {s} runs {kind} for micro-batches {seen}, expected each of 0..{num_microbatches - 1} once"
        done_f = set()
        for kind, j in actions:
            if kind == "F":
                done_f.add(j)
            elif j not in done_f:
                return f"stage {s} runs B {j} before F {j}"
    times = simulate_timeline(schedules)
    if isinstance(times, str):
        return times
    return None


def simulate_timeline(schedules, forward: float = 1.0, backward: float = 2.0):
    """Start and end time of every action when stage s waits for its inputs: ``F j`` after
    stage s-1's ``F j``, ``B j`` after stage s+1's ``B j`` (and each stage one action at a
    time, in its order). Returns ``{(stage, kind, j): (start, end)}``, or a sentence if the
    orders deadlock (no stage can take its next action)."""
    p = len(schedules)
    pos, clock, done = [0] * p, [0.0] * p, {}
    total = sum(len(a) for a in schedules)
    while len(done) < total:
        moved = False
        for s in range(p):
            if pos[s] >= len(schedules[s]):
                continue
            kind, j = schedules[s][pos[s]]
            dep = (s - 1, "F", j) if kind == "F" and s > 0 else (s + 1, "B", j) if kind == "B" and s < p - 1 else None
            if kind == "B" and (s, "F", j) not in done:
                return f"stage {s} runs B {j} before F {j}"
            if dep is not None and dep not in done:
                continue
            start = max(clock[s], done[dep][1] if dep is not None else 0.0)
            end = start + (forward if kind == "F" else backward)
            done[(s, kind, j)] = (start, end)
            clock[s], pos[s], moved = end, pos[s] + 1, True
        if not moved:
            waits = [f"stage {s} waits to run {schedules[s][pos[s]][0]} {schedules[s][pos[s]][1]}"
                     for s in range(p) if pos[s] < len(schedules[s])]
            return "deadlock: " + "; ".join(waits)
    return done


# ------------------------------------------------------------------ running a pipeline

def stage_layers(n_layers: int, num_stages: int, stage: int) -> list[int]:
    """The blocks of ``stage``: contiguous, as equal as can be (earlier stages get the extra)."""
    base, extra = divmod(n_layers, num_stages)
    start = stage * base + min(stage, extra)
    return list(range(start, start + base + (stage < extra)))


def build_stage(cfg: ModelConfig, stage: int, num_stages: int, device="cpu") -> Transformer:
    """The whole model with what ``stage`` does not own removed (TorchTitan's manual split):
    the first stage keeps the embedding, the last the final norm and output."""
    if num_stages > cfg.n_layers:
        raise ValueError(f"{num_stages} stages need at least as many blocks, the model has {cfg.n_layers}")
    model = build_model(cfg, device=device)
    keep = set(stage_layers(cfg.n_layers, num_stages, stage))
    for i in range(cfg.n_layers):
        if i not in keep:
            del model.layers[str(i)]
    if stage > 0:
        model.tok_embeddings = None
    if stage < num_stages - 1:
        model.norm = model.output = None
    return model


def run_schedule(stage_module: nn.Module, actions, comm: Comm, stage: int, num_stages: int,
                 micro_inputs, micro_labels, act_shape):
    """Run one stage's ``actions``; the stage of rank r is r. Returns the summed loss of
    the micro-batches (on the last stage; 0 elsewhere). Each micro-batch's loss is
    divided by m, so the accumulated gradients are those of the batch mean."""
    m = len(micro_labels)
    inputs, outputs, losses = {}, {}, {}
    for kind, j in actions:
        if kind == "F":
            if stage == 0:
                x = micro_inputs[j]
            else:
                x = comm.recv(act_shape, torch.float32, stage - 1).requires_grad_()
            y = stage_module(x)
            inputs[j] = x
            if stage == num_stages - 1:
                losses[j] = loss_fn(y, micro_labels[j]) / m
            else:
                outputs[j] = y
                comm.send(y.detach(), stage + 1)
        else:
            if stage == num_stages - 1:
                losses[j].backward()
            else:
                grad = comm.recv(act_shape, torch.float32, stage + 1)
                outputs.pop(j).backward(grad)
            x = inputs.pop(j)
            if stage > 0:
                comm.send(x.grad, stage - 1)
    comm.flush()
    return float(sum(l.detach() for l in losses.values())) if losses else 0.0


SCHEDULES = {"gpipe": gpipe_schedule, "1f1b": one_f_one_b_schedule}


def _gather_grads(model: nn.Module, comm: Comm, stage: int) -> dict | None:
    """Every stage's gradients, by one-process name, collected on stage 0 (an all-gather
    of each stage's flat gradient would need equal sizes; send/recv of a dict is simpler:
    this returns the stage's own, the caller merges)."""
    return {n: p.grad.detach().cpu().clone() for n, p in model.named_parameters()}


def pipeline_by_hand(cfg: ModelConfig, batch: int, size: int, num_microbatches: int,
                     schedule: str = "1f1b", seed: int = 0):
    """One pipeline step by hand on ``size`` ranks (rank = stage): ``(loss on the last
    stage, this stage's grads)``."""
    setup = member(size)
    if setup is None:
        return None
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
    if batch % num_microbatches:
        raise ValueError(f"batch {batch} is not a multiple of {num_microbatches} micro-batches")
    tokens, labels = synthetic_batch(cfg, batch, seed=seed, device=setup.device)
    model = build_stage(cfg, setup.rank, size, setup.device)
    actions = SCHEDULES[schedule](setup.rank, size, num_microbatches)
    mb = batch // num_microbatches
    loss = run_schedule(model, actions, setup.comm, setup.rank, size, tokens.split(mb), labels.split(mb),
                        (mb, tokens.shape[1], cfg.dim))
    return loss, _gather_grads(model, setup.comm, setup.rank)


def pipeline_native(cfg: ModelConfig, batch: int, size: int, num_microbatches: int,
                    schedule: str = "1f1b", seed: int = 0):
    """The same step with ``torch.distributed.pipelining``: ``"gpipe"``, ``"1f1b"``, or
    ``"interleaved"`` (``ScheduleInterleaved1F1B``, two stages per rank: rank r holds
    stages r and r + size)."""
    from torch.distributed.pipelining import (PipelineStage, Schedule1F1B, ScheduleGPipe,
                                              ScheduleInterleaved1F1B)

    setup = member(size)
    if setup is None:
        return None
    tokens, labels = synthetic_batch(cfg, batch, seed=seed, device=setup.device)
    r = setup.rank
    if schedule == "interleaved":
        n_stages = 2 * size
        models = [build_stage(cfg, s, n_stages, setup.device) for s in (r, r + size)]
        stages = [PipelineStage(m, s, n_stages, setup.device, group=setup.group)
                  for m, s in zip(models, (r, r + size))]
        sched = ScheduleInterleaved1F1B(stages, n_microbatches=num_microbatches, loss_fn=loss_fn)
        last = r == size - 1       # holds the final stage 2 * size - 1
    else:
        models = [build_stage(cfg, r, size, setup.device)]
        cls = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[schedule]
        sched = cls(PipelineStage(models[0], r, size, setup.device, group=setup.group),
                    n_microbatches=num_microbatches, loss_fn=loss_fn)
        last = r == size - 1
    losses: list = []
    kwargs = {"target": labels, "losses": losses} if last else {}
    if r == 0:
        sched.step(tokens, **kwargs)
    else:
        sched.step(**kwargs)
    loss = float(sum(l.detach() for l in losses) / num_microbatches) if losses else 0.0
    grads = {}
    for m in models:
        grads.update({n: p.grad.detach().cpu().clone() for n, p in m.named_parameters()})
    return loss, grads


def hybrid_3d(cfg: ModelConfig, batch: int, num_microbatches: int = 2, pp: int = 2, dp: int = 1, tp_degree: int = 2,
              seed: int = 0):
    """A 3D step on a ``("pp", "dp", "tp")`` mesh of the pool's first ``pp * dp * tp`` ranks,
    composed as TorchTitan composes it: each pipeline stage (the manual split) gets
    TorchTitan's tensor-parallel plan over ``tp`` (its root entries only where the stage has
    the module; logits replicated, so the schedule's loss is the plain one), then
    ``fully_shard`` over ``dp``, then ``PipelineStage`` over ``pp`` with 1F1B. Each dp group
    takes its slice of the batch. Returns ``(loss, this stage's full grads)``."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B
    from torch.distributed.tensor.parallel import parallelize_module

    from .groups import mesh_of
    from .tp import torchtitan_plan

    mesh = mesh_of((pp, dp, tp_degree), ("pp", "dp", "tp"))
    if mesh is None:
        return None
    device = torch.device("cuda", torch.cuda.current_device()) if mesh.device_type == "cuda" else torch.device("cpu")
    stage_id, d = mesh["pp"].get_local_rank(), mesh["dp"].get_local_rank()
    tokens, labels = synthetic_batch(cfg, batch, seed=seed, device=device)
    tokens, labels = tokens.chunk(dp)[d], labels.chunk(dp)[d]
    stage = build_stage(cfg, stage_id, pp, device)
    root, block_plan = torchtitan_plan(loss_parallel=False)
    parallelize_module(stage, mesh["tp"], {k: v for k, v in root.items() if getattr(stage, k) is not None})
    for block in stage.layers.values():
        parallelize_module(block, mesh["tp"], block_plan)
    for block in stage.layers.values():
        fully_shard(block, mesh=mesh["dp"])
    fully_shard(stage, mesh=mesh["dp"])
    schedule = Schedule1F1B(PipelineStage(stage, stage_id, pp, device, group=mesh["pp"].get_group()),
                            n_microbatches=num_microbatches, loss_fn=loss_fn)
    losses: list = []
    last = stage_id == pp - 1
    kwargs = {"target": labels, "losses": losses} if last else {}
    if stage_id == 0:
        schedule.step(tokens, **kwargs)
    else:
        schedule.step(**kwargs)
    loss = torch.tensor(float(sum(l.detach() for l in losses) / num_microbatches) if losses else 0.0, device=device)
    if last and dp > 1:
        dist.all_reduce(loss, group=mesh["dp"].get_group())
        loss /= dp
    return float(loss), {n: p.grad.full_tensor().cpu().clone() for n, p in stage.named_parameters()}
