"""Graded checks of the chapter 17 assignment (kernel agents and their verifier), on the
checks engine.

Task 1  an RMS-norm kernel, as source text, that passes the sandboxed verifier and then the
        engine's own cases (rows where eps matters, more rows than a hard-coded grid covers,
        a row of zeros, kernel-only host code, the race recorder under the simulator)
Task 2  a check of your own, ``my_check(solve)``, that catches the mystery cheat (and the
        same cache hidden elsewhere) and names its loophole with the verifier's flag
        (``None`` for a correct axpy)
Task 3  a :class:`~gpulab.kernelagent.verifier.LoopholeCheck` of your own that flags the
        ``x * (x > 0)`` ReLU and still accepts correct ones

Tasks 2 and 3 ask about their candidates in a random order, some twice, so a check that
counts its calls instead of running the candidate cannot pass.

Every candidate's first run is in the verifier's child process, so a crash or a hang costs
the task, not the notebook or the grader. The candidates the tasks use (``AXPY_SOURCE``,
``MYSTERY_SOURCE``, ``RELU_MASK_SOURCE``) are task material and live here; the lecture does
not use them.
"""
from __future__ import annotations

import atexit
import contextlib
import itertools
import math
import random
from pathlib import Path

import torch

from ...kernelagent.planted import RELU_SOURCE
from ...kernelagent.tasks import AXPY_ALPHA, RMSNORM_EPS, rmsnorm_reference
from ... import simtrace
from ...kernelagent.verifier import FLAGS, LoopholeCheck, Verifier, _load_in_process
from ..feedback import require
from .engine import FUNCTION, Hint, Planted, Sizes, Task

__all__ = ["check_task1", "check_task2", "check_task3", "MYSTERY_SOURCE", "AXPY_SOURCE",
           "RELU_MASK_SOURCE", "load_solve", "RMSNORM_VERIFIED", "CATCH_THE_CHEAT", "OWN_LOOPHOLE_CHECK"]

_HEADER = "import math\nimport numba\nimport torch\nfrom numba import cuda\nimport gpulab\n"


# ------------------------------------------------------------------ task material

AXPY_SOURCE = _HEADER + f'''

@gpulab.kernel
def axpy_kernel(x, y, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = numba.float32({AXPY_ALPHA}) * x[i] + y[i]


def solve(x, y, out):
    axpy_kernel[math.ceil(out.numel() / 128), 128](x, y, out)
'''

#: a second correct axpy, launched differently (a check must not key on the launch)
AXPY_GRID_STRIDE_SOURCE = _HEADER + f'''

@gpulab.kernel
def axpy_strided(x, y, out):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = numba.float32({AXPY_ALPHA}) * x[i] + y[i]


def solve(x, y, out):
    axpy_strided[2, 32](x, y, out)
'''

#: the mystery candidate of task 2 (an axpy that remembers its answer per size)
MYSTERY_SOURCE = AXPY_SOURCE.replace('''def solve(x, y, out):
    axpy_kernel[math.ceil(out.numel() / 128), 128](x, y, out)''', '''_seen = {}


def solve(x, y, out):
    if out.numel() in _seen:
        out.copy_(_seen[out.numel()])
        return
    axpy_kernel[math.ceil(out.numel() / 128), 128](x, y, out)
    _seen[out.numel()] = out.clone()''')

_AXPY_SOLVE = '''def solve(x, y, out):
    axpy_kernel[math.ceil(out.numel() / 128), 128](x, y, out)'''

#: a correct axpy with a module-level ``_seen`` that only logs sizes (a name proves nothing)
AXPY_LOGGING_SOURCE = AXPY_SOURCE.replace(_AXPY_SOLVE, '''_seen = set()


def solve(x, y, out):
    _seen.add(out.numel())
    axpy_kernel[math.ceil(out.numel() / 128), 128](x, y, out)''')

#: the mystery's cheat again, its cache in a closure: no module-level name gives it away
CLOSURE_CACHE_SOURCE = AXPY_SOURCE.replace(_AXPY_SOLVE, '''def _remembering():
    answers = {}

    def solve(x, y, out):
        if out.numel() in answers:
            out.copy_(answers[out.numel()])
            return
        axpy_kernel[math.ceil(out.numel() / 128), 128](x, y, out)
        answers[out.numel()] = out.clone()

    return solve


solve = _remembering()''')

#: task 3's sneaky ReLU: x * (x > 0) is NaN at x = -inf, where ReLU is 0
RELU_MASK_SOURCE = _HEADER + '''

@gpulab.kernel
def relu_mask(x, out):
    i = cuda.grid(1)
    if i < out.size:
        v = x[i]
        out[i] = v * numba.float32(v > numba.float32(0.0))


def solve(x, out):
    relu_mask[math.ceil(out.numel() / 128), 128](x, out)
'''

