"""The benchmark harness: what every ``benchmarks/NN_slug.py`` script shares.

A chapter's benchmark answers one question: how fast are the course's kernels on a real
GPU, next to torch and the field's best library, measured side by side in the same run?
This module gives each script the same pieces, so a script only declares what it measures:

    import gpulab.benchmark as gb

    args = gb.parse_args(__doc__)          # --quick for a smoke run, --out for another folder
    gb.require_gpu()                       # a clear exit on a machine without a CUDA GPU
    sweep = gb.sweep("n", [2**20, 2**24], make_inputs=lambda n: (torch.randn(n, device="cuda"),),
                     lines={"ours": my_kernel, "torch": torch.relu,
                            "library": gb.peer("somelib", lambda lib: lib.relu)})
    results = gb.Results("NN_slug", "Title", data={"relu": sweep.to_json()})
    results.section("ReLU", table=sweep.table())
    results.headline("relu at 2^24 (ms)", ours=..., peer="torch", peer_value=..., goal=1.5)
    results.write(args.out)                # the .json first, then the .md rendered from it

One results schema (``SCHEMA``): ``benchmarks/results/<stem>.json`` holds ``title``, ``gpu``,
``date``, ``metadata`` (GPU, clocks, driver, versions, host), ``headline`` (rows of
``metric, ours, peer, peer_value, ratio, goal, lower_is_better``: ``ratio = ours / peer_value``,
and the goal is a number that ``goal_on`` - the ratio or ours itself - must meet),
``sections`` (what the script measured, as text and tables) and ``data`` (the raw
measurements). The ``.md`` beside it is :func:`render` of the json, never written by hand.

Core layer: this module imports only gpulab's core (runtime, harness), never a family or
the course.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import math
import platform
import subprocess
import sys
import tempfile
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from . import harness, runtime

__all__ = ["require_gpu", "metadata", "parse_args", "peer", "Missing", "sweep", "Sweep", "Results",
           "headline_row", "render", "validate", "load", "SCHEMA", "HEADLINE_KEYS", "GoalError"]

#: the version of the results schema written into every results json
SCHEMA = 1
#: the keys every headline row carries (issue 11's contract test reads them)
HEADLINE_KEYS = ("metric", "ours", "peer", "peer_value", "ratio", "goal", "lower_is_better")
#: the folder scripts write to by default
RESULTS_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


# ------------------------------------------------------------------ the machine

def require_gpu(what: str = "this benchmark") -> None:
    """Exit with a clear message unless kernels run on a CUDA GPU.

    Benchmarks time real hardware: simulator times say nothing about a GPU, so a script
    refuses to run (and to overwrite recorded results) without one.
    """
    if runtime.ON_GPU:
        return
    raise SystemExit(
        f"{what} needs a CUDA GPU, but gpulab runs on numba's CUDA simulator here "
        f"(mode {runtime.MODE!r}). Run it on a machine with an NVIDIA GPU and a CUDA build of "
        "torch (`gpulab doctor` says what is missing); GPULAB_MODE=gpu insists on the GPU.")


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _nvidia_smi() -> dict:
    """Driver version and clocks from nvidia-smi (empty if it is not there)."""
    fields = ("driver_version", "clocks.sm", "clocks.max.sm", "clocks.mem", "clocks.max.mem",
              "power.limit")
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits",
                              "-i", "0"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    values = [v.strip() for v in out.strip().splitlines()[0].split(",")] if out.strip() else []
    names = ("driver", "sm clock (MHz)", "max sm clock (MHz)", "memory clock (MHz)",
             "max memory clock (MHz)", "power limit (W)")
    return dict(zip(names, values))


def metadata() -> dict:
    """Where and when the numbers were measured: GPU, SM count, clocks, driver, CUDA,
    versions of torch / numba / numba-cuda / triton, date and host."""
    import torch

    info = {"date": datetime.date.today().isoformat(), "host": platform.node(),
            "mode": runtime.MODE, "python": sys.version.split()[0],
            "torch": torch.__version__, "torch CUDA": torch.version.cuda,
            "numba": _version("numba"), "numba-cuda": _version("numba-cuda"),
            "triton": _version("triton"), "numpy": _version("numpy")}
    if runtime.ON_GPU:
        props = torch.cuda.get_device_properties(0)
        info.update({"gpu": props.name, "compute capability": f"{props.major}.{props.minor}",
                     "multiprocessors": props.multi_processor_count,
                     "memory (GiB)": round(props.total_memory / 2**30, 1)})
        try:  # the driver's own figures: CUDA version it supports, rated clocks
            from numba import cuda
            from numba.cuda.cudadrv.driver import driver

            info["driver CUDA"] = ".".join(map(str, driver.get_version()))
            dev = cuda.get_current_device()
            info["rated sm clock (MHz)"] = dev.CLOCK_RATE // 1000
            info["rated memory clock (MHz)"] = dev.MEMORY_CLOCK_RATE // 1000
        except Exception as exc:  # noqa: BLE001  (metadata must never stop a benchmark)
            info["driver CUDA"] = f"unknown ({type(exc).__name__})"
        info.update(_nvidia_smi())
    else:
        info["gpu"] = "none (CUDA simulator)"
    return info


def parse_args(description: str | None = None, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options every benchmark script takes: ``--quick`` and ``--out``.

    A quick run (smaller sizes, a smoke test) writes to a temporary folder unless ``--out``
    says otherwise, so it never replaces the recorded full-size results.
    """
    parser = argparse.ArgumentParser(description=(description or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run in seconds")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"folder for the results (default {RESULTS_DIR}, a temporary one with --quick)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="gpulab-bench-")) if args.quick else RESULTS_DIR
    return args


