"""Public functions of gpulab.dist refuse bad input with a message that says what to do."""
import pytest
import torch

from gpulab.dist import comm as C
from gpulab.dist import fsdp, galvatron as G, pipeline as P
from gpulab.dist.float8 import Float8Linear
from gpulab.dist.model import ModelConfig, synthetic_batch


def test_model_config_refuses_shapes_that_cannot_split():
    with pytest.raises(ValueError, match="multiple of n_heads"):
        ModelConfig(dim=30, n_heads=4)
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        ModelConfig(n_heads=8, n_kv_heads=3)
    with pytest.raises(ValueError, match="even"):
        ModelConfig(dim=24, n_heads=8, n_kv_heads=4)


def test_batches_and_stages_refuse_bad_sizes():
    cfg = ModelConfig()
    with pytest.raises(ValueError, match="seq_len must be in 1..16"):
        synthetic_batch(cfg, 2, seq_len=17)
    with pytest.raises(ValueError, match="batch must be positive"):
        synthetic_batch(cfg, 0)
    with pytest.raises(ValueError, match="at least as many blocks"):
        P.build_stage(cfg, 0, 5)
    with pytest.raises(ValueError, match="multiple of the world size"):
        C.chunk_of(torch.ones(5), 0, 2)


def test_memory_and_planning_refuse_bad_numbers():
    with pytest.raises(ValueError, match="shard_degree positive"):
        fsdp.fsdp_memory_bytes(10, 0, 1)
    with pytest.raises(ValueError, match="whole number of MiB"):
        G.dp_plan([[1.0]], [[1]], -1)
    with pytest.raises(ValueError, match="power-of-two"):
        G.strategies_for(6)
    with pytest.raises(ValueError, match="no all-reduce profile for groups of 4"):
        G.Hardware({2: 0.1}).allreduce(4)
    with pytest.raises(ValueError, match="too many"):
        G.brute_force_plan([[1.0] * 8] * 8, [[1] * 8] * 8, 10)


def test_float8_linear_refuses_a_bias():
    with pytest.raises(ValueError, match="without bias"):
        Float8Linear.from_linear(torch.nn.Linear(16, 16))


def test_thread_ranks_refuse_sends_to_themselves():
    with pytest.raises(ValueError, match="cannot send to rank 0"):
        C.run_threads(lambda comm: comm.send(torch.ones(1), comm.rank), 1, timeout_s=5)
    with pytest.raises(ValueError, match="world_size must be positive"):
        C.ThreadWorld(0)
