"""Chapter 14: distributed training (TorchTitan, arXiv 2410.06511; Galvatron, arXiv 2504.03662).

    from gpulab.dist.launch import Workers       # N processes: gloo on CPU, NCCL on N GPUs
    from gpulab.dist import model                # a small Llama (RMSNorm, RoPE, GQA, SwiGLU)
    from gpulab.dist import ddp, fsdp, tp, pipeline   # each by hand (raw collectives) and native
    from gpulab.dist import galvatron            # cost model and dynamic programme
    from gpulab.dist import float8               # tensorwise dynamic scaling

The family is torch only: distributed training is collectives and torch modules, with no
numba kernel to twin. Every by-hand parallelism talks through a ``Comm``
(:mod:`gpulab.dist.comm`): ``torch.distributed`` in real processes, or threads of one
process (``ThreadWorld``) for the lecture and the graded checks.
"""
from . import comm, model
from .comm import Deadlock, ThreadWorld, TorchComm, run_threads
from .model import ModelConfig, build_model, reference_step, synthetic_batch

__all__ = ["comm", "model", "Deadlock", "ThreadWorld", "TorchComm", "run_threads", "ModelConfig",
           "build_model", "reference_step", "synthetic_batch"]