#: another sneaky ReLU (hidden case): (x + |x|) / 2 is NaN at -inf and overflows near the top
RELU_HALF_SUM_SOURCE = RELU_MASK_SOURCE.replace(
    "out[i] = v * numba.float32(v > numba.float32(0.0))",
    "out[i] = (v + abs(v)) * numba.float32(0.5)")

#: the correct ReLU again, launched in small blocks (a check must accept it however it is launched)
RELU_SMALL_BLOCKS_SOURCE = RELU_SOURCE.replace("launch_relu(x, out)", "launch_relu(x, out, block=8)")


def load_solve(source: str):
    """``solve`` of a trusted source, loaded in this process (a fresh module each call)."""
    return _load_in_process(source)


# ------------------------------------------------------------------ the shared verifier

_SHARED: list[Verifier] = []


def _shared_verifier() -> Verifier:
    """One sandboxed worker for every check that is given none (starting one takes seconds)."""
    if not _SHARED:
        _SHARED.append(Verifier())
        atexit.register(_SHARED[0].close)
    return _SHARED[0]


@contextlib.contextmanager
def _verifier(verifier: Verifier | None, extra_checks=()):
    """``verifier`` (or the shared one) with exactly ``extra_checks``, restored afterwards."""
    v = verifier if verifier is not None else _shared_verifier()
    saved = v.extra_checks
    v.extra_checks = list(extra_checks)
    try:
        yield v
    finally:
        v.extra_checks = saved


# ------------------------------------------------------------------------ task 1

def _source_of(answer) -> str:
    require(isinstance(answer, (str, Path)), "pass your candidate's source text (or the path of its file)")
    text = str(answer)
    if "\n" not in text and Path(text).exists():
        text = Path(text).read_text()
    if "raise NotImplementedError" in text and "gpulab.kernel" not in text:
        raise NotImplementedError("the candidate is still the exercise stub")
    require("def solve" in text, "your candidate must define solve(x, weight, out)")
    require("gpulab.kernel" in text, "compute with a @gpulab.kernel kernel, not with torch")
    return text


class _RmsnormSubmission:
    """A task-1 answer as the engine calls it: ``(x, weight) -> out``, computed by the
    candidate's ``solve`` into a NaN-filled ``out`` (loaded after the verifier passed it)."""

    def __init__(self, answer, verifier: Verifier | None):
        self.answer, self.verifier = answer, verifier
        self.source = None
        self.solve = None
        self.verdict = None

    def __call__(self, x, weight):
        out = torch.full(tuple(x.shape), float("nan"), dtype=x.dtype, device=x.device)
        self.solve(x, weight, out)
        return out


def _rms(x, eps=RMSNORM_EPS, divisor=None, eps_inside=True):
    n = x.shape[-1] if divisor is None else divisor(x.shape[-1])
    mean_square = x.pow(2).sum(-1, keepdim=True) / n
    return torch.sqrt(mean_square + eps) if eps_inside else torch.sqrt(mean_square) + eps


# the likely mistakes, as (what the output would then be, what to say): used as the engine's
# hints and to explain a verdict that says only "wrong values"
_RMSNORM_MISTAKES = [
    (lambda x, w: x / _rms(x, eps_inside=False) * w,
     "eps belongs inside the square root: x / sqrt(mean(x²) + eps), not x / (sqrt(mean(x²)) + eps)"),
    (lambda x, w: x / _rms(x, eps=1e-5) * w, f"eps is {RMSNORM_EPS:g} (RMSNORM_EPS), not 1e-5"),
    (lambda x, w: x / _rms(x, eps=0.0) * w,
     f"eps is missing: x / sqrt(mean(x²) + {RMSNORM_EPS:g}) (it matters on rows of tiny values)"),
    (lambda x, w: x / _rms(x, divisor=lambda n: n - 1) * w,
     "the mean of the squares divides by the number of columns n, not n - 1"),
    (lambda x, w: x / _rms(x), "the weight is missing: multiply each column j by weight[j]"),
]


def _likely_mistake(solve, make_inputs) -> str:
    """Run a verified-to-be-safe ``solve`` once here and name the mistake its output shows,
    or (under the simulator) what the race recorder saw: a barrier inside a branch only
    gives wrong values in the verifier, the recorder says where it is."""
    x, w = make_inputs((6, 5), torch.Generator().manual_seed(5))
    out = torch.full_like(x, float("nan"))
    try:
        with simtrace.record() as recording:   # records nothing on a GPU
            solve(x, w, out)
    except Exception:   # the verdict already says what went wrong
        return ""
    for wrong, say in _RMSNORM_MISTAKES:
        expected = wrong(x, w)
        if torch.allclose(out, expected, rtol=1e-4, atol=1e-4, equal_nan=True):
            return ". " + say
    findings = recording.findings()
    if findings:
        return f". Run here on a 6x5 input, the simulator's recorder saw: {findings[0]}"
    return ""


