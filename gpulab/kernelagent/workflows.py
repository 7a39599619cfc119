"""Small runnable versions of four papers' loops, with templates where they use an LLM.

Each function keeps the *structure* of the paper's method and replaces the model with
something that runs offline, so the loop, the verifier's role in it and the data it
produces can be run and inspected:

* :func:`forge_loop`: **CudaForge** (arXiv 2511.01884) separates a *Coder* that writes
  kernels from a *Judge* that reads the test result and the hardware feedback and says
  what to change. Here :func:`judge` reads the verifier's verdict and the roofline
  feedback and names one change; :func:`coder` applies exactly that change.
* :func:`feature_search_and_reinforce`: **CUDA-LLM**'s Feature Search and Reinforcement
  (arXiv 2506.09092): candidates that differ in hardware-relevant features, each checked
  for compilation and correctness on diverse test cases and then timed; the fastest
  correct one steers the next round.
* :func:`contrastive_prompt`: **CUDA-L1**'s contrastive RL (arXiv 2507.14111) puts earlier
  variants *with their measured speedups* into the prompt, so the model compares them
  before it writes the next one.
* :func:`curate`: **ConCuR** (arXiv 2510.07356) builds training data by keeping kernels
  that are correct and faster than torch eager, balancing the kinds of task, and
  preferring *concise* reasoning traces. We have no reasoning traces: the kernel source
  length stands in for the trace length, and says so.

Under the simulator the score of a passing kernel is :func:`.search.modelled_ms`'s model
(labelled); on a GPU it is the verifier's measured speedup.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, replace

from .search import H200_COPY_GBPS, SPACE, Genome, baseline_genome, eager_modelled_ms, modelled_ms, render
from .tasks import get_task

__all__ = ["Critique", "judge", "coder", "forge_loop", "score", "feature_search_and_reinforce",
           "contrastive_prompt", "curate", "arithmetic_and_geometric_mean"]


def score(task, genome: Genome, verdict) -> tuple[float, str]:
    """(speedup over torch eager, how it was obtained) of a verified candidate (0 if it failed)."""
    if not verdict.passed:
        return 0.0, "failed"
    if verdict.timing:
        return float(verdict.speedup), "measured (CUDA events)"
    return eager_modelled_ms(task) / modelled_ms(task, genome), "modelled (not measured)"


def _roofline_share(task, genome: Genome, verdict) -> float:
    """How close to the memory floor: measured on a GPU, from the model under the simulator."""
    if verdict.feedback:
        return float(verdict.feedback["roofline_fraction"])
    task = get_task(task)
    n = 1
    for s in task.timing_shape:
        n *= s
    floor_ms = 2 * 4 * n / (H200_COPY_GBPS * 1e9) * 1e3   # one read, one write at the model's bandwidth
    return floor_ms / modelled_ms(task, genome)


# ------------------------------------------------------------------ CudaForge

@dataclass(frozen=True)
class Critique:
    """The Judge's reading of one attempt: what is wrong or slow, and the one change to make."""
    diagnosis: str
    change: dict            # knob -> new value; empty: nothing left to try

    def __str__(self) -> str:
        todo = ", ".join(f"{k}={v}" for k, v in self.change.items()) or "stop"
        return f"{self.diagnosis} -> {todo}"


def judge(task, genome: Genome, verdict) -> Critique:
    """CudaForge's Judge, as rules: correctness first, then the bottleneck the feedback shows.

    A wrong answer gets the fix its symptom points to; a flagged loophole is named; a
    correct kernel gets the change that moves the most bytes off its path (fusing the
    chain, coalescing, larger blocks, more work per thread), judged by its share of the
    roofline.
    """
    task = get_task(task)
    if set(verdict.flags) == {"shape_dependent"}:
        return Critique("right on the default size only: the grid rounds down and misses the last "
                        "partial block", {"tail": True})
    if verdict.flags:
        return Critique(f"the verifier flags {sorted(verdict.flags)}: not a kernel to build on", {})
    if not verdict.passed:
        if "never written" in verdict.message or "NaN" in verdict.message:
            return Critique("elements at the end were never written: the grid rounds down", {"tail": True})
        return Critique(f"wrong values ({verdict.message[:80]})", {"tail": True})
    share = _roofline_share(task, genome, verdict)
    where = f"correct, at {100 * share:.0f}% of the memory roofline"
    if not genome.fuse and len(task.chain) > 1:
        return Critique(f"{where}; {len(task.chain)} kernels each read and write all of memory", {"fuse": True})
    if genome.layout == "contiguous" and genome.items > 1:
        return Critique(f"{where}; neighbouring threads read addresses {genome.items} apart (uncoalesced)",
                        {"layout": "strided"})
    blocks = SPACE["block"]
    if genome.block != blocks[-1] and share < 0.6:
        return Critique(f"{where}; small blocks keep few warps in flight", {"block": blocks[blocks.index(genome.block) + 1]})
    if genome.items < 4 and share < 0.8:
        return Critique(f"{where}; {genome.items} element(s) per thread leave few loads in flight", {"items": genome.items * 2})
    return Critique(f"{where}: little left to gain", {})


