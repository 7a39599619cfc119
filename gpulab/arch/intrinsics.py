"""Clock and SM registers as numba device functions: ``clock64()``, ``smid()``, ``globaltimer()``.

numba.cuda has no function that reads the SM's cycle counter, so these read PTX special
registers with one line of inline PTX each (``mov.u64 %0, %clock64;``), written as numba
``@intrinsic`` functions, as numba-cuda itself writes its cache-hint loads (``cuda.ldca``):

* ``clock64()``: the SM's 64-bit cycle counter (``%clock64``), counting at the SM clock;
* ``smid()``: the number of the SM the thread runs on (``%smid``);
* ``globaltimer()``: a global nanosecond timer (``%globaltimer``), the same on every SM.

The inline assembly is marked as having side effects so the compiler neither merges two
reads nor moves one across other such reads. Call them from a kernel like any device
function: ``start = clock64()``.

Under the simulator there is no clock to read: ``clock64()`` returns 0 every time (it
counts NO cycles, so every difference of two reads is 0), ``smid()`` returns 0 (one
simulated SM) and ``globaltimer()`` returns the host's nanosecond clock (the host's time
spent simulating, not a GPU's). :data:`COUNTS_CYCLES` says which case holds, and
:func:`cycles_note` says it in a sentence.
"""
from __future__ import annotations

import time

from .. import runtime

__all__ = ["clock64", "smid", "globaltimer", "COUNTS_CYCLES", "cycles_note", "PTX"]

#: the PTX each intrinsic emits (also shown in the lecture)
PTX = {"clock64": "mov.u64 $0, %clock64;", "smid": "mov.u32 $0, %smid;",
       "globaltimer": "mov.u64 $0, %globaltimer;"}

#: True on a GPU: clock64() counts the SM's cycles; False under the simulator: it returns 0
COUNTS_CYCLES = runtime.ON_GPU


def cycles_note() -> str:
    """One sentence on what a cycle count from these functions means here."""
    if COUNTS_CYCLES:
        return "clock64() reads the SM's cycle counter (%clock64)"
    return ("under the simulator clock64() counts no cycles (it returns 0, so every difference is 0) "
            "and globaltimer() is the host's clock: timings come from a GPU run")


if runtime.ON_GPU:
    from llvmlite import ir
    from numba import types
    from numba.cuda.extending import intrinsic

    def _special_register(ptx: str, bits: int, numba_type):
        """An intrinsic with no arguments that returns one PTX special register."""
        constraint = "=l" if bits == 64 else "=r"

        @intrinsic
        def read(typingctx):
            def codegen(context, builder, sig, args):
                asm = ir.InlineAsm(ir.FunctionType(ir.IntType(bits), []), ptx, constraint, side_effect=True)
                return builder.call(asm, [])
            return numba_type(), codegen
        return read

    clock64 = _special_register(PTX["clock64"], 64, types.int64)
    smid = _special_register(PTX["smid"], 32, types.int32)
    globaltimer = _special_register(PTX["globaltimer"], 64, types.int64)

else:
    def clock64() -> int:
        """Simulator stand-in for %clock64: counts no cycles, always 0."""
        return 0

    def smid() -> int:
        """Simulator stand-in for %smid: every simulated block runs on 'SM 0'."""
        return 0

    def globaltimer() -> int:
        """Simulator stand-in for %globaltimer: the host's nanosecond clock."""
        return time.perf_counter_ns()