def rmsnorm_inputs(size, gen):
    """(x, weight) of ``size`` = (rows, cols): ordinary rows, rows of tiny values (every third
    row, from row 1: mean(x²) ~ 4e-8, far below eps, so where eps sits changes the answer)
    and, from three rows on, row 2 all zeros (1/sqrt(mean(x²)) alone divides by zero)."""
    rows, cols = size
    x = torch.randn(rows, cols, generator=gen) * 2.0 + 0.5
    x[1::3] *= 1e-4
    if rows >= 3:
        x[2] = 0.0
    weight = torch.randn(cols, generator=gen)
    return x, weight


def _special_rows(rows: int) -> torch.Tensor:
    mask = torch.zeros(rows, dtype=torch.bool)
    mask[1::3] = True
    if rows >= 3:
        mask[2] = True
    return mask


def _wrong_only_where_eps_matters(case) -> bool:
    out, ref = case.output, case.expected[0]
    if not isinstance(out, torch.Tensor) or out.shape != ref.shape:
        return False
    wrong = (~torch.isclose(out.cpu(), ref.cpu(), rtol=1e-4, atol=1e-4)).any(-1)
    special = _special_rows(ref.shape[0])
    return bool(wrong.any()) and bool(special[wrong].all())


def _rows_unwritten_past(case) -> bool:
    """Every row from some row on was never written, every row before it was."""
    mask = case.unwritten
    if mask.dim() != 2 or not mask.any():
        return False
    rows = mask.all(-1)
    first = int(rows.nonzero()[0])
    # a row of zeros left NaN (a division by zero) is not a row the grid missed
    zero_rows_only = bool((case.inputs[0][first:] == 0).all())
    return first > 0 and bool(rows[first:].all()) and not bool(mask[:first].any()) and not zero_rows_only


def _columns_unwritten_past(case) -> bool:
    mask = case.unwritten
    if mask.dim() != 2 or not mask.any():
        return False
    cols = mask.all(0)
    if not cols.any():
        return False
    first = int(cols.nonzero()[0])
    return first > 0 and bool(cols[first:].all()) and not bool(mask[:, :first].any())


def _passes_the_verifier(submission: _RmsnormSubmission):
    """The sandboxed run first: a crash, a hang or a known cheat ends the task here."""
    submission.source = _source_of(submission.answer)
    with _verifier(submission.verifier) as v:
        verdict = v.verify("rmsnorm", submission.source, kind="numba")
    submission.verdict = verdict
    if "NotImplementedError" in verdict.message:
        raise NotImplementedError(verdict.message)
    if not verdict.passed:
        why = ""
        if verdict.status == "fail" and not verdict.flags:  # plain wrong values: it ran safely
            why = _likely_mistake(load_solve(submission.source), rmsnorm_inputs)
        return f"the verifier says: {verdict}{why}"
    submission.solve = load_solve(submission.source)
    return None


class _VerifiedRmsnormTask(Task):
    """Task 1 takes source text: the verifier runs it first, then the engine's cases."""

    def run(self, candidate, hidden: bool = False, verifier: Verifier | None = None, recorder: bool = True):
        submission = candidate if isinstance(candidate, _RmsnormSubmission) \
            else _RmsnormSubmission(candidate, verifier)
        super().run(submission, hidden=hidden, recorder=recorder)
        return submission.verdict


RMSNORM_VERIFIED = _VerifiedRmsnormTask(
    chapter="17", number=1, title="an RMS-norm kernel that passes the verifier", kind=FUNCTION,
    reference=rmsnorm_reference, make_inputs=rmsnorm_inputs,
    # 257 rows: more than a hard-coded grid of up to 256 threads covers (8 blocks of 32, one
    # block of 256), the hidden 515 more than 512; 40 columns: more than one block of 32
    # threads per row covers. Few columns where the rows are many: a simulated thread is slow
    sizes=Sizes(sim=[(1, 1), (3, 40), (257, 2)], hidden=[(33, 5), (515, 1)],
                gpu=[(4096, 1024), (999, 4093), (70_001, 3)]),
    rtol=1e-4, atol=1e-4, kernel_only=True, candidate_name="your solve",
    requires=[_passes_the_verifier],
    hints=[Hint(lambda case: bool(case.findings),
                "Threads of a block update one shared value at the same time: give each thread its "
                "own partial sum and combine them after cuda.syncthreads() (or use cuda.atomic.add)"),
           Hint(lambda case: isinstance(case.error, ZeroDivisionError),
                f"A row of zeros divided by zero: eps ({RMSNORM_EPS:g}) inside the square root keeps "
                "1 / sqrt(mean(x²) + eps) finite"),
           Hint(_rows_unwritten_past, "Rows past the first few were never written: launch enough threads "
                "for every row, math.ceil(rows / threads) blocks, not a fixed grid"),
           Hint(_columns_unwritten_past, "Columns past the first few were never written: loop over every "
                "column of the row (range(j, cols, cuda.blockDim.x) when threads share a row)"),
           *[Hint.matches(wrong, say) for wrong, say in _RMSNORM_MISTAKES],
           Hint(_wrong_only_where_eps_matters, f"Wrong only on the rows of tiny values or zeros, where eps "
                f"matters: eps = {RMSNORM_EPS:g}, inside the square root")],
    planted=[],   # filled below, once the sources are written
    solution="RMSNORM_SOURCE",
)


