"""Chapter 17: LLM kernel agents — tasks, a verifier that is hard to fool, honest timing,
and a loop that proposes, verifies and keeps the best.

    from gpulab.kernelagent import SUITE, Verifier
    with Verifier() as v:
        verdict = v.verify("relu", source)     # source text defining solve(*inputs, out)

Modules: :mod:`.tasks` (the task suite), :mod:`.verifier` (+ :mod:`.worker`, the child
process, :mod:`.isolation`, how it is kept apart, and :mod:`.static_check`, the rules read
from the source), :mod:`.timing` (KernelBench timing, fast_p, the verifier's timed runs),
:mod:`.planted` (planted candidates), :mod:`.search` (offline evolutionary search),
:mod:`.workflows` (CudaForge's Judge, CUDA-LLM's FSR, CUDA-L1's contrastive prompt,
ConCuR's curation, as runnable stand-ins), :mod:`.llm` (an OpenAI-compatible proposer),
:mod:`.agent` (the loop and its dataset), :mod:`.transcompile` (numba.cuda to CPU,
HPCTransCompile's idea). The graded checks of the assignment live with
the course (:mod:`gpulab.course.checks.ch17_kernel_agents`).
"""
from .tasks import Task, SUITE, get_task
from .verifier import Verifier, Verdict, FLAGS, LoopholeCheck, naive_check, audit_task
from .timing import fast_p, geometric_mean_speedup, kernelbench_time, plausible
from .planted import Planted, planted_candidates, get_planted

__all__ = ["Task", "SUITE", "get_task", "Verifier", "Verdict", "FLAGS", "LoopholeCheck",
           "naive_check", "audit_task", "fast_p", "geometric_mean_speedup", "kernelbench_time",
           "plausible", "Planted", "planted_candidates", "get_planted"]