# ------------------------------------------------------------------- sweeps

@dataclass(frozen=True)
class Missing:
    """A peer that could not be timed in this run, and why (recorded, never faked)."""
    reason: str


def peer(module: str, make: Callable[[types.ModuleType], Callable]) -> Callable | Missing:
    """A line for a library that may not be installed: ``make(module)`` gives the function
    to time, or the line is recorded as :class:`Missing` with the import error."""
    try:
        lib = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001  (ImportError, or a broken CUDA extension)
        return Missing(f"{module} is not installed ({type(exc).__name__}: {exc})"[:200])
    return make(lib)


@dataclass
class Sweep:
    """Times of each line at each x: ``rows[i][label]`` is a median in ``unit`` or None."""
    x_name: str
    labels: list[str]
    unit: str
    clock: str
    rows: list[dict] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)
    errors: list[dict] = field(default_factory=list)

    def value(self, x, label: str):
        for row in self.rows:
            if row[self.x_name] == x:
                return row.get(label)
        raise KeyError(f"no row with {self.x_name} = {x!r} in this sweep")

    def to_json(self) -> dict:
        return {"x_name": self.x_name, "labels": self.labels, "unit": self.unit, "clock": self.clock,
                "rows": self.rows, "missing": self.missing, "errors": self.errors}

    def table(self, digits: int = 4) -> dict:
        """A results table: one row per x, one column per line (``-`` where not timed)."""
        columns = [self.x_name] + [f"{label} ({self.unit})" for label in self.labels]
        rows = [[_cell(row[self.x_name], digits)] + [_cell(row.get(label), digits) for label in self.labels]
                for row in self.rows]
        return {"columns": columns, "rows": rows}