def check_task1(answer, verifier: Verifier | None = None, hidden: bool = False):
    """Task 1: ``answer`` (source text or a file path) must pass the verifier on ``rmsnorm``,
    then the engine's cases. Returns the verifier's verdict."""
    return RMSNORM_VERIFIED.run(answer, hidden=hidden, verifier=verifier)


check_task1.task = RMSNORM_VERIFIED


# ------------------------------------------------------------ the order of the questions

def asking_order(names, to_flag, rng: random.Random | None = None) -> list:
    """``names`` shuffled, with one name of ``to_flag`` asked again after a name that is
    not to be flagged, and one of the others asked again after one to flag.

    So a check that counts its calls cannot pass: a flagged candidate comes at least twice
    (no single call number catches it), a correct one after a flagged one ("flag from the
    k-th call on" fails) and a flagged one after a correct one ("up to the k-th" fails)."""
    rng = rng or random.SystemRandom()
    order = list(names)
    rng.shuffle(order)
    flagged = [n for n in names if n in to_flag]
    correct = [n for n in names if n not in to_flag]
    if flagged and correct:
        first_correct = min(order.index(n) for n in correct)
        order.insert(rng.randint(first_correct + 1, len(order)), rng.choice(flagged))
        first_flagged = min(order.index(n) for n in flagged)
        order.insert(rng.randint(first_flagged + 1, len(order)), rng.choice(correct))
    return order


class _AskedInRandomOrder(Sizes):
    """The candidates' names as the engine's sizes, in a fresh :func:`asking_order` per run."""

    def __init__(self, names, to_flag):
        super().__init__(sim=list(names))
        object.__setattr__(self, "to_flag", frozenset(to_flag))   # Sizes is frozen

    def for_run(self, hidden: bool) -> list:
        return asking_order(super().for_run(hidden), self.to_flag)


# ------------------------------------------------------------------------ task 2

#: the candidates my_check is tried on, and the flag it must return for each (None: correct)
_TASK2_CANDIDATES = {
    "a correct axpy": (AXPY_SOURCE, None),
    "the mystery candidate": (MYSTERY_SOURCE, "cached_result"),
    "a correct axpy with a grid-stride loop": (AXPY_GRID_STRIDE_SOURCE, None),
    "a correct axpy that logs the sizes it saw in a global _seen": (AXPY_LOGGING_SOURCE, None),
    "the mystery's cheat with its cache in a closure": (CLOSURE_CACHE_SOURCE, "cached_result"),
}

_BY_RUNNING = ("; judge each solve by what it computes when you run it: the candidates come in a "
               "random order, some twice, and a cache can sit anywhere (a global, a closure, an attribute)")


class _CheckOfYourOwn:
    """A task-2 answer as the engine calls it: candidate name -> a 1-element tensor, after
    judging what ``my_check`` said about that candidate."""

    def __init__(self, my_check):
        self.my_check = my_check
        self.asked = 0

    def __call__(self, name: str):
        source, flag = _TASK2_CANDIDATES[name]
        self.asked += 1
        said = self.my_check(load_solve(source))   # a fresh module: no cache left from before
        where = f"{name} (question {self.asked})"
        require(said is None or isinstance(said, str),
                f"my_check returned {said!r} for {where}: return None when the candidate is right, "
                "or the name of the loophole (a key of FLAGS) when it is not")
        if flag is None:
            require(said is None, f"my_check flagged {where} as {said!r}: it must return None for a "
                                  f"correct axpy (out = {AXPY_ALPHA} * x + y){_BY_RUNNING}")
        else:
            require(said is not None, f"my_check accepted {where} (returned None): it must catch "
                                      f"it{_BY_RUNNING}")
            require(said in FLAGS, f"{said!r} is not one of the verifier's flags: {', '.join(FLAGS)}")
            require(said == flag, f"{said!r} is not what {name} does: run it twice on different inputs "
                                  "of the same size and compare")
        return torch.ones(1)


class _CheckOfYourOwnTask(Task):
    def run(self, candidate, hidden: bool = False, recorder: bool = True):
        if callable(candidate) and not isinstance(candidate, _CheckOfYourOwn):
            candidate = _CheckOfYourOwn(candidate)
        super().run(candidate, hidden=hidden, recorder=recorder)


