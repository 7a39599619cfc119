"""Read the control bits out of SASS (Volta and later, Hopper included).

Every SASS instruction since Volta is 128 bits. ``cuobjdump -sass`` and ``nvdisasm`` print
each as its text and two 64-bit words in comments; the control bits sit in the top 23 bits
of the second (high) word, bits 105-127 of the instruction (the layout the CuAssembler
assembler decodes, after maxas's notes on control codes and Jia et al.'s Turing dissection,
arXiv 1903.07486):

    bits of (high word >> 41):  reuse(4) | wait mask(6) | read SB(3) | write SB(3) | yield(1) | stall(4)
                                 17-20       11-16          8-10          5-7         4          0-3

A dependence-counter field of 7 means none. The yield bit is stored inverted: 0 asks the
scheduler to yield (CuAssembler prints ``Y`` for it). :func:`parse_sass` turns a listing into
:class:`gpulab.arch.issue_model.Instr` rows the issue model runs; :func:`sass_of` asks the
tools on a GPU machine for a numba kernel's SASS with its encodings (``cuobjdump -sass``
or ``nvdisasm -hex`` on its cubin), whichever is there.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .issue_model import Instr, _instr_from_asm

__all__ = ["Control", "decode_control", "encode_control", "parse_sass", "sass_of", "format_control", "loop_body"]

NO_BARRIER = 7


@dataclass(frozen=True)
class Control:
    stall: int
    yield_: bool
    write_sb: int | None
    read_sb: int | None
    wait_mask: int
    reuse: int          # bit k: source operand slot k is kept in the register file cache


def decode_control(high_word: int) -> Control:
    """The control bits of one instruction from its high 64-bit word."""
    if not 0 <= high_word < 1 << 64:
        raise ValueError(f"a SASS word has 64 bits, got {high_word:#x}")
    c = high_word >> 41
    write_sb, read_sb = (c >> 5) & 7, (c >> 8) & 7
    return Control(stall=c & 0xF, yield_=((c >> 4) & 1) == 0,
                   write_sb=None if write_sb == NO_BARRIER else write_sb,
                   read_sb=None if read_sb == NO_BARRIER else read_sb,
                   wait_mask=(c >> 11) & 0x3F, reuse=(c >> 17) & 0xF)


def encode_control(ctrl: Control, low_bits: int = 0) -> int:
    """The high word with ``ctrl`` in its top bits (``low_bits``: the opcode bits below 41)."""
    if not 0 <= ctrl.stall <= 15 or not 0 <= ctrl.wait_mask < 64 or not 0 <= ctrl.reuse < 16:
        raise ValueError(f"control field out of range: {ctrl}")
    c = (ctrl.stall | (0 if ctrl.yield_ else 1) << 4
         | (NO_BARRIER if ctrl.write_sb is None else ctrl.write_sb) << 5
         | (NO_BARRIER if ctrl.read_sb is None else ctrl.read_sb) << 8
         | ctrl.wait_mask << 11 | ctrl.reuse << 17)
    return c << 41 | (low_bits & ((1 << 41) - 1))


def format_control(ctrl: Control) -> str:
    """CuAssembler's notation, e.g. ``B0-----:R-:W2:Y:S04``."""
    wait = "".join(str(k) if ctrl.wait_mask >> k & 1 else "-" for k in range(6))
    r = "-" if ctrl.read_sb is None else str(ctrl.read_sb)
    w = "-" if ctrl.write_sb is None else str(ctrl.write_sb)
    return f"B{wait}:R{r}:W{w}:{'Y' if ctrl.yield_ else '-'}:S{ctrl.stall:02d}"


_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);\s*/\*\s*(0x[0-9a-f]{16})\s*\*/", re.I)
_WORD = re.compile(r"^\s*/\*\s*(0x[0-9a-f]{16})\s*\*/\s*$", re.I)


