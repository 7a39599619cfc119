"""Distributed shared memory: a block reads the shared memory of another block of its cluster.

Hopper groups blocks into *clusters* (up to 8 portably) that run on SMs of one GPC; a block
can map a peer's shared memory into its own address space (``mapa``, here on a generic
address, as cooperative groups' ``cluster.map_shared_rank`` does) and load from it. The
Hopper paper (arXiv 2402.13499) times this on an H800 with a pointer chase: about 33 cycles
for the block's own shared memory, 180-207 for a peer's (as issue 16 quotes them; the
H200's come with this chapter's GPU run).

Why a generic address: with ``mapa.shared::cluster.u32`` and ``ld.shared::cluster`` on the
32-bit address, ptxas (sm_90) rebuilt a 64-bit window address on every hop (LEA, two MOVs,
about 11 cycles before the load); through the generic pointer a hop is one IMAD.WIDE.U32
and the load, as in the global-memory chase.

numba can neither launch a cluster nor emit these instructions, so this is a CUDA C++
kernel (:data:`SOURCE`, PTX inline, no headers) compiled by ``cuda.core.Program`` and
launched with ``cuda.core.LaunchConfig(grid=1, cluster=2, ...)`` (with a cluster, ``grid``
counts clusters). Block 0 chases a chain stored in the shared memory of block ``target``
(0: its own, through the same mapped generic load; 1: its peer's), then both
blocks meet at a cluster barrier so block 1's memory outlives the reads.

Under the simulator there is no cluster: :func:`shared_chain` and :func:`follow` (the
chain and where a chase of it ends) are what can be checked there.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from .. import runtime
from .chase import random_cycle

__all__ = ["SOURCE", "shared_chain", "follow", "measure", "DsmemResult", "PAPER_H800_CYCLES"]

#: the Hopper paper's H800 figures (cycles): own shared memory, a peer's in the cluster
PAPER_H800_CYCLES = {"local": 33, "remote": (180, 207)}

SOURCE = r"""
__device__ __forceinline__ unsigned cluster_rank() {
    unsigned r; asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r)); return r;
}
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive;\n\tbarrier.cluster.wait;" ::: "memory");
}
// a generic pointer to the same word in block `rank`'s shared memory (mapa on a generic
// address, as cooperative_groups' cluster.map_shared_rank does): loads through it are plain
// generic loads, one IMAD.WIDE of address arithmetic a hop
__device__ __forceinline__ const unsigned* map_to_rank(const unsigned* p, unsigned rank) {
    unsigned long long mapped;
    asm volatile("mapa.u64 %0, %1, %2;" : "=l"(mapped) : "l"(p), "r"(rank));
    return reinterpret_cast<const unsigned*>(mapped);
}
__device__ __forceinline__ unsigned load_word(const unsigned* p) {
    unsigned v; asm volatile("ld.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory"); return v;
}
// chain: n word indices (one cycle); out[0] = last index, out[1] = cycles of `steps` loads
extern "C" __global__ void dsmem_chase(const unsigned* chain, int n, int steps, int target,
                                       unsigned long long* out) {
    extern __shared__ unsigned words[];
    for (int i = threadIdx.x; i < n; i += blockDim.x) words[i] = chain[i];
    cluster_sync();                                   // every block's copy is in place
    if (cluster_rank() == 0 && threadIdx.x == 0) {
        const unsigned* base = map_to_rank(words, (unsigned)target);
        unsigned j = 0;
        for (int k = 0; k < steps; ++k) j = load_word(base + j);     // warm-up
        long long c0 = clock64();
        for (int k = 0; k < steps; ++k) j = load_word(base + j);
        if ((int)j < 0) j = 0;                        // a use of j: the clock waits for the last load
        long long c1 = clock64();
        out[0] = j;
        out[1] = (unsigned long long)(c1 - c0);
    }
    cluster_sync();                                   // block 1 stays until block 0 is done
}
"""


def shared_chain(words: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random cycle over ``words`` 4-byte words (uint32 indices as int32), for shared memory."""
    if not 2 <= words <= 48 * 1024 // 4:
        raise ValueError(f"words must be 2..12288 (48 KiB of shared memory), got {words}")
    return random_cycle(words, generator).to(torch.int32)


def follow(chain, steps: int) -> int:
    c = np.asarray(torch.as_tensor(chain).cpu())
    j = 0
    for _ in range(steps % c.size):
        j = int(c[j])
    return j


@dataclass
class DsmemResult:
    target: str          # "local" or "remote"
    steps: int
    cycles_per_load: float
    last_index: int


@functools.lru_cache(maxsize=1)
def _compiled_kernel():
    try:
        from cuda.core import Device, Program, ProgramOptions
    except ImportError:                                  # cuda-core before 0.3
        from cuda.core.experimental import Device, Program, ProgramOptions
    dev = Device()
    dev.set_current()
    arch = "".join(str(v) for v in dev.compute_capability)
    program = Program(SOURCE, "c++", ProgramOptions(arch=f"sm_{arch}", std="c++17"))
    return dev, program.compile("cubin").get_kernel("dsmem_chase")


def measure(target: str = "remote", words: int = 4096, steps: int = 4096,
            generator: torch.Generator | None = None) -> DsmemResult:
    """GPU only: chase ``steps`` loads through a chain in the shared memory of block 0
    (``target="local"``) or block 1 (``"remote"``) of a cluster of two."""
    if target not in ("local", "remote"):
        raise ValueError(f"target is 'local' or 'remote', got {target!r}")
    if not runtime.ON_GPU:
        raise RuntimeError("clusters and distributed shared memory need a Hopper GPU (cuda.core launches them)")
    try:
        from cuda.core import LaunchConfig, launch
    except ImportError:
        from cuda.core.experimental import LaunchConfig, launch
    dev, kernel = _compiled_kernel()
    chain = shared_chain(words, generator).cuda()
    out = torch.zeros(2, dtype=torch.int64, device="cuda")
    torch.cuda.synchronize()
    stream = dev.create_stream()
    config = LaunchConfig(grid=1, cluster=2, block=128, shmem_size=4 * words)
    launch(stream, config, kernel, np.uint64(chain.data_ptr()), np.int32(words), np.int32(steps),
           np.int32(1 if target == "remote" else 0), np.uint64(out.data_ptr()))
    stream.sync()
    last, cycles = out.tolist()
    expected = follow(chain, 2 * steps)
    if last != expected:
        raise RuntimeError(f"the distributed-shared-memory chase ended at {last}, the chain says {expected}")
    return DsmemResult(target, steps, cycles / steps, last)