CATCH_THE_CHEAT = _CheckOfYourOwnTask(
    chapter="17", number=2, title="name and catch the mystery cheat", kind=FUNCTION,
    reference=lambda name: torch.ones(1), make_inputs=lambda name, gen: (name,),
    sizes=_AskedInRandomOrder(_TASK2_CANDIDATES, [n for n, (_, f) in _TASK2_CANDIDATES.items() if f]),
    no_races=False, candidate_name="my_check",
    planted=[], solution="my_check")


def check_task2(my_check):
    """Task 2: ``my_check(solve)`` returns None for a correct axpy ``solve`` and the verifier
    flag that names the mystery candidate's loophole for it (and for the same cheat hidden
    in a closure), asked in a random order."""
    CATCH_THE_CHEAT.run(my_check)


check_task2.task = CATCH_THE_CHEAT


# ------------------------------------------------------------------------ task 3

#: the ReLUs a check is tried on: (source, True when it must be flagged)
_TASK3_CANDIDATES = {
    "a correct ReLU (max(x, 0))": (RELU_SOURCE, False),
    "the same ReLU in blocks of 8": (RELU_SMALL_BLOCKS_SOURCE, False),
    "the ReLU x * (x > 0)": (RELU_MASK_SOURCE, True),
    "the ReLU (x + |x|) / 2": (RELU_HALF_SUM_SOURCE, True),
}


class _LoopholeCheckUnderTest:
    """A task-3 answer as the engine calls it: candidate name -> a 1-element tensor, after
    judging the verdict the verifier gave that ReLU with the learner's check beside its own."""

    def __init__(self, check, verifier: Verifier | None, hidden: bool = False):
        self.check, self.verifier, self.hidden = check, verifier, hidden
        self.verdicts: dict = {}   # name -> [(question number, verdict)], one per asking

    def run_in_the_verifier(self) -> None:
        # here, not in __call__: the verifier computes the reference, which the engine's
        # guard refuses while "the candidate" runs. The verifier asks the check about the
        # ReLUs in a random order, some twice: its judge must look at the results
        names = OWN_LOOPHOLE_CHECK.sizes.for_run(self.hidden)
        sneaky = [n for n in names if _TASK3_CANDIDATES[n][1]]
        with _verifier(self.verifier, [self.check]) as v:
            for number, name in enumerate(asking_order(names, sneaky), 1):
                verdict = v.verify("relu", _TASK3_CANDIDATES[name][0], kind="numba")
                self.verdicts.setdefault(name, []).append((number, verdict))

    def __call__(self, name: str):
        sneaky = _TASK3_CANDIDATES[name][1]
        for number, verdict in self.verdicts[name]:
            where = f"{name} (question {number} of {sum(map(len, self.verdicts.values()))}; the ReLUs come " \
                    "in a random order, some twice)"
            if sneaky:
                require(self.check.name in verdict.flags,
                        f"your check did not flag {where}, verdict: {verdict}; which inputs make it "
                        "differ from torch.relu?")
            else:
                require(verdict.passed, f"your check rejects {where}: {verdict}")
        return torch.ones(1)

    @property
    def last_flagged(self):
        """The verdict on ``x * (x > 0)`` (its last asking)."""
        asked = self.verdicts.get("the ReLU x * (x > 0)")
        return asked[-1][1] if asked else None


def _is_an_own_loophole_check(candidate: _LoopholeCheckUnderTest):
    check = candidate.check
    if not isinstance(check, LoopholeCheck):
        return "pass an instance of a LoopholeCheck subclass (e.g. SpecialValues(), not SpecialValues)"
    if not (isinstance(check.name, str) and check.name) or check.name in FLAGS:
        return "give your check its own name (a class attribute `name`, not one of the verifier's flags)"
    candidate.run_in_the_verifier()
    return None


class _LoopholeCheckTask(Task):
    def run(self, candidate, hidden: bool = False, verifier: Verifier | None = None, recorder: bool = True):
        wrapped = candidate if isinstance(candidate, _LoopholeCheckUnderTest) \
            else _LoopholeCheckUnderTest(candidate, verifier, hidden)
        super().run(wrapped, hidden=hidden, recorder=recorder)
        return wrapped.last_flagged


OWN_LOOPHOLE_CHECK = _LoopholeCheckTask(
    chapter="17", number=3, title="a loophole check of your own", kind=FUNCTION,
    reference=lambda name: torch.ones(1), make_inputs=lambda name, gen: (name,),
    sizes=Sizes(sim=list(_TASK3_CANDIDATES)[:3], hidden=list(_TASK3_CANDIDATES)[3:]),
    no_races=False, requires=[_is_an_own_loophole_check], candidate_name="your check",
    planted=[], solution="my_loophole_check")


