"""Chapter 01: GPU architecture by microbenchmark.

What the two papers measure and model, in modules a learner can read one at a time:

* :mod:`.occupancy`: how many blocks fit on an SM (the CUDA occupancy calculator's rules);
* :mod:`.intrinsics`: ``clock64``, ``%smid`` and ``%globaltimer`` as numba intrinsics (inline PTX);
* :mod:`.chase`: the pointer chase over one random cycle (Sattolo) that times each memory level;
* :mod:`.banks`: shared-memory bank conflicts counted on the simulator's access tracer;
* :mod:`.sweeps`: the GPU microbenchmark kernels (stride, divergence, FFMA chains);
* :mod:`.sass` and :mod:`.issue_model`: Hopper's control bits and a cycle-level model of a sub-core;
* :mod:`.dpx`, :mod:`.dsmem`, :mod:`.fp8`: the Hopper units, each through what reaches it.
"""
from .occupancy import H200, Occupancy, SMLimits  # noqa: F401  (the module occupancy stays a module)
