"""An offline proposer: evolutionary search over kernel variants, scored by the verifier.

This is a *search baseline*, not an LLM. CUDA-L1 and robust-kbench evolve kernels with an
LLM as the mutation operator; here the mutation is a change of one knob in a template, so
the loop around it (propose, verify, time, keep the best) can run with no model at all,
and an LLM proposer (:mod:`.llm`) plugs into the same loop.

A :class:`Genome` picks, for an elementwise chain task (:data:`tasks.CHAIN_OPS`):

* ``block``: threads per block;
* ``items``: elements per thread;
* ``layout``: ``"strided"`` (thread t handles t, t + block, ...: neighbouring threads read
  neighbouring addresses, coalesced) or ``"contiguous"`` (thread t handles a run of
  ``items`` neighbours: each warp touches ``items`` times more memory segments per load);
* ``fuse``: one kernel for the whole chain, or one kernel per op (as torch eager runs it);
* ``unroll``: the per-thread loop written out ``items`` times instead of a ``range`` loop;
* ``tail``: handle the last partial block. ``False`` is the classic bug of rounding the
  grid down: fast, and wrong on every size that is not a multiple of ``block * items``;
  the verifier rejects it, and the search learns to avoid it.

:func:`render` turns a genome into candidate source; :class:`EvolutionaryProposer` mutates
the best genomes so far. Under the simulator a measured time says nothing about a GPU,
so :func:`modelled_ms` gives a labelled *model* (bytes over bandwidth, with an efficiency
per knob) to rank variants; on a GPU the verifier's measured time ranks them.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, replace

from .. import runtime
from .tasks import CHAIN_OPS, Task, get_task

__all__ = ["Genome", "SPACE", "render", "modelled_ms", "eager_modelled_ms", "EvolutionaryProposer",
           "baseline_genome"]

#: the values each knob may take (smaller blocks under the simulator: each thread costs)
SPACE = {
    "block": runtime.pick(sim=(16, 32, 64), gpu=(64, 128, 256, 512, 1024)),
    "items": (1, 2, 4, 8),
    "layout": ("strided", "contiguous"),
    "fuse": (True, False),
    "unroll": (False, True),
    "tail": (True, False),
}


@dataclass(frozen=True)
class Genome:
    block: int
    items: int
    layout: str
    fuse: bool
    unroll: bool
    tail: bool

    def key(self) -> tuple:
        return tuple(asdict(self).values())

    def label(self) -> str:
        return (f"block {self.block}, {self.items}/thread, {self.layout}, "
                f"{'fused' if self.fuse else 'unfused'}{', unrolled' if self.unroll else ''}"
                f"{'' if self.tail else ', NO TAIL'}")

    def mutate(self, rng: random.Random) -> "Genome":
        """The same genome with one knob set to another of its values."""
        knob = rng.choice(sorted(SPACE))
        choices = [v for v in SPACE[knob] if v != getattr(self, knob)]
        return replace(self, **{knob: rng.choice(choices)})

    def crossover(self, other: "Genome", rng: random.Random) -> "Genome":
        return Genome(**{k: getattr(rng.choice((self, other)), k) for k in SPACE})


def baseline_genome() -> Genome:
    """What a first attempt looks like: one kernel per op, one element per thread."""
    return Genome(block=SPACE["block"][1], items=1, layout="strided", fuse=False, unroll=False, tail=True)


def random_genome(rng: random.Random) -> Genome:
    return Genome(**{k: rng.choice(v) for k, v in SPACE.items()})


# --------------------------------------------------------------------- templates

def _chain_expr_lines(chain, indent: str) -> list[str]:
    return [f"{indent}v = {CHAIN_OPS[op][1].format(c=c)}" for op, c in chain]


def _index_expr(g: Genome, k) -> str:
    if g.layout == "strided":
        return f"cuda.blockIdx.x * {g.block * g.items} + cuda.threadIdx.x + {k} * {g.block}"
    return f"(cuda.blockIdx.x * {g.block} + cuda.threadIdx.x) * {g.items} + {k}"


def _kernel_source(name: str, chain, g: Genome) -> str:
    lines = ["@gpulab.kernel", f"def {name}(x, out):", "    n = out.size"]
    body = []
    guard = "if i < n:"
    if g.unroll:
        for k in range(g.items):
            body += [f"    i = {_index_expr(g, k)}", f"    {guard}", "        v = x[i]"]
            body += _chain_expr_lines(chain, "        ") + ["        out[i] = v"]
    else:
        body += [f"    for k in range({g.items}):", f"        i = {_index_expr(g, 'k')}",
                 f"        {guard}", "            v = x[i]"]
        body += _chain_expr_lines(chain, "            ") + ["            out[i] = v"]
    return "\n".join(lines + body) + "\n"


def render(task, genome: Genome) -> str:
    """Candidate source (``solve(x, out)``) for an elementwise chain ``task``."""
    task = get_task(task)
    if not task.chain:
        raise ValueError(f"task {task.name} is not an elementwise chain; the search templates "
                         "cover chain tasks (chain2, chain4, chain8, relu, sigmoid)")
    g = genome
    per_block = g.block * g.items
    grid = f"math.ceil(n / {per_block})" if g.tail else f"n // {per_block}"
    header = ["import math", "import numba", "import torch", "from numba import cuda", "import gpulab",
              "", f"# variant: {g.label()}", ""]
    if g.fuse:
        kernels = [_kernel_source("fused_chain", task.chain, g)]
        solve = ["def solve(x, out):", "    n = out.numel()", f"    fused_chain[{grid}, {g.block}](x, out)"]
    else:
        kernels = [_kernel_source(f"op{j}", (step,), g) for j, step in enumerate(task.chain)]
        solve = ["def solve(x, out):", "    n = out.numel()", "    src = x"]
        for j in range(len(task.chain)):
            dst = "out" if j == len(task.chain) - 1 else "torch.empty_like(out)"
            solve += [f"    dst = {dst}", f"    op{j}[{grid}, {g.block}](src, dst)", "    src = dst"]
    return "\n".join(header) + "\n\n" + "\n\n".join(kernels) + "\n\n" + "\n".join(solve) + "\n"


# ------------------------------------------------------------------- cost model

H200_COPY_GBPS = 4000.0      # an H200's device-to-device copy, read + write (4.1 TB/s measured)
LAUNCH_US = 3.0              # a kernel launch on the GPU's side (back-to-back launches)


def _efficiency(g: Genome) -> float:
    occupancy = {16: 0.3, 32: 0.45, 64: 0.7}.get(g.block, 0.9)
    coalescing = 1.0 if (g.layout == "strided" or g.items == 1) else 1.0 / min(g.items, 4)
    ilp = 1.0 + 0.05 * (min(g.items, 4) - 1) + (0.02 if g.unroll else 0.0)
    return min(0.95, occupancy * coalescing * ilp)


def modelled_ms(task, genome: Genome, n: int | None = None) -> float:
    """A *model* of the GPU time of ``genome`` on ``n`` elements (default: the timing size).

    Bytes moved over the H200's copy bandwidth times an efficiency per knob, plus launch
    cost. It is a teaching model for ranking variants under the simulator, not a
    measurement: on a GPU the verifier measures.
    """
    task = get_task(task)
    n = n or math.prod(task.timing_shape)
    passes = 1 if genome.fuse else len(task.chain)
    nbytes = passes * 2 * 4 * n
    return passes * LAUNCH_US * 1e-3 + nbytes / (H200_COPY_GBPS * 1e9 * _efficiency(genome)) * 1e3


def eager_modelled_ms(task, n: int | None = None) -> float:
    """The same model for torch eager: one well-tuned kernel per op."""
    task = get_task(task)
    n = n or math.prod(task.timing_shape)
    passes = len(task.chain)
    return passes * LAUNCH_US * 1e-3 + passes * 2 * 4 * n / (H200_COPY_GBPS * 1e9 * 0.9) * 1e3


# ------------------------------------------------------------------- the search

@dataclass
class Scored:
    genome: Genome
    passed: bool
    speedup: float          # 0 for a candidate that failed verification
    verdict: object = None
    source: str = ""


class EvolutionaryProposer:
    """(mu + lambda) evolution: keep the ``elite`` best, fill the population with mutants
    and crossovers of them. Round 0 is the baseline plus random genomes.

    ``propose(task, history)`` returns ``(genome, source)`` pairs never tried before;
    ``history`` is a list of :class:`Scored`.
    """
    name = "evolutionary search (offline baseline, no LLM)"

    def __init__(self, population: int = 6, elite: int = 2, seed: int = 0):
        if population < 2 or not 1 <= elite < population:
            raise ValueError("need population >= 2 and 1 <= elite < population")
        self.population, self.elite = population, elite
        self.rng = random.Random(seed)

    def propose(self, task, history: list[Scored]) -> list[tuple[Genome, str]]:
        seen = {s.genome.key() for s in history}
        fresh: list[Genome] = []

        def offer(g: Genome):
            if g.key() not in seen and g.key() not in {f.key() for f in fresh}:
                fresh.append(g)

        if not history:
            offer(baseline_genome())
        ranked = sorted((s for s in history if s.passed), key=lambda s: -s.speedup)
        parents = [s.genome for s in ranked[: self.elite]]
        attempts = 0
        while len(fresh) < self.population and attempts < 200:
            attempts += 1
            if not parents:
                offer(random_genome(self.rng))
            elif len(parents) > 1 and self.rng.random() < 0.3:
                a, b = self.rng.sample(parents, 2)
                offer(a.crossover(b, self.rng).mutate(self.rng) if self.rng.random() < 0.5
                      else a.crossover(b, self.rng))
            else:
                offer(self.rng.choice(parents).mutate(self.rng))
        return [(g, render(task, g)) for g in fresh]