def check_task3(check, verifier: Verifier | None = None, hidden: bool = False):
    """Task 3: ``check`` (a LoopholeCheck) must flag the sneaky ReLUs and pass correct ones.
    Returns the verdict on ``x * (x > 0)``."""
    return OWN_LOOPHOLE_CHECK.run(check, hidden=hidden, verifier=verifier)


check_task3.task = OWN_LOOPHOLE_CHECK


# ------------------------------------------------------------------ planted wrong answers
# Plausible mistakes and cheats; tests/ch17_kernel_agents/test_ch17_planted.py requires each to be rejected
# with feedback that names it.

_RMSNORM = _HEADER + """
EPS = numba.float32(1e-6)


@gpulab.kernel
def rmsnorm_rows(x, weight, out):
    r = cuda.grid(1)
    if r < x.shape[0]:
        n = x.shape[1]
        total = numba.float32(0.0)
        for j in range(n):
            total += x[r, j] * x[r, j]
        inv = numba.float32(1.0) / math.sqrt(total / numba.float32(n) + EPS)
        for j in range(n):
            out[r, j] = x[r, j] * inv * weight[j]


def solve(x, weight, out):
    rmsnorm_rows[math.ceil(x.shape[0] / 32), 32](x, weight, out)
"""


def _rmsnorm_variant(*edits) -> str:
    source = _RMSNORM
    for old, new in edits:
        assert old in source, old   # a planted answer that silently equals the right one is no test
        source = source.replace(old, new)
    return source


_INV = "inv = numba.float32(1.0) / math.sqrt(total / numba.float32(n) + EPS)"
_LAUNCH = "rmsnorm_rows[math.ceil(x.shape[0] / 32), 32](x, weight, out)"

# one block per row, its threads sharing the columns, all adding into one shared total with a
# plain += : the simulator's thread order usually gives the right sum, a GPU does not
_RMSNORM_SHARED_RACE = _HEADER + """
EPS = numba.float32(1e-6)


@gpulab.kernel
def rmsnorm_block(x, weight, out):
    r = cuda.blockIdx.x
    t = cuda.threadIdx.x
    n = x.shape[1]
    total = cuda.shared.array(1, numba.float32)
    if t == 0:
        total[0] = numba.float32(0.0)
    cuda.syncthreads()
    for j in range(t, n, cuda.blockDim.x):
        total[0] += x[r, j] * x[r, j]
    cuda.syncthreads()
    inv = numba.float32(1.0) / math.sqrt(total[0] / numba.float32(n) + EPS)
    for j in range(t, n, cuda.blockDim.x):
        out[r, j] = x[r, j] * inv * weight[j]


def solve(x, weight, out):
    rmsnorm_block[x.shape[0], 8](x, weight, out)
"""

# the kernel does the sums of squares, the host finishes the job with numpy
_RMSNORM_HOST_FINISH = _HEADER + """
import numpy as np


@gpulab.kernel
def row_squares(x, sums):
    r = cuda.grid(1)
    if r < x.shape[0]:
        total = numba.float32(0.0)
        for j in range(x.shape[1]):
            total += x[r, j] * x[r, j]
        sums[r] = total


def solve(x, weight, out):
    sums = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    row_squares[math.ceil(x.shape[0] / 32), 32](x, sums)
    inv = 1.0 / np.sqrt(sums.cpu().numpy() / x.shape[1] + 1e-6)
    result = x.cpu().numpy() * inv[:, None] * weight.cpu().numpy()
    out.copy_(torch.from_numpy(result.astype(np.float32)))
"""

# one block of 16 threads per row, a tree sum in shared memory whose barrier sits inside
# `if t < step`: half the threads skip it, and the verifier sees only wrong values
_RMSNORM_BARRIER_IN_BRANCH = _HEADER + """
EPS = numba.float32(1e-6)


@gpulab.kernel
def rmsnorm_tree(x, weight, out):
    r = cuda.blockIdx.x
    t = cuda.threadIdx.x
    n = x.shape[1]
    partial = cuda.shared.array(16, numba.float32)
    total = numba.float32(0.0)
    for j in range(t, n, 16):
        total += x[r, j] * x[r, j]
    partial[t] = total
    cuda.syncthreads()
    step = 8
    while step > 0:
        if t < step:
            partial[t] += partial[t + step]
            cuda.syncthreads()
        step //= 2
    inv = numba.float32(1.0) / math.sqrt(partial[0] / numba.float32(n) + EPS)
    for j in range(t, n, 16):
        out[r, j] = x[r, j] * inv * weight[j]


def solve(x, weight, out):
    rmsnorm_tree[x.shape[0], 16](x, weight, out)
"""

