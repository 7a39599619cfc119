"""Count the instructions a fused kernel spends per pixel, from its PTX or SASS (GPU only).

Fusion leaves one read and one write per pixel, so what is left to decide the time is the
instructions between them. This module finds them in the compiled kernel: numba gives the
PTX (the virtual ISA) of every kernel and, where CUDA's ``nvdisasm`` is installed, the SASS
(the machine code the GPU really issues; PTX and SASS differ: a 64-bit add is one PTX
instruction and two SASS ones, a constant ``mov`` disappears into an immediate, a
correctly rounded reciprocal ``rcp.rn.f32`` is one PTX line and several SASS ones).

The steady state of a vertically fused kernel is its *full tile*: the branch where a thread
loads its ``per_thread`` pixels, transforms and stores them without bounds checks. It is the
path through the kernel that makes the most loads (:func:`hot_path`), so::

    per pixel = (instructions on that path) / per_thread

(the path includes the parameter and geometry loads and the index arithmetic, which run
once per thread and tile). :func:`classify` sorts the instructions into memory, FP32 arithmetic,
special-function unit (``ex2``, ``rcp``: 16 lanes per SM and cycle on Hopper against 128
for FP32), integer/address arithmetic, control and moves, which is where
:func:`instruction_counts` says the time goes.

    counts = instruction_counts(pipe)          # on a GPU
    counts["per_pixel"], counts["classes"]     # e.g. 11.5, {"fp32": 4.0, "memory": 2.0, ...}
"""
from __future__ import annotations

import re
from collections import Counter

import torch

from .. import runtime

__all__ = ["basic_blocks", "classify", "hot_path", "steady_state", "instruction_counts", "CLASSES"]

CLASSES = ("memory", "fp32", "sfu", "integer", "control", "move", "other")

_SASS_CLASSES = {
    "memory": ("LDG", "STG", "LD", "ST", "LDS", "STS", "LDC", "ULDC", "RED", "ATOM", "ATOMG"),
    "fp32": ("FFMA", "FADD", "FMUL", "FMNMX", "FSETP", "FSEL", "FSET", "FCHK", "FRND", "F2F", "FSWZADD"),
    "sfu": ("MUFU",),
    "integer": ("IMAD", "IADD3", "IADD", "LEA", "SHF", "LOP3", "ISETP", "IMNMX", "SEL", "PRMT", "F2I", "I2F",
                "I2FP", "F2IP", "POPC", "FLO", "IABS", "UIADD3", "UIMAD", "ULEA", "USHF", "ULOP3", "UISETP",
                "USEL", "UMOV", "IMUL", "P2R", "R2P", "PLOP3", "UPLOP3"),
    "control": ("BRA", "EXIT", "RET", "CALL", "BSYNC", "BSSY", "WARPSYNC", "BAR", "NOP", "BPT", "YIELD"),
    "move": ("MOV", "S2R", "CS2R", "S2UR", "SHFL", "R2UR"),
}
_PTX_SFU = ("ex2", "rcp", "lg2", "sqrt", "rsqrt", "sin", "cos", "tanh")


def basic_blocks(asm: str) -> list[tuple[str, list[str]]]:
    """Split PTX or SASS text into ``(label, instructions)`` basic blocks, in order."""
    if "/*0000*/" in asm or re.search(r"/\*[0-9a-f]{4}\*/", asm):
        return _sass_blocks(asm)
    return _ptx_blocks(asm)


def _ptx_blocks(ptx: str) -> list[tuple[str, list[str]]]:
    lines = ptx.splitlines()
    entry = next((k for k, line in enumerate(lines) if ".entry" in line), 0)
    start = next((k for k in range(entry, len(lines)) if lines[k].strip() == "{"), entry)
    blocks, current, label = [], [], "entry"
    for line in lines[start + 1:]:
        line = line.strip()
        if not line or line.startswith(("//", ".", "{", "}")):   # comments, directives (.reg, .loc), braces
            continue
        if line.endswith(":"):
            blocks.append((label, current))
            current, label = [], line[:-1]
            continue
        current.append(line.rstrip(";").strip())
    blocks.append((label, current))
    return [b for b in blocks if b[1] or b[0] == "entry"]


def _sass_blocks(sass: str) -> list[tuple[str, list[str]]]:
    blocks, current, label = [], [], "entry"
    for line in sass.splitlines():
        stripped = line.strip()
        if re.match(r"^[.$\w][\w.$]*:$", stripped):      # a label: .L_x_3:, a function's name
            blocks.append((label, current))
            current, label = [], stripped.split(":")[0]
            continue
        m = re.match(r"^/\*[0-9a-f]+\*/\s+(.*?);", stripped)
        if m:
            current.append(m.group(1).strip())
    blocks.append((label, current))
    return [b for b in blocks if b[1] or b[0] == "entry"]


def _opcode(line: str) -> str:
    if line.startswith("@"):
        line = line.split(None, 1)[1] if " " in line else line
    return line.split()[0] if line.split() else ""


def classify(instructions: list[str]) -> Counter:
    """How many of ``instructions`` (PTX or SASS lines) fall in each of :data:`CLASSES`."""
    counts = Counter()
    for line in instructions:
        op = _opcode(line)
        if not op:
            continue
        counts[_class_of(op)] += 1
    return counts


