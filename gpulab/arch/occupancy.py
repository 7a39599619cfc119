"""How many blocks of a kernel fit on one SM at once: the occupancy calculator.

A block is resident on an SM only if the SM has room for all of it at once: its warps
(warp slots), its registers, its shared memory, and a block slot. Occupancy is the number
of resident warps over the most the SM can hold (64 on Hopper). The rules below are those
of NVIDIA's ``cuda_occupancy.h`` (the header behind ``cudaOccupancyMaxActiveBlocksPerMultiprocessor``)
for compute capability 8.x/9.x, with the limits of the CUDA C++ Programming Guide's table
for compute capability 9.0:

* warps: ``max_threads_per_sm / 32`` warp slots; a block takes ``ceil(threads / 32)`` of them;
* registers: allocated per warp, ``registers_per_thread * 32`` rounded UP to a multiple of
  256 (the allocation granularity); the 64K registers of an SM are split between its 4
  sub-partitions, so a sub-partition holds ``floor(16384 / registers_per_warp)`` warps;
* shared memory: the driver reserves 1 KiB per block (``reservedSharedMemPerBlock``, since
  Ampere), the block's static + dynamic bytes plus that reserve are rounded up to 128 bytes,
  and the SM's unified L1/shared memory is split by a carve-out whose steps on Hopper are
  0, 8, 16, 32, 64, 100, 132, 164, 196 and 228 KiB;
* blocks: at most 32 resident blocks per SM.

    >>> occ = occupancy(256, 64, 0)          # 256 threads, 64 registers each
    >>> occ.blocks_per_sm, occ.warps_per_sm, occ.limited_by
    (4, 32, 'registers')

On a GPU, :func:`limits_of` reads the same limits from the driver, and
:func:`driver_occupancy` asks the driver itself (the chapter's GPU test compares the two).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from numba import cuda, float32   # for occupancy_probe (the package imports numba after choosing the mode)

__all__ = ["SMLimits", "Occupancy", "H200", "occupancy", "carveout_bytes", "registers_per_warp",
           "limits_of", "driver_occupancy", "LIMIT_NAMES", "kernel_resources", "occupancy_probe"]

KIB = 1024

#: the order in which ties between limits are named (the first that binds wins)
LIMIT_NAMES = ("warps", "registers", "shared memory", "blocks")


@dataclass(frozen=True)
class SMLimits:
    """What one SM offers a kernel, and how it hands it out."""
    name: str = "H200 (compute capability 9.0)"
    compute_capability: tuple = (9, 0)
    sm_count: int = 132
    warp_size: int = 32
    max_threads_per_block: int = 1024
    max_threads_per_sm: int = 2048
    max_blocks_per_sm: int = 32
    registers_per_sm: int = 64 * KIB
    registers_per_block: int = 64 * KIB
    max_registers_per_thread: int = 255
    register_granularity: int = 256          # registers, allocated per warp
    sub_partitions: int = 4                  # register files (and schedulers) per SM
    shared_per_sm: int = 228 * KIB           # the largest carve-out
    shared_per_block: int = 48 * KIB         # without opting in (cudaFuncAttributeMaxDynamicSharedMemorySize)
    shared_per_block_optin: int = 227 * KIB
    shared_reserved_per_block: int = 1 * KIB
    shared_granularity: int = 128            # bytes
    carveout_steps_kib: tuple = (0, 8, 16, 32, 64, 100, 132, 164, 196, 228)

    @property
    def max_warps_per_sm(self) -> int:
        return self.max_threads_per_sm // self.warp_size


#: Hopper's limits (CUDA C++ Programming Guide, compute capability 9.0; H200 SXM: 132 SMs)
H200 = SMLimits()


@dataclass(frozen=True)
class Occupancy:
    """The result: resident blocks and warps per SM, what limits them, and each limit."""
    blocks_per_sm: int
    warps_per_sm: int
    fraction: float                  # warps_per_sm / max warps per SM
    limited_by: str                  # one of LIMIT_NAMES ("none fit" when a block cannot launch)
    limits: dict = field(default_factory=dict)   # limit name -> blocks it alone would allow
    registers_per_block: int = 0     # allocated (after rounding)
    shared_per_block: int = 0        # allocated (reserve included, after rounding)
    shared_per_sm: int = 0           # the carve-out this launch gets

    def __str__(self) -> str:
        return (f"{self.blocks_per_sm} blocks = {self.warps_per_sm} warps per SM "
                f"({self.fraction:.0%} occupancy), limited by {self.limited_by}")


def registers_per_warp(registers_per_thread: int, limits: SMLimits = H200) -> int:
    """Registers one warp is given: 32 x per-thread, rounded up to the granularity (256)."""
    return _round_up(registers_per_thread * limits.warp_size, limits.register_granularity)


def carveout_bytes(needed: int, limits: SMLimits = H200, preference_percent: int | None = None) -> int:
    """The shared-memory carve-out an SM is configured with: the smallest step that holds
    ``needed`` bytes and the preference (a percentage of the largest step, as
    ``cudaFuncAttributePreferredSharedMemoryCarveout``), or the largest with no preference."""
    steps = [s * KIB for s in limits.carveout_steps_kib]
    if preference_percent is None:
        wanted = steps[-1]
    else:
        if not 0 <= preference_percent <= 100:
            raise ValueError(f"a carve-out preference is a percentage 0-100, got {preference_percent}")
        wanted = math.ceil(steps[-1] * preference_percent / 100)
    wanted = max(wanted, needed)
    for step in steps:
        if step >= wanted:
            return step
    return steps[-1]


def occupancy(threads_per_block: int, registers_per_thread: int, shared_bytes_per_block: int = 0,
              limits: SMLimits = H200, carveout_percent: int | None = None,
              opted_in: bool = True) -> Occupancy:
    """Resident blocks and warps per SM for a kernel launched with ``threads_per_block``
    threads, using ``registers_per_thread`` registers and ``shared_bytes_per_block`` bytes
    of shared memory (static + dynamic; the driver's 1 KiB reserve is added here).

    ``carveout_percent``: the kernel's preferred carve-out (None: the driver's default, the
    largest). ``opted_in``: the kernel raised its dynamic shared-memory limit above 48 KiB
    (numba does when launched with more); if False, more than 48 KiB does not launch.
    """
    _validate(threads_per_block, registers_per_thread, shared_bytes_per_block, limits)
    warps = math.ceil(threads_per_block / limits.warp_size)

    by_warps = limits.max_warps_per_sm // warps

    reg_warp = registers_per_warp(registers_per_thread, limits)
    reg_block = reg_warp * warps
    # the hardware checks the block as if its warps were spread over all sub-partitions
    reg_block_assumed = reg_warp * _round_up(warps, limits.sub_partitions)
    if reg_block_assumed > limits.registers_per_block or reg_block > limits.registers_per_block:
        by_registers = 0
    elif reg_warp == 0:
        by_registers = limits.max_blocks_per_sm
    else:
        warps_per_partition = (limits.registers_per_sm // limits.sub_partitions) // reg_warp
        by_registers = (warps_per_partition * limits.sub_partitions) // warps

    shared_block = _round_up(shared_bytes_per_block + limits.shared_reserved_per_block, limits.shared_granularity)
    block_cap = (limits.shared_per_block_optin if opted_in else limits.shared_per_block) \
        + limits.shared_reserved_per_block
    if shared_block > block_cap:
        by_shared, shared_sm = 0, 0
    else:
        shared_sm = carveout_bytes(shared_block, limits, carveout_percent)
        by_shared = shared_sm // shared_block

    by_blocks = limits.max_blocks_per_sm
    table = dict(zip(LIMIT_NAMES, (by_warps, by_registers, by_shared, by_blocks)))
    blocks = min(table.values())
    limited_by = min(LIMIT_NAMES, key=lambda name: (table[name], LIMIT_NAMES.index(name)))
    if blocks == 0:
        limited_by = f"none fit ({limited_by})"
    resident_warps = blocks * warps
    return Occupancy(blocks, resident_warps, resident_warps / limits.max_warps_per_sm, limited_by,
                     table, reg_block, shared_block, shared_sm)


def _round_up(x: int, unit: int) -> int:
    return unit * math.ceil(x / unit)


def _validate(threads, registers, shared, limits):
    for name, value in (("threads_per_block", threads), ("registers_per_thread", registers),
                        ("shared_bytes_per_block", shared)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 1 <= threads <= limits.max_threads_per_block:
        raise ValueError(f"threads_per_block must be 1..{limits.max_threads_per_block}, got {threads}")
    if not 0 <= registers <= limits.max_registers_per_thread:
        raise ValueError(f"registers_per_thread must be 0..{limits.max_registers_per_thread} "
                         f"(the most a thread can address), got {registers}")
    if shared < 0:
        raise ValueError(f"shared_bytes_per_block must be >= 0, got {shared}")


# ------------------------------------------------------------------ on a GPU: the driver


def limits_of(device=None) -> SMLimits:
    """The limits of a real GPU, read from the driver's device attributes (numba's device
    object; ``device=None``: the current one). The allocation granularities, sub-partitions
    and carve-out steps are not device attributes: they are those of the compute capability
    (``cuda_occupancy.h``), kept from :data:`H200` for 9.0 and refused for others."""
    from .. import runtime

    if not runtime.ON_GPU:
        raise RuntimeError("limits_of reads the driver's attributes and needs a GPU; under the "
                           "simulator use the published limits, gpulab.arch.occupancy.H200")
    from numba import cuda

    dev = device if device is not None else cuda.get_current_device()
    cc = tuple(dev.compute_capability)
    if cc[0] != 9:
        raise NotImplementedError(f"granularities and carve-out steps are tabulated for compute capability 9.x "
                                  f"only; this GPU is {cc}")
    return replace(
        H200, name=f"{dev.name.decode() if isinstance(dev.name, bytes) else dev.name} "
                   f"(compute capability {cc[0]}.{cc[1]})",
        compute_capability=cc, sm_count=int(dev.MULTIPROCESSOR_COUNT), warp_size=int(dev.WARP_SIZE),
        max_threads_per_block=int(dev.MAX_THREADS_PER_BLOCK),
        max_threads_per_sm=int(dev.MAX_THREADS_PER_MULTIPROCESSOR),
        max_blocks_per_sm=int(dev.MAX_BLOCKS_PER_MULTIPROCESSOR),
        registers_per_sm=int(dev.MAX_REGISTERS_PER_MULTIPROCESSOR),
        registers_per_block=int(dev.MAX_REGISTERS_PER_BLOCK),
        shared_per_sm=int(dev.MAX_SHARED_MEMORY_PER_MULTIPROCESSOR),
        shared_per_block=int(dev.MAX_SHARED_MEMORY_PER_BLOCK),
        shared_per_block_optin=int(dev.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN),
        shared_reserved_per_block=int(dev.RESERVED_SHARED_MEMORY_PER_BLOCK))


def driver_occupancy(kernel, signature, threads_per_block: int, dynamic_shared_bytes: int = 0) -> int:
    """Blocks per SM as the driver computes them (``cuOccupancyMaxActiveBlocksPerMultiprocessor``)
    for a ``gpulab.kernel`` compiled for ``signature`` (a tuple of numba types). GPU only."""
    from .. import runtime
    from ..launch import _driver, _function_handle

    if not runtime.ON_GPU:
        raise RuntimeError("driver_occupancy asks the CUDA driver and needs a GPU")
    dispatcher = getattr(kernel, "dispatcher", kernel)
    compiled = dispatcher.compile(tuple(signature))
    err, blocks = _driver().cuOccupancyMaxActiveBlocksPerMultiprocessor(
        _function_handle(compiled), threads_per_block, dynamic_shared_bytes)
    if int(err) != 0:
        raise RuntimeError(f"cuOccupancyMaxActiveBlocksPerMultiprocessor failed: {err}")
    return int(blocks)


def kernel_resources(kernel, signature) -> tuple[int, int]:
    """(registers per thread, static shared bytes per block) of a compiled kernel. GPU only."""
    dispatcher = getattr(kernel, "dispatcher", kernel)
    compiled = dispatcher.compile(tuple(signature))
    return int(compiled.regs_per_thread), int(compiled.shared_mem_per_block)


#: values the probe keeps live per thread: about 127 registers unless ``max_registers`` caps it
PROBE_LIVE = 96


def occupancy_probe(x, out):
    """A kernel body with dynamic shared memory and PROBE_LIVE values live at once (ptxas for
    sm_90: 127 registers uncapped), so ``gpulab.kernel(occupancy_probe, max_registers=m)``
    compiles to m registers for m up to ~127 (spilling the rest): the comparison with the
    driver then covers register counts that are not multiples of 8 (the per-warp 256-register
    granularity). Compiled, never launched by the comparison (the driver answers from the
    compiled kernel)."""
    buf = cuda.shared.array(0, dtype=float32)
    i = cuda.grid(1)
    if i < x.size:
        buf[cuda.threadIdx.x] = x[i]
        acc = cuda.local.array(PROBE_LIVE, dtype=float32)
        for j in range(PROBE_LIVE):
            acc[j] = x[i] + float32(j)
        for k in range(8):
            s = buf[cuda.threadIdx.x]
            for j in range(PROBE_LIVE):
                acc[j] = acc[j] * s + float32(k)
        total = float32(0.0)
        for j in range(PROBE_LIVE):
            total += acc[j]
        out[i] = total