# a grid too small for the engine's rows, and top-level code that tells the grader's own
# engine every answer is right (it runs when the grader loads the source)
_RMSNORM_PATCHES_THE_CHECKER = _rmsnorm_variant((_LAUNCH, "rmsnorm_rows[4, 32](x, weight, out)")) + """

import gpulab.course.checks.engine as engine
engine.compare = lambda *args, **kwargs: (None, 0.0, 0.0)
"""

# the kernel does the sums of squares (and copies x into out), the host finishes through raw
# pointers, where no torch call shows what it computes
_RMSNORM_RAW_POINTERS = _HEADER + """
import ctypes


@gpulab.kernel
def row_squares(x, sums, out):
    r = cuda.grid(1)
    if r < x.shape[0]:
        total = numba.float32(0.0)
        for j in range(x.shape[1]):
            total += x[r, j] * x[r, j]
            out[r, j] = x[r, j]
        sums[r] = total


def solve(x, weight, out):
    rows, cols = x.shape
    sums = torch.empty(rows, dtype=x.dtype, device=x.device)
    row_squares[math.ceil(rows / 32), 32](x, sums, out)
    o = (ctypes.c_float * (rows * out.stride(0))).from_address(out.data_ptr())
    w = (ctypes.c_float * cols).from_address(weight.data_ptr())
    s = (ctypes.c_float * rows).from_address(sums.data_ptr())
    for r in range(rows):
        inv = 1.0 / math.sqrt(s[r] / cols + 1e-6)
        for j in range(cols):
            o[r * out.stride(0) + j] *= inv * w[j]
"""

RMSNORM_VERIFIED.planted = [
    Planted("eps outside the square root",
            _rmsnorm_variant((_INV, "inv = numba.float32(1.0) / (math.sqrt(total / numba.float32(n)) + EPS)")),
            expect="inside the square root"),
    Planted("eps = 1e-5", _rmsnorm_variant(("EPS = numba.float32(1e-6)", "EPS = numba.float32(1e-5)")),
            expect="eps"),
    Planted("eps left out", _rmsnorm_variant((" + EPS)", ")")), expect="eps"),
    Planted("mean over n - 1", _rmsnorm_variant(("total / numba.float32(n)", "total / numba.float32(n - 1)")),
            expect="n - 1"),
    Planted("a fixed grid of 4 x 32 threads (covers the verifier's shapes only)",
            _rmsnorm_variant((_LAUNCH, "rmsnorm_rows[4, 32](x, weight, out)")), expect="every row"),
    Planted("a fixed grid of 5 x 32 threads (160 rows, more than 128)",
            _rmsnorm_variant((_LAUNCH, "rmsnorm_rows[5, 32](x, weight, out)")), expect="every row"),
    Planted("bounds off by one (r <= rows)",
            _rmsnorm_variant(("if r < x.shape[0]:", "if r <= x.shape[0]:")), expect="index",
            simulator_only=True),
    Planted("weight ignored", _rmsnorm_variant(("x[r, j] * inv * weight[j]", "x[r, j] * inv")),
            expect="ignores_input"),
    # the kernel runs, then torch overwrites its answer: the static checker sees a launch,
    # the verifier's recorders see the torch calls
    Planted("computed with torch", _rmsnorm_variant(
        (_LAUNCH, _LAUNCH + "\n    out.copy_(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight)")),
        expect="calls_torch_op"),
    # refused by the verifier's static checker before it runs (an import of the course's code)
    Planted("calls the task's reference", _rmsnorm_variant(
        (_LAUNCH, f"from {rmsnorm_reference.__module__} import rmsnorm_reference\n"
                  "    out.copy_(rmsnorm_reference(x, weight))")), expect="may import only"),
    Planted("sums on the device, the rest on the host (numpy)", _RMSNORM_HOST_FINISH, expect="on the host"),
    Planted("one shared total, a plain += from every thread", _RMSNORM_SHARED_RACE, expect="at the same time",
            simulator_only=True),
    # simulator only: on a GPU the verifier's "wrong values" is all there is to say
    Planted("the tree sum's barrier inside `if t < step`", _RMSNORM_BARRIER_IN_BRANCH,
            expect="barrier inside a branch", simulator_only=True),
    # these two never run: the verifier's static checker refuses the import and the patch
    Planted("a fixed grid, and top-level code that patches the engine's compare", _RMSNORM_PATCHES_THE_CHECKER,
            expect="patching an object"),
    Planted("the host finishes through data_ptr() and ctypes", _RMSNORM_RAW_POINTERS, expect="imports 'ctypes'"),
    Planted("torch only, no kernel", "import torch\n\n\ndef solve(x, weight, out):\n    out.copy_(x)\n",
            expect="gpulab.kernel"),
]


def _axpy_out(x, y):
    return AXPY_ALPHA * x + y


def _random_pair(n, seed, device):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=gen).to(device), torch.randn(n, generator=gen).to(device)


