"""Time budgets that fail the run: the course's CI stays within its minutes only if every
chapter stays within its share.

Under the simulator (CI, a laptop):
- each notebook (lecture or solution) within ``NOTEBOOK_SIM_S`` seconds, alone on one core;
- each chapter's tests (``tests/chNN_slug/``) within ``CHAPTER_TESTS_SIM_S`` seconds, and
  its planted wrong answers (``tests/chNN_slug/test_chNN_planted.py``, one run of the
  checks per planted answer) within ``PLANTED_SIM_S`` more;
- the whole run, when it is the full suite, within ``SUITE_SIM_S`` seconds.
On a GPU: each notebook within ``NOTEBOOK_GPU_S`` seconds, and the full suite within
``SUITE_GPU_S``.

How it scales: a chapter costs at most CHAPTER_TESTS_SIM_S of test time plus its two
notebooks; with 2 workers, 19 chapters of today's average cost fit the 15-minute CI goal
(README, "Time budgets", says the measured figures). Times are summed per item (setup +
call + teardown) as the workers report them, so parallel runs are counted by work done,
not wall time. ``GPULAB_BUDGETS=off`` turns the checks off (e.g. under a debugger).
"""
from __future__ import annotations

import os
import re
import time
from collections import defaultdict

import pytest

NOTEBOOK_SIM_S = 60.0
NOTEBOOK_GPU_S = 120.0
CHAPTER_TESTS_SIM_S = 40.0
PLANTED_SIM_S = 30.0
SUITE_SIM_S = 8 * 60.0     # make test's pytest part; set-up (~1.5 min) comes on top of it
SUITE_GPU_S = 10 * 60.0

_CHAPTER_TESTS = re.compile(r"(?:^|/)tests/(ch\d\d_[a-z0-9_]+)/")
_PLANTED = re.compile(r"/test_ch\d\d_planted\.py$")


class Budgets:
    def __init__(self, on_gpu: bool):
        self.on_gpu = on_gpu
        self.by_file: dict[str, float] = defaultdict(float)
        self.by_chapter: dict[str, float] = defaultdict(float)
        self.planted_by_chapter: dict[str, float] = defaultdict(float)
        self.items: list[tuple[float, str]] = []
        self.start = time.monotonic()
        self.full_suite = False

    # -- pytest hooks (registered by the checkout's conftest.py) --
    def pytest_collection_finish(self, session):
        roots = {str(a).split("::")[0].rstrip("/") for a in session.config.args}
        self.full_suite = {"tests", "notebooks", "solutions"} <= {os.path.basename(r) for r in roots}

    def pytest_runtest_logreport(self, report):
        path = report.nodeid.split("::")[0].split("@")[0]
        self.by_file[path] += report.duration
        match = _CHAPTER_TESTS.search("/" + path)
        if match and not path.endswith(".ipynb"):
            bucket = self.planted_by_chapter if _PLANTED.search(path) else self.by_chapter
            bucket[match.group(1)] += report.duration
        if report.when == "call":
            self.items.append((report.duration, report.nodeid))

    def over_budget(self) -> list[str]:
        problems = []
        limit = NOTEBOOK_GPU_S if self.on_gpu else NOTEBOOK_SIM_S
        for path, seconds in sorted(self.by_file.items()):
            if path.endswith(".ipynb") and seconds > limit:
                problems.append(f"notebook {path}: {seconds:.0f} s (budget {limit:.0f} s)")
        if not self.on_gpu:
            for chapter, seconds in sorted(self.by_chapter.items()):
                if seconds > CHAPTER_TESTS_SIM_S:
                    problems.append(f"tests/{chapter}/: {seconds:.0f} s (budget {CHAPTER_TESTS_SIM_S:.0f} s)")
            for chapter, seconds in sorted(self.planted_by_chapter.items()):
                if seconds > PLANTED_SIM_S:
                    problems.append(f"tests/{chapter}/ planted answers: {seconds:.0f} s (budget {PLANTED_SIM_S:.0f} s)")
        wall = time.monotonic() - self.start
        suite_limit = SUITE_GPU_S if self.on_gpu else SUITE_SIM_S
        if self.full_suite and wall > suite_limit:
            problems.append(f"the whole run: {wall:.0f} s (budget {suite_limit:.0f} s)")
        return problems

    def pytest_terminal_summary(self, terminalreporter):
        tr = terminalreporter
        tr.section("time budgets")
        for chapter in sorted(set(self.by_chapter) | set(self.planted_by_chapter)):
            seconds, planted = self.by_chapter.get(chapter, 0.0), self.planted_by_chapter.get(chapter, 0.0)
            tr.write_line(f"tests/{chapter}/: {seconds:6.1f} s of {CHAPTER_TESTS_SIM_S:.0f}, "
                          f"planted answers {planted:5.1f} s of {PLANTED_SIM_S:.0f}")
        for path, seconds in sorted(self.by_file.items()):
            if path.endswith(".ipynb"):
                limit = NOTEBOOK_GPU_S if self.on_gpu else NOTEBOOK_SIM_S
                tr.write_line(f"{path}: {seconds:6.1f} s of {limit:.0f}")
        tr.write_line("slowest items:")
        for seconds, nodeid in sorted(self.items, reverse=True)[:10]:
            tr.write_line(f"  {seconds:6.1f} s  {nodeid}")
        for problem in self.over_budget():
            tr.write_line(f"OVER BUDGET: {problem}", red=True, bold=True)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session, exitstatus):
        if self.over_budget() and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


class TestLog:
    """With GPULAB_TEST_LOG=FILE, one line per finished test (and the end of each
    failure's report) is appended at once: a run cut off by a time limit, whose summary
    is never printed, still tells what failed and how long each item took."""

    def __init__(self, path: str):
        self.path = path

    def pytest_runtest_logreport(self, report):
        if report.when != "call" and report.outcome == "passed":
            return
        with open(self.path, "a") as out:
            out.write(f"{report.outcome:<8} {report.when:<8} {report.duration:7.1f} s  {report.nodeid}\n")
            if report.failed:
                text = str(report.longrepr)
                out.write("    " + text[-1500:].replace("\n", "\n    ") + "\n")


def install(config, on_gpu: bool) -> None:
    """Register the budgets on the controlling process (not on xdist workers, whose
    reports reach the controller), unless GPULAB_BUDGETS=off."""
    if os.environ.get("GPULAB_BUDGETS", "on").lower() in ("off", "0", "no"):
        return
    if hasattr(config, "workerinput"):
        return
    config.pluginmanager.register(Budgets(on_gpu), "gpulab-budgets")
    if os.environ.get("GPULAB_TEST_LOG"):
        config.pluginmanager.register(TestLog(os.environ["GPULAB_TEST_LOG"]), "gpulab-test-log")
