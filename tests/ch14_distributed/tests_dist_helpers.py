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


def titan_smoke(float8, compile_, steps=3):
    """TorchTitan's recipe (fully_shard, selective checkpointing, optional compile and
    float8) on a small model in this rank's process group; the losses of a few steps."""
    import torch

    from gpulab.dist.model import ModelConfig
    from gpulab.dist.titan import build_titan_model, titan_step

    cfg = ModelConfig(vocab_size=256, dim=256, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=512, max_seq_len=128)
    model, opt = build_titan_model(2, compile=compile_, float8=float8, cfg=cfg, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    tokens = torch.randint(0, 256, (2, 129), device="cuda", generator=gen)
    return [titan_step(model, opt, tokens[:, :-1], tokens[:, 1:]) for _ in range(steps)]