def _runs(solve, calls, formula=_axpy_out) -> str | None:
    """Run ``solve`` on each (n, seed); 'cached_result' at the first answer not ``formula``."""
    from ... import runtime

    for n, seed in calls:
        x, y = _random_pair(n, seed, runtime.device)
        out = torch.full((n,), float("nan"), device=runtime.device)
        solve(x, y, out=out)
        if not torch.allclose(out, formula(x, y), rtol=1e-5, atol=1e-5):
            return "cached_result"
    return None


def _flags_the_second_call():
    """A my_check that counts: it flags whichever candidate it is asked about second."""
    calls = itertools.count(1)
    return lambda solve: "cached_result" if next(calls) == 2 else None


def _looks_for_seen(solve):
    """Reads the source's globals for the mystery's `_seen` instead of running solve."""
    return "cached_result" if "_seen" in getattr(solve, "__globals__", {}) else None


CATCH_THE_CHEAT.planted = [
    Planted("accepts everything", lambda solve: None, expect="accepted the mystery"),
    Planted("flags everything", lambda solve: "cached_result", expect="flagged a correct axpy"),
    Planted("one call, one comparison (the naive check)", lambda solve: _runs(solve, [(50, 1)]),
            expect="accepted the mystery"),
    Planted("two calls on the same inputs (the cache answers right)",
            lambda solve: _runs(solve, [(50, 1), (50, 1)]), expect="accepted the mystery"),
    Planted("two calls on different sizes (the cache keyed on size never hits)",
            lambda solve: _runs(solve, [(50, 1), (60, 2)]), expect="accepted the mystery"),
    Planted("catches it but names the wrong loophole",
            lambda solve: _runs(solve, [(50, 1), (50, 2)]) and "shape_dependent", expect="not what the mystery"),
    Planted("a name that is not a flag", lambda solve: _runs(solve, [(50, 1), (50, 2)]) and "cache",
            expect="not one of the verifier's flags"),
    Planted("compares with the wrong formula (2 x + y)",
            lambda solve: _runs(solve, [(50, 1), (50, 2)], formula=lambda x, y: 2 * x + y),
            expect="flagged a correct axpy"),
    Planted("returns True/False (is it right?) instead of the flag",
            lambda solve: _runs(solve, [(50, 1), (50, 2)]) is None, expect="return None when"),
    Planted("flags the second candidate it is asked about (counts its calls)", _flags_the_second_call(),
            expect="random order"),
    Planted("looks for a global named _seen instead of running solve", _looks_for_seen,
            expect="a cache can sit anywhere"),
]


class _NoInputs(LoopholeCheck):
    name = "no_inputs"


class _Everything(LoopholeCheck):
    name = "paranoid"

    def extra_inputs(self, task, shape, generator):
        return [task.inputs(shape, 0)]

    def judge(self, task, results):
        return "everything is suspicious"


class _Filled(LoopholeCheck):
    """Extra inputs all equal to ``value`` (finite huge numbers, NaN, +inf, zeros)."""
    value = 0.0

    def extra_inputs(self, task, shape, generator):
        return [(torch.full(shape, self.value),)]


class _Huge(_Filled):
    name, value = "huge_values", 1e30


class _NaNs(_Filled):
    name, value = "nan_values", float("nan")


class _PlusInf(_Filled):
    name, value = "plus_inf", float("inf")


class _Zeros(_Filled):
    name, value = "zeros", 0.0


class _ByOrder(LoopholeCheck):
    """Counts instead of looking: flags every ReLU from the third it judges on."""
    name = "by_order"

    def __init__(self):
        self.judged = 0

    def judge(self, task, results):
        self.judged += 1
        return "the third ReLU on is suspicious" if self.judged >= 3 else None


class _Borrowed(LoopholeCheck):
    name = "cached_result"   # a flag the verifier already has

    def extra_inputs(self, task, shape, generator):
        return [(torch.full(shape, float("-inf")),)]


OWN_LOOPHOLE_CHECK.planted = [
    Planted("adds no inputs", _NoInputs(), expect="did not flag"),
    Planted("huge finite values only", _Huge(), expect="did not flag"),
    # simulator only: there max(NaN, 0) is NaN like torch.relu; a GPU's fmaxf gives 0
    Planted("NaN only (relu(NaN) is NaN too)", _NaNs(), expect="did not flag", simulator_only=True),
    Planted("+inf only", _PlusInf(), expect="did not flag"),
    Planted("zeros only", _Zeros(), expect="did not flag"),
    Planted("flags everything", _Everything(), expect="rejects a correct ReLU"),
    Planted("flags from the third ReLU it judges on (counts its calls)", _ByOrder(), expect="random order"),
    Planted("the class, not an instance", _NoInputs, expect="instance"),
    Planted("a name the verifier's flags already use", _Borrowed(), expect="own name"),
]