def coder(genome: Genome, critique: Critique) -> Genome:
    """CudaForge's Coder, acting only on the Judge's advice: apply its one change."""
    return replace(genome, **critique.change)


def forge_loop(task, verifier, rounds: int = 3, start: Genome | None = None) -> list[dict]:
    """Coder -> verifier -> Judge -> Coder ...: one step per round, each recorded."""
    task = get_task(task)
    genome = start or baseline_genome()
    steps = []
    for r in range(rounds):
        verdict = verifier.verify(task, render(task, genome))
        speedup, how = score(task, genome, verdict)
        critique = judge(task, genome, verdict)
        steps.append({"round": r, "genome": genome, "status": verdict.status, "speedup": speedup,
                      "scored": how, "critique": critique})
        if not critique.change:
            break
        genome = coder(genome, critique)
    return steps


# ------------------------------------------------------------------ CUDA-LLM (FSR)

def _neighbours(g: Genome) -> list[Genome]:
    """Genomes one step away in block size or items per thread (the features searched)."""
    out = []
    for knob in ("block", "items"):
        values = SPACE[knob]
        i = values.index(getattr(g, knob))
        for j in (i - 1, i + 1):
            if 0 <= j < len(values):
                out.append(replace(g, **{knob: values[j]}))
    return out


def feature_search_and_reinforce(task, verifier, rounds: int = 2, width: int = 3) -> list[dict]:
    """Round 0 searches the features (block size x items per thread) of a fused kernel;
    every candidate must compile and pass the verifier's diverse cases before its time
    counts; each later round *reinforces* the fastest correct one, trying its neighbours.
    Returns one entry per round: the candidates tried and the best so far."""
    task = get_task(task)
    base = replace(baseline_genome(), fuse=True)
    blocks, items = SPACE["block"], SPACE["items"]
    candidates = [replace(base, block=b, items=i) for b, i in
                  zip(blocks[:width], (items[0], items[1], items[2])[:width])]
    tried: dict[tuple, tuple[float, str]] = {}
    best, best_score, log = None, 0.0, []
    for r in range(rounds):
        round_rows = []
        for g in candidates:
            if g.key() in tried:
                continue
            verdict = verifier.verify(task, render(task, g))
            tried[g.key()] = s = score(task, g, verdict)
            round_rows.append({"genome": g, "status": verdict.status, "speedup": s[0], "scored": s[1]})
            if s[0] > best_score:
                best, best_score = g, s[0]
        log.append({"round": r, "tried": round_rows, "best": best, "best_speedup": best_score})
        if best is None:
            break
        candidates = [n for n in _neighbours(best) if n.key() not in tried][:width]
        if not candidates:
            break
    return log


# ------------------------------------------------------------------ CUDA-L1

def contrastive_prompt(task, records: list[dict], k: int = 3) -> str:
    """A CUDA-L1 style prompt: the task, then ``k`` earlier *correct* variants with their
    speedups (fastest, middle, slowest), and the instruction to compare them first."""
    task = get_task(task)
    good = sorted((r for r in records if r["status"] == "pass" and r.get("speedup")),
                  key=lambda r: -r["speedup"])
    if not good:
        raise ValueError("no correct variant with a speedup to contrast yet")
    picks = [good[0], good[len(good) // 2], good[-1]][:k] if len(good) >= 3 else good[:k]
    lines = [f"Task: {task.description}.", "Earlier correct variants and their speedups over torch eager:"]
    for i, rec in enumerate(picks, 1):
        label = rec.get("genome") or {}
        lines.append(f"  variant {i}: speedup {rec['speedup']:.2f}x ({rec.get('clock')}); knobs {label}")
    lines.append("First explain why the fastest variant is faster than the others; then write a "
                 "kernel that should beat it. Only a correct kernel earns a reward (its speedup).")
    return "\n".join(lines)


# ------------------------------------------------------------------ ConCuR

def _tokens(source: str) -> int:
    return len(source.split())


def curate(records: list[dict], min_speedup: float = 1.0, per_task: int = 2) -> list[dict]:
    """ConCuR's two criteria on our records: (1) correct and faster than torch eager by
    more than ``min_speedup``; (2) concise, here the *kernel source* in whitespace tokens
    (ConCuR measures the reasoning trace, which we do not have). Duplicates (the same
    source) are dropped and each task keeps at most ``per_task`` records, so no one task
    dominates the data."""
    seen, by_task = set(), {}
    for rec in records:
        if rec["status"] != "pass" or not rec.get("speedup") or rec["speedup"] <= min_speedup:
            continue
        source = " ".join(rec["source"].split())
        if source in seen:
            continue
        seen.add(source)
        by_task.setdefault(rec["task"], []).append(rec)
    kept = []
    for task_records in by_task.values():
        # concise first; among equally long ones, the faster
        task_records.sort(key=lambda r: (_tokens(r["source"]), -r["speedup"]))
        kept.extend(dict(r, tokens=_tokens(r["source"])) for r in task_records[:per_task])
    return kept


def arithmetic_and_geometric_mean(speedups) -> tuple[float, float, float]:
    """(arithmetic mean, geometric mean, median) of positive speedups."""
    values = [float(s) for s in speedups]
    geo = statistics.geometric_mean(values)
    return statistics.fmean(values), geo, statistics.median(values)
