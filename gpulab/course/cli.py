"""The `gpulab` command: doctor, exercises, grade.

    gpulab doctor                 where kernels run, versions, and a tiny kernel that proves it
    gpulab exercises [--check]    write exercises/ from solutions/ (or only report stale ones)
    gpulab grade NOTEBOOK         run a submission in a fresh kernel and score each task
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _course_root(start: Path | None = None) -> Path:
    """The course checkout: the nearest folder above ``start`` holding solutions/."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "solutions").is_dir() and (folder / "gpulab").is_dir():
            return folder
    package_root = Path(__file__).resolve().parents[2]
    if (package_root / "solutions").is_dir():
        return package_root
    raise SystemExit("gpulab: no course checkout found (a folder with solutions/ and gpulab/); "
                     "run this from inside the course folder")


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
    import torch

    from gpulab.basics import vector_add

    n = 1000
    a = torch.arange(n, dtype=torch.float32, device=gpulab.device)
    b = 2 * a
    try:
        out = vector_add(a, b)
        gpulab.synchronize()
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
    if not torch.equal(out, 3 * a):
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
    written = generate_all(root)
    for path in written:
        print(f"wrote {path.relative_to(root)}")
    if not written:
        print("exercises/ was already up to date")
    return 0


def cmd_grade(args) -> int:
    from gpulab.course.grading import grade_notebook

    solution = Path(args.solution) if args.solution else None
    report = grade_notebook(Path(args.notebook), solution=solution, cell_timeout=args.timeout)
    print(report.text())
    if args.json:
        Path(args.json).write_text(report.to_json())
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="gpulab", description="gpulab course tools")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="check where kernels run and that a tiny kernel works").set_defaults(fn=cmd_doctor)
    ex = sub.add_parser("exercises", help="generate exercises/ from solutions/")
    ex.add_argument("--check", action="store_true", help="only report stale exercises (exit 1 if any)")
    ex.add_argument("--root", help="the course folder (default: found from the current folder)")
    ex.set_defaults(fn=cmd_exercises)
    gr = sub.add_parser("grade", help="grade a submitted assignment notebook")
    gr.add_argument("notebook", help="the submitted .ipynb")
    gr.add_argument("--solution", help="the instructor's solution notebook "
                    "(default: solutions/<same name> in the course folder)")
    gr.add_argument("--timeout", type=float, default=120.0, help="seconds allowed per cell (default 120)")
    gr.add_argument("--json", help="also write the report as JSON to this file")
    gr.set_defaults(fn=cmd_grade)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