def _class_of(op: str) -> str:
    if op[:1].isupper():                           # SASS: FFMA, MUFU.EX2, IMAD.WIDE.U32, ...
        base = op.split(".")[0]
        for cls, names in _SASS_CLASSES.items():
            if base in names:
                return cls
        return "other"
    base = op.split(".")[0]                        # PTX: ld.global.f32, fma.rn.f32, ex2.approx.ftz.f32, ...
    if op.startswith("ld.param"):
        return "move"                              # kernel arguments: a constant bank in SASS
    if base in ("ld", "st", "atom", "red"):
        return "memory"
    if base in _PTX_SFU or (base == "div" and ".f32" in op):
        return "sfu"
    if base in ("bra", "ret", "bar", "exit", "call"):
        return "control"
    if base in ("mov", "cvta"):
        return "move"
    if ".f32" in op or ".f64" in op or base == "testp":
        return "fp32"
    return "integer"


_SASS_TARGET = re.compile(r"`\((\.L[\w$]*)\)")


def _branch(line: str) -> tuple[str | None, bool, bool]:
    """``(target, conditional, ends)`` of a branch or exit instruction: ``target`` the label it
    may jump to (None for an exit), ``conditional`` whether it may also fall through;
    ``ends``: whether the line ends a path or a straight run at all."""
    predicated = line.startswith("@")
    op = _opcode(line)
    base = op.split(".")[0]
    if base in ("BRA", "bra"):
        m = _SASS_TARGET.search(line)
        target = m.group(1) if m else line.split()[-1].rstrip(";")
        return target, predicated, True
    if base in ("EXIT", "ret", "exit"):
        return None, predicated, True
    return None, True, False


def _straight_runs(blocks):
    """Split basic blocks further after every branch and exit: (label, lines, edges, exits)."""
    runs = []
    for label, lines in blocks:
        start, part = 0, 0
        for k, line in enumerate(lines + [None]):
            if line is not None and not _branch(line)[2]:
                continue
            body = lines[start:k + 1] if line is not None else lines[start:]
            if body or line is None:
                target, conditional, _ = _branch(line) if line is not None else (None, True, False)
                runs.append({"label": label if part == 0 else f"{label}+{part}", "lines": body,
                             "target": target, "falls": line is None or conditional,
                             "exits": line is not None and target is None})
            start, part = k + 1, part + 1
    return runs


def hot_path(asm: str) -> list[str]:
    """The instructions of the steady state: the path from the kernel's entry to an exit that
    makes the most global loads (the full tile: all of a thread's pixels; a partial tile
    makes fewer) and, among those, the fewest instructions (it skips the rarely taken slow
    paths, e.g. of a correctly rounded reciprocal's special cases). Backward branches (a
    grid-stride loop) are not followed: one turn of the loop is counted."""
    runs = _straight_runs(basic_blocks(asm))
    at = {r["label"]: i for i, r in enumerate(runs)}
    loads = [sum(1 for line in r["lines"] if _is_global_load(line)) for r in runs]
    best: list = [None] * len(runs)        # (loads, -instructions, previous run) of the best path to run i
    best[0] = (loads[0], -len(runs[0]["lines"]), None)
    finish = None
    for i, r in enumerate(runs):
        if best[i] is None:
            continue
        nexts = []
        if r["target"] is not None and at.get(r["target"], -1) > i:
            nexts.append(at[r["target"]])
        if r["falls"] and i + 1 < len(runs):      # a predicated exit or branch may fall through
            nexts.append(i + 1)
        if r["exits"] or (r["falls"] and i + 1 == len(runs)):   # the path may end here
            if finish is None or best[i][:2] > best[finish][:2]:
                finish = i
        for j in nexts:
            cand = (best[i][0] + loads[j], best[i][1] - len(runs[j]["lines"]), i)
            if best[j] is None or cand[:2] > best[j][:2]:
                best[j] = cand
    path, i = [], finish if finish is not None else 0
    while i is not None:
        path.append(i)
        i = best[i][2]
    return [line for i in reversed(path) for line in runs[i]["lines"]]


def _is_global_load(line: str) -> bool:
    op = _opcode(line)
    return op.startswith("LDG") or op.startswith("ld.global")


def steady_state(asm: str, per_thread: int) -> dict:
    """Instructions per pixel of the full-tile path (:func:`hot_path`) over ``per_thread``,
    in all and by class."""
    path = hot_path(asm)
    classes = classify(path)
    total = sum(len(b) for _, b in basic_blocks(asm))
    return {"per_pixel": round(len(path) / per_thread, 2),
            "classes": {c: round(classes.get(c, 0) / per_thread, 2) for c in CLASSES},
            "path": len(path), "kernel_total": total, "per_thread": per_thread}


def instruction_counts(pipe, in_dtype: torch.dtype = torch.float32, isa: str = "sass") -> dict:
    """Instructions per pixel of ``pipe``'s fused kernel in its steady state (GPU only).

    ``isa``: "sass" (needs CUDA's nvdisasm; falls back to "ptx" and says so) or "ptx". The
    kernel must have run once (numba compiles it at the first launch). Returns
    :func:`steady_state`'s dict plus ``isa``, the text of the assembly under ``"text"``.
    """
    if not runtime.ON_GPU:
        raise RuntimeError("instruction_counts needs a GPU: numba's simulator compiles nothing. "
                           "benchmarks/results/03_kernel_fusion.json holds counts from an H200")
    fused = pipe.kernel(in_dtype)
    overloads = fused.dispatcher.overloads
    if not overloads:
        raise RuntimeError("the fused kernel has not been compiled yet: run the pipeline once first")
    signature = next(iter(overloads))
    text, used = None, isa
    if isa == "sass":
        try:
            text = fused.dispatcher.inspect_sass(signature)
        except Exception as exc:  # noqa: BLE001  (no nvdisasm on the machine)
            used = f"ptx (SASS failed: {type(exc).__name__}: {str(exc)[:80]})"
    if text is None:
        text = fused.dispatcher.inspect_asm(signature)
    result = steady_state(text, fused.schedule.per_thread)
    result.update(isa=used, text=text)
    return result
