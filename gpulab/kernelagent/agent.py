"""The agent loop of CudaForge / CUDA-L1 / robust-kbench: propose, verify, time, keep the best.

Every candidate is appended to a JSONL dataset (one JSON object a line: task, round,
proposer, source, verdict, speedup). That file is what ConCuR and CUDA-L1 build their
training data and rewards from: a (reference, kernel, verdict, speedup) record per try,
with the reward for a correct kernel its speedup and for a wrong or cheating one zero.
:func:`reward` is that rule.

A proposer is anything with ``propose(task, history) -> list[(genome_or_None, source)]``:
the offline :class:`~.search.EvolutionaryProposer` or the LLM's
:class:`~.llm.ChatProposer`.
"""
from __future__ import annotations

import datetime
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .. import runtime
from .search import Scored, eager_modelled_ms, modelled_ms
from .tasks import get_task
from .verifier import Verifier

__all__ = ["run_search", "SearchRound", "record", "load_dataset", "reward"]


def reward(verdict) -> float:
    """CUDA-L1's speedup reward: the speedup of a correct kernel, 0 for anything else."""
    if not verdict.passed or verdict.speedup is None or not math.isfinite(verdict.speedup):
        return 0.0
    return float(verdict.speedup)


def record(path, task: str, round_: int, proposer: str, source: str, verdict, genome=None,
           speedup: float | None = None, clock: str | None = None) -> dict:
    """Append one candidate to the JSONL dataset at ``path``; return the record."""
    entry = {
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
        "task": task, "round": round_, "proposer": proposer,
        "genome": None if genome is None else genome.__dict__,
        "source": source, "status": verdict.status, "flags": verdict.flags,
        "message": verdict.message[:500], "max_abs_error": verdict.max_abs_error,
        "candidate_ms": verdict.candidate_ms, "speedup": speedup,
        "clock": clock, "reward": speedup if (verdict.passed and speedup) else 0.0,
    }
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")
    return entry


def load_dataset(path) -> list[dict]:
    """The records of a JSONL dataset, in order."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no dataset at {path}; run a search with dataset={str(path)!r} first")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class SearchRound:
    round: int
    tried: int
    passed: int
    best_speedup: float           # best so far, over all rounds up to this one
    best_label: str
    history: list = field(default_factory=list, repr=False)


def run_search(task, proposer, rounds: int = 4, verifier: Verifier | None = None,
               dataset=None, progress: bool = False) -> list[SearchRound]:
    """Run ``rounds`` of propose -> verify -> score; return the best-so-far per round.

    The score of a candidate that passes is its speedup over torch eager: measured (CUDA
    events) when the verifier times on a GPU, else :func:`~.search.modelled_ms` (the record
    says which in ``clock``). Failed candidates score 0.
    """
    task = get_task(task)
    own = verifier is None
    verifier = verifier or Verifier()
    history: list[Scored] = []
    out: list[SearchRound] = []
    best, best_label = 0.0, "none yet"
    name = getattr(proposer, "name", type(proposer).__name__)
    try:
        iterator = range(rounds)
        if progress:
            from tqdm.auto import tqdm
            iterator = tqdm(iterator, desc=f"search on {task.name}")
        for r in iterator:
            proposals = proposer.propose(task, history)
            passed = 0
            for genome, source in proposals:
                verdict = verifier.verify(task, source)
                if verdict.timing:
                    speedup, clock = verdict.speedup, verdict.timing["candidate"]["clock"]
                elif genome is not None:
                    speedup, clock = eager_modelled_ms(task) / modelled_ms(task, genome), "modelled (not measured)"
                else:
                    speedup, clock = None, None
                ok = verdict.passed
                passed += ok
                history.append(Scored(genome, ok, speedup if ok and speedup else 0.0, verdict, source))
                if dataset is not None:
                    record(dataset, task.name, r, name, source, verdict, genome, speedup, clock)
                if ok and speedup and speedup > best:
                    best = speedup
                    best_label = genome.label() if genome is not None else "proposed source"
            out.append(SearchRound(r, len(proposals), passed, best, best_label, list(history)))
    finally:
        if own:
            verifier.close()
    return out