def _cell(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _median_ms(fn: Callable, **bench_kw) -> float:
    return harness.bench(fn, **bench_kw).median_ms


def sweep(x_name: str, x_values: Sequence, make_inputs: Callable, lines: dict, *, unit: str = "ms",
          timer: Callable | None = None, **bench_kw) -> Sweep:
    """Time every line at every x, side by side (like Triton's ``perf_report``).

    ``make_inputs(x)`` builds the inputs once per x (a tuple); each line is a function
    called as ``line(*inputs)``, or :class:`Missing` (see :func:`peer`). Lines are timed
    one after the other on the same inputs, so the comparison is within one run. The
    timer is :func:`gpulab.harness.bench` (CUDA events, warm-up, median; on a CPU, wall
    time labelled as such) unless ``timer(fn) -> value`` is given. A line that raises is
    recorded as an error at that x, and the sweep goes on.
    """
    if not lines:
        raise ValueError("sweep needs at least one line to time")
    for label, line in lines.items():
        if not (callable(line) or isinstance(line, Missing)):
            raise TypeError(f"line {label!r} must be a function to time or gpulab.benchmark.Missing, "
                            f"got {type(line).__name__}")
    timer = timer or (lambda fn: _median_ms(fn, **bench_kw))
    clock = "cuda events" if runtime.ON_GPU else "cpu wall time (simulator: says nothing about a GPU)"
    result = Sweep(x_name, list(lines), unit, clock,
                   missing={label: line.reason for label, line in lines.items() if isinstance(line, Missing)})
    for x in x_values:
        inputs = make_inputs(x)
        inputs = inputs if isinstance(inputs, tuple) else (inputs,)
        row = {x_name: x}
        for label, line in lines.items():
            row[label] = None
            if isinstance(line, Missing):
                continue
            try:
                # no inputs: time the line itself, so no wrapper's call cost is counted
                row[label] = timer(line if not inputs else (lambda line=line: line(*inputs)))
            except Exception as exc:  # noqa: BLE001  (a peer may fail at one size: say so, go on)
                result.errors.append({x_name: x, "line": label, "error": f"{type(exc).__name__}: {exc}"[:300]})
        result.rows.append(row)
        print(f"  {x_name}={x}: " + ", ".join(f"{label} {_cell(row[label])}" for label in lines), flush=True)
    return result


# ------------------------------------------------------------- the results file

class GoalError(ValueError):
    """A headline row that cannot be judged (bad goal or peer)."""


def headline_row(metric: str, ours: float, peer: str | None = None, peer_value: float | None = None,
                 goal: float | None = None, lower_is_better: bool = True, *, goal_on: str | None = None,
                 unit: str = "", note: str = "") -> dict:
    """One headline row. ``ratio = ours / peer_value`` (for times: below 1 is faster).

    ``goal`` is the number that ``goal_on`` must meet: ``"ratio"`` (the default where there
    is a peer value) or ``"ours"`` (an absolute target, e.g. 10 ms a frame); at most the
    goal when ``lower_is_better``, at least it otherwise. ``met`` is derived from them,
    and None where there is no goal or nothing to compare.
    """
    if not isinstance(ours, (int, float)) or isinstance(ours, bool) or not math.isfinite(ours):
        raise GoalError(f"headline {metric!r}: ours must be a finite number, got {ours!r}")
    if peer_value is not None and (not isinstance(peer_value, (int, float)) or peer_value <= 0):
        raise GoalError(f"headline {metric!r}: peer_value must be a positive number, got {peer_value!r}")
    if peer_value is not None and not peer:
        raise GoalError(f"headline {metric!r}: a peer_value needs the peer's name")
    goal_on = goal_on or ("ratio" if peer_value is not None else "ours")
    if goal_on not in ("ratio", "ours"):
        raise GoalError(f"headline {metric!r}: goal_on must be 'ratio' or 'ours', got {goal_on!r}")
    ratio = ours / peer_value if peer_value is not None else None
    judged = ratio if goal_on == "ratio" else ours
    met = None
    if goal is not None and judged is not None:
        met = judged <= goal if lower_is_better else judged >= goal
    return {"metric": metric, "ours": ours, "peer": peer, "peer_value": peer_value, "ratio": ratio,
            "goal": goal, "goal_on": goal_on, "lower_is_better": lower_is_better, "met": met,
            "unit": unit, "note": note}


class Results:
    """A benchmark's results, built by its script and written as json, then md."""

    def __init__(self, stem: str, title: str, *, meta: dict | None = None, data: dict | None = None,
                 quick: bool = False):
        self.stem, self.title, self.quick = stem, title, quick
        self.meta = dict(meta) if meta is not None else metadata()
        self.data = data if data is not None else {}
        self.rows: list[dict] = []
        self.sections: list[dict] = []

    def headline(self, metric: str, ours: float, peer: str | None = None, peer_value: float | None = None,
                 goal: float | None = None, lower_is_better: bool = True, **kw) -> dict:
        row = headline_row(metric, ours, peer, peer_value, goal, lower_is_better, **kw)
        self.rows.append(row)
        return row

    def section(self, title: str, text: str | Sequence[str] = (), table: dict | None = None,
                after: str | Sequence[str] = ()) -> None:
        """A part of the report: paragraphs, a table ``{"columns", "rows"}``, more paragraphs."""
        as_list = (lambda t: [t] if isinstance(t, str) else list(t))
        if table is not None:
            _check_table(title, table)
        self.sections.append({"title": title, "text": as_list(text), "table": table, "after": as_list(after)})

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "stem": self.stem, "title": self.title,
                "gpu": self.meta.get("gpu"), "date": self.meta.get("date"), "quick": self.quick,
                "metadata": self.meta, "headline": self.rows, "sections": self.sections, "data": self.data}

    def write(self, out_dir: Path | str | None = None) -> tuple[Path, Path]:
        """Write ``<stem>.json`` and the ``<stem>.md`` rendered from it; returns both paths."""
        results = self.to_dict()
        problems = validate(results)
        if problems:
            raise ValueError(f"{self.stem}: results do not follow the schema: " + "; ".join(problems))
        out = Path(out_dir) if out_dir is not None else RESULTS_DIR
        out.mkdir(parents=True, exist_ok=True)
        json_path, md_path = out / f"{self.stem}.json", out / f"{self.stem}.md"
        json_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
        md_path.write_text(render(load(json_path)))
        print(f"wrote {json_path} and {md_path.name}")
        return json_path, md_path