def parse_sass(listing: str, latencies: dict | None = None) -> list[Instr]:
    """Instructions of a ``cuobjdump -sass`` / ``nvdisasm -hex`` listing, with their decoded
    control bits. ``latencies``: op -> cycles for variable-latency producers (those that set
    a write counter), e.g. the chase's measured load latency."""
    latencies = latencies or {}
    program, pending = [], None
    for line in listing.splitlines():
        m = _LINE.search(line)
        if m:
            pending = (int(m.group(1), 16), m.group(2).strip(), int(m.group(3), 16))
            continue
        w = _WORD.match(line)
        if w and pending is not None:
            _, asm, _low = pending
            ctrl = decode_control(int(w.group(1), 16))
            base = _instr_from_asm(asm)
            reuse = tuple(bool(ctrl.reuse >> k & 1) for k in range(len(base.src)))
            latency = latencies.get(base.op) if ctrl.write_sb is not None else None
            program.append(Instr(base.op, base.dst, base.src, stall=ctrl.stall, yield_=ctrl.yield_,
                                 write_sb=ctrl.write_sb, read_sb=ctrl.read_sb, wait_mask=ctrl.wait_mask,
                                 reuse=reuse, latency=latency, text=f"{asm} [{format_control(ctrl)}]"))
            pending = None
    return program


def sass_of(kernel, signature) -> tuple[str, str]:
    """(SASS listing WITH each instruction's two 64-bit words, the tool that produced it) for
    a ``gpulab.kernel`` compiled for ``signature`` on this GPU. The control bits live in those
    words, so the listing comes from ``cuobjdump -sass`` (prints them) or ``nvdisasm -hex``
    on the kernel's cubin; numba's own ``inspect_sass`` runs ``nvdisasm -gi``, which prints
    no encodings, so it is not used here. Raises RuntimeError naming what was tried."""
    dispatcher = getattr(kernel, "dispatcher", kernel)
    compiled = dispatcher.compile(tuple(signature))
    cubin = compiled._codelibrary.get_cubin()
    tried = []
    for tool, flags in (("cuobjdump", ["-sass"]), ("nvdisasm", ["-hex"])):
        path = shutil.which(tool)
        if not path:
            tried.append(f"{tool}: not on PATH")
            continue
        with tempfile.TemporaryDirectory() as d:
            cubin_path = Path(d) / "kernel.cubin"
            cubin_path.write_bytes(cubin)
            done = subprocess.run([path, *flags, str(cubin_path)], capture_output=True, text=True, timeout=60)
        decoded = parse_sass(done.stdout) if done.returncode == 0 else []
        if decoded:
            return done.stdout, f"{tool} {' '.join(flags)}"
        tried.append(f"{tool}: rc={done.returncode}, no instruction with its encoding words; "
                     f"{done.stderr.strip()[:200]}")
    raise RuntimeError("no SASS listing with instruction encodings: " + "; ".join(tried))


_LABEL = re.compile(r"^\s*(\.L_x_\d+):", re.M)


def loop_body(listing: str, latencies: dict | None = None, op: str = "FFMA") -> list[Instr]:
    """The instructions of the loop with the most ``op`` instructions: from a backward
    branch's target to the branch, with their control bits. cuobjdump writes the target as
    an address (``BRA 0x1f0``), nvdisasm as a label (``BRA `(.L_x_1)``, the label on the line
    before its instruction). Empty if the listing has no backward branch."""
    decoded = parse_sass(listing, latencies)
    addresses, labels, pending = [], {}, []
    for line in listing.splitlines():
        label = _LABEL.match(line)
        if label:
            pending.append(label.group(1))
            continue
        m = _LINE.search(line)
        if m:
            addresses.append(int(m.group(1), 16))
            for name in pending:
                labels[name] = addresses[-1]
            pending = []
    addresses = addresses[:len(decoded)]
    best: list[Instr] = []
    for k, ins in enumerate(decoded):
        if ins.op != "BRA":
            continue
        target = re.search(r"BRA\s+(?:`\((\.L_x_\d+)\)|(0x[0-9a-f]+))", ins.text, re.I)
        if not target:
            continue
        start = labels.get(target.group(1)) if target.group(1) else int(target.group(2), 16)
        if start is None or start >= addresses[k]:
            continue
        body = [d for d, a in zip(decoded, addresses) if start <= a <= addresses[k]]
        if sum(d.op == op for d in body) > sum(d.op == op for d in best):
            best = body
    return best
