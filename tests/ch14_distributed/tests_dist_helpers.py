"""Module-level functions the pool's workers import by name (tests/ is on their path)."""


def worker_env():
    import os

    import torch
    import torch.distributed as dist
    return (dist.get_rank(), dist.get_world_size(), os.environ["CUDA_VISIBLE_DEVICES"],
            os.environ["NCCL_NVLS_ENABLE"], torch.cuda.is_available(), os.environ["GPULAB_MODE"])


def fail_on_rank(rank):
    import torch.distributed as dist
    if dist.get_rank() == rank:
        raise ValueError(f"planted failure on rank {rank}")
    return dist.get_rank()