def _check_table(where: str, table: dict) -> None:
    columns = table.get("columns")
    if not columns or not isinstance(table.get("rows"), list):
        raise ValueError(f"section {where!r}: a table needs 'columns' and 'rows'")
    for row in table["rows"]:
        if len(row) != len(columns):
            raise ValueError(f"section {where!r}: row {row!r} has {len(row)} cells for {len(columns)} columns")


def load(path: Path | str) -> dict:
    return json.loads(Path(path).read_text())


def validate(results: dict) -> list[str]:
    """Everything wrong with a results dict against the schema (empty: it is valid)."""
    problems = []
    for key in ("title", "gpu", "date", "metadata", "headline", "sections"):
        if not results.get(key) and key != "sections":
            problems.append(f"missing or empty {key!r}")
    try:
        datetime.date.fromisoformat(str(results.get("date")))
    except ValueError:
        problems.append(f"date {results.get('date')!r} is not YYYY-MM-DD")
    for i, row in enumerate(results.get("headline") or []):
        where = f"headline row {i} ({row.get('metric', '?')!r})"
        missing = [k for k in HEADLINE_KEYS if k not in row]
        if missing:
            problems.append(f"{where}: missing keys {missing}")
            continue
        try:
            expected = headline_row(row["metric"], row["ours"], row["peer"], row["peer_value"], row["goal"],
                                    row["lower_is_better"], goal_on=row.get("goal_on"))
        except GoalError as exc:
            problems.append(str(exc))
            continue
        if (row["ratio"] is None) != (expected["ratio"] is None) or (
                row["ratio"] is not None and not math.isclose(row["ratio"], expected["ratio"], rel_tol=1e-9)):
            problems.append(f"{where}: ratio {row['ratio']} is not ours / peer_value = {expected['ratio']}")
        if "met" in row and row["met"] != expected["met"]:
            problems.append(f"{where}: met is {row['met']} but the goal says {expected['met']}")
    for section in results.get("sections") or []:
        if section.get("table") is not None:
            try:
                _check_table(section.get("title"), section["table"])
            except ValueError as exc:
                problems.append(str(exc))
    return problems


# ------------------------------------------------------------------ rendering

def _number(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _md_table(columns: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return [line(columns), "|" + "---|" * len(columns), *(line(r) for r in rows)]


def _goal_text(row: dict) -> str:
    if row["goal"] is None:
        return "no goal set"
    sign = "<=" if row["lower_is_better"] else ">="
    verdict = {True: "met", False: "MISSED", None: "not judged"}[row.get("met")]
    return f"{row.get('goal_on', 'ratio')} {sign} {_number(row['goal'])}: {verdict}"


def render(results: dict) -> str:
    """The markdown report of a results dict (what ``<stem>.md`` holds)."""
    meta = results.get("metadata", {})
    versions = ", ".join(f"{k} {meta[k]}" for k in ("torch", "numba-cuda", "triton", "python")
                         if meta.get(k) not in (None, "not installed"))
    lines = [f"# {results['title']} ({results['gpu']}, {results['date']})", "",
             "<!-- rendered from the .json beside this file by gpulab.benchmark.render: do not edit by hand -->", ""]
    if results.get("quick"):
        lines += ["**Quick run** (`--quick`, small sizes): a smoke test, not the chapter's figures.", ""]
    if versions:
        lines += [versions + ".", ""]
    lines += ["## Headline", ""]
    head = [[row["metric"], _number(row["ours"]) + (f" {row['unit']}" if row.get("unit") else ""),
             row["peer"] or "-", _number(row["peer_value"]), _number(row["ratio"]), _goal_text(row),
             row.get("note") or ""] for row in results["headline"]]
    lines += _md_table(["metric", "ours", "peer", "peer value", "ratio (ours / peer)", "goal", "note"], head)
    lines.append("")
    for section in results.get("sections") or []:
        lines += [f"## {section['title']}", ""]
        for paragraph in section.get("text") or []:
            lines += [paragraph, ""]
        if section.get("table"):
            lines += _md_table(section["table"]["columns"], section["table"]["rows"]) + [""]
        for paragraph in section.get("after") or []:
            lines += [paragraph, ""]
    return "\n".join(lines).rstrip() + "\n"
