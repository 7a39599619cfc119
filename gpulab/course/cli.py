"""The commands behind `gpulab` (the parser is in the top-level ``gpulab_cli`` module, so
that ``gpulab --help`` answers without importing torch). One ``cmd_<name>(args)`` per command,
each returning the exit status.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _course_root(start: Path | None = None) -> Path:
    from .registry import course_root

    try:
        return course_root(start)
    except FileNotFoundError as exc:
        raise SystemExit(f"gpulab: {exc}") from None


def _driver_cuda_version() -> str | None:
    try:
        from numba.cuda.cudadrv.driver import driver

        major, minor = driver.get_version()
        return f"{major}.{minor}"
    except Exception:
        return None


def cmd_doctor(args) -> int:
    import gpulab
    from gpulab import runtime

    print("gpulab doctor")
    for key, value in runtime.describe().items():
        print(f"  {key:<20} {value}")
    if gpulab.SIMULATOR:
        print("  note: no CUDA GPU in use, so kernels run on numba's CUDA simulator "
              "(correct but slow; sizes are small).")
    from gpulab.selftest import vector_add_matches_torch

    n = 1000
    try:
        matches = vector_add_matches_torch(n)
    except Exception as exc:  # most often: no CUDA compiler libraries for numba-cuda
        print(f"  ❌ a tiny kernel failed: {type(exc).__name__}: {exc}")
        if gpulab.ON_GPU:
            version = _driver_cuda_version()
            extra = "cu13" if version and version.startswith("13") else "cu12"
            print("  numba-cuda needs CUDA's compiler libraries (NVVM, NVRTC). Either install the CUDA "
                  "toolkit system-wide, or from pip:\n"
                  f"      pip install 'gpulab[{extra}]'     # your driver supports CUDA {version or '?'}\n"
                  "  (cu12 for drivers that report CUDA 12.x, cu13 for 13.x: see `nvidia-smi`).")
        return 1
    if not matches:
        print("  ❌ a tiny kernel ran but computed a wrong result")
        return 1
    print(f"  ✅ a vector-add kernel of {n} elements ran on the {'GPU' if gpulab.ON_GPU else 'simulator'} "
          "and matched torch")
    return 0


def cmd_exercises(args) -> int:
    from gpulab.course.exercises import generate_all, stale_exercises

    root = _course_root(Path(args.root) if args.root else None)
    if args.check:
        stale = stale_exercises(root)
        if stale:
            print("stale exercises (run `gpulab exercises`): " + ", ".join(stale))
            return 1
        print("exercises/ is up to date")
        return 0
    result = generate_all(root, force=args.force)
    for path, backup in result.replaced:
        print(f"kept your edited {path.relative_to(root)} as {backup.relative_to(root)}")
    for path in result.written:
        print(f"wrote {path.relative_to(root)}")
    for path in result.kept:
        print(f"not replaced: {path.relative_to(root)} may hold your work (its cells differ from what "
              "`gpulab exercises` wrote). A newer version is ready: `gpulab exercises --force` writes it, "
              "after keeping your file as a dated backup beside it.", file=sys.stderr)
    if not (result.written or result.kept):
        print("exercises/ was already up to date")
    return 0


def _grade_error(message: str) -> int:
    print(f"gpulab grade: {message}", file=sys.stderr)
    return 2


def cmd_grade(args) -> int:
    """Grade one notebook or a folder of them; exit 2 when it cannot grade, 1 under
    ``--fail-under``."""
    from gpulab.course import grading

    if args.fail_under is not None and not 0 <= args.fail_under <= 1:
        return _grade_error(f"--fail-under is a fraction of the maximum score, 0 to 1 (got {args.fail_under:g})")
    if args.chapter is not None:
        from .registry import chapter

        try:
            chapter(args.chapter)
        except KeyError as exc:
            return _grade_error(exc.args[0])
    path = Path(args.path)
    options = dict(solution=Path(args.solution) if args.solution else None, chapter=args.chapter,
                   use_submission_checks=args.use_submission_checks, cell_timeout=args.timeout)
    try:
        if path.is_dir():
            book = grading.grade_folder(path, **options)
            if not book.reports:
                return _grade_error(f"no notebooks (*.ipynb) in {path}")
            reports, text = book.reports, book.text()
            json_text, csv_text = book.to_json(), book.to_csv()
        else:
            report = grading.grade_notebook(path, **options)
            reports, text, json_text, csv_text = [report], report.text(), report.to_json(), None
    except (FileNotFoundError, ValueError) as exc:
        return _grade_error(str(exc))
    print(text)
    for report in reports:
        grading.warn_own_checks(report)
    if args.json:
        Path(args.json).write_text(json_text + "\n")
    if args.csv:
        if csv_text is None:
            csv_text = grading.Gradebook(str(path.parent), reports).to_csv()
        Path(args.csv).write_text(csv_text)
    if not path.is_dir() and reports[0].error:
        return _grade_error(reports[0].error)
    below = [r for r in reports if args.fail_under is not None and r.fraction < args.fail_under]
    for report in below:
        print(f"gpulab grade: {Path(report.notebook).name} scored {report.fraction:.0%}, "
              f"below --fail-under {args.fail_under:g}", file=sys.stderr)
    return 1 if below else 0


def cmd_bench(args) -> int:
    from .registry import chapter

    try:
        ch = chapter(args.chapter)
    except KeyError as exc:
        print(f"gpulab bench: {exc.args[0]}", file=sys.stderr)
        return 2
    script = _course_root() / ch.benchmark
    if not script.exists():
        print(f"gpulab bench: chapter {ch.number} has no benchmark yet ({ch.benchmark} is missing)",
              file=sys.stderr)
        return 2
    import runpy

    sys.argv = [str(script), *[a for a in args.args if a != "--"]]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        if isinstance(exc.code, str):  # the script's reason for stopping (e.g. no GPU): show it
            print(exc.code, file=sys.stderr)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


