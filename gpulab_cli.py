"""The `gpulab` command. Its parser lives outside the `gpulab` package on purpose:
importing `gpulab` configures numba and imports torch, which takes seconds, and
`gpulab --help` (or a typo) should answer at once. Each command imports what it needs.

    gpulab doctor                  where kernels run, versions, and a tiny kernel that proves it
    gpulab chapters [--paths NN]   the chapter registry, one line a chapter
    gpulab exercises [--check]     write exercises/ from solutions/ (never over a learner's edits)
    gpulab grade PATH [...]        grade a submission, or a folder of them into a gradebook
    gpulab bench NN                run chapter NN's GPU benchmark
"""
from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpulab", description="gpulab course tools")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="check where kernels run and that a tiny kernel works")

    ch = sub.add_parser("chapters", help="list the course's chapters (number, slug, status)")
    ch.add_argument("--paths", metavar="NN", help="print the test paths of chapter NN (its tests folder, "
                    "lecture and solution), as `make test CH=NN` uses them")
    ch.add_argument("--ready", action="store_true", help="only the chapters whose status is ready")
    ch.add_argument("--built", action="store_true",
                    help="only the chapters whose status is built (tested under the simulator, GPU figures pending)")

    ex = sub.add_parser("exercises", help="generate exercises/ from solutions/")
    ex.add_argument("--check", action="store_true", help="only report stale exercises (exit 1 if any)")
    ex.add_argument("--force", action="store_true",
                    help="also replace exercises a learner has edited (each is first backed up)")
    ex.add_argument("--root", help="the course folder (default: found from the current folder)")

    gr = sub.add_parser("grade", help="grade a submitted notebook, or every notebook in a folder")
    gr.add_argument("path", help="the submitted .ipynb, or a folder of submissions")
    gr.add_argument("--chapter", metavar="NN", help="the chapter the submission belongs to "
                    "(default: found from the notebook's metadata or content)")
    gr.add_argument("--solution", help="grade against this solution notebook instead of the chapter's")
    gr.add_argument("--use-submission-checks", action="store_true",
                    help="INSTRUCTORS ONLY: grade with the submission's own check cells when no "
                    "solution is found (a learner could have edited them)")
    gr.add_argument("--timeout", type=float, default=120.0, help="seconds allowed per cell (default 120)")
    gr.add_argument("--json", metavar="FILE", help="also write the report (or gradebook) as JSON")
    gr.add_argument("--csv", metavar="FILE", help="also write the gradebook as CSV (a row per "
                    "submission and task, and a TOTAL row per submission)")
    gr.add_argument("--fail-under", type=float, metavar="SCORE",
                    help="exit 1 when a score (as a fraction of the maximum, 0-1) is below SCORE")

    be = sub.add_parser("bench", help="run a chapter's GPU benchmark (needs a CUDA GPU)")
    be.add_argument("chapter", metavar="NN", help="chapter number, e.g. 06")
    be.add_argument("args", nargs=argparse.REMAINDER, help="passed on to the benchmark script")
    return parser


def _registry():
    """gpulab/course/registry.py loaded on its own: importing the package would configure
    numba and import torch, which `gpulab chapters` (and `make test CH=NN`) need not wait for."""
    import importlib.util
    from pathlib import Path

    package = importlib.util.find_spec("gpulab")
    if package is None or not package.submodule_search_locations:
        raise SystemExit("gpulab: the gpulab package is not installed")
    path = Path(package.submodule_search_locations[0]) / "course" / "registry.py"
    spec = importlib.util.spec_from_file_location("_gpulab_registry", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def cmd_chapters(args) -> int:
    registry = _registry()
    if args.paths:
        try:
            ch = registry.chapter(args.paths)
        except KeyError as exc:
            print(f"gpulab chapters: {exc.args[0]}", file=sys.stderr)
            return 2
        try:
            root = registry.course_root()
        except FileNotFoundError as exc:
            print(f"gpulab chapters: {exc}", file=sys.stderr)
            return 2
        paths = [p for p in (ch.tests, ch.lecture, ch.solution) if (root / p).exists()]
        if not paths:  # an empty list would make pytest run everything
            print(f"gpulab chapters: chapter {ch.number} ({ch.status}) has no tests, lecture or "
                  "solution yet", file=sys.stderr)
            return 2
        print(" ".join(str(p) for p in paths))
        return 0
    for ch in registry.CHAPTERS:
        if (args.ready and not ch.ready) or (args.built and ch.status != "built"):
            continue
        print(f"{ch.number}  {ch.slug:<22} {ch.status:<8} {ch.title}")
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "chapters":
        return cmd_chapters(args)
    from gpulab.course import cli

    return getattr(cli, f"cmd_{args.command}")(args)


if __name__ == "__main__":
    sys.exit(main())
