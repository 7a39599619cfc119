"""The launcher: environment, backend choice, clear failures; the thread world's deadlock
report; bad input gets a clear error."""
import pytest
import torch

from gpulab.dist import comm as C
from gpulab.dist import launch
from gpulab.dist.launch import RankError, Workers


def test_rank_env_hides_gpus_on_cpu_and_keeps_multicast_off():
    env = launch.rank_env(1, 4, 29500, "gloo")
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["RANK"] == "1" and env["WORLD_SIZE"] == "4"
    assert env["GPULAB_MODE"] == "sim"        # a GPU-mode parent's gpulab would insist on a GPU
    assert env["NCCL_NVLS_ENABLE"] == "0" and env["TORCH_SYMM_MEM_DISABLE_MULTICAST"] == "1"
    assert "CUDA_VISIBLE_DEVICES" not in launch.rank_env(0, 2, 29500, "nccl")
    assert env["MASTER_ADDR"] == "127.0.0.1"


def test_backend_is_gloo_without_enough_gpus():
    enough = torch.cuda.is_available() and torch.cuda.device_count() >= 64
    assert launch.pick_backend(64) == ("nccl" if enough else "gloo")
    with pytest.raises(ValueError, match="backend"):
        launch.pick_backend(2, "mpi")


def test_free_port_is_a_port():
    assert 1024 <= launch.free_port() <= 65535


def test_workers_refuse_bad_sizes_and_unsendable_functions(pool):
    with pytest.raises(ValueError, match="world_size"):
        Workers(0)
    with pytest.raises(TypeError, match="module-level"):
        pool.run(lambda: 1)


def test_workers_see_their_rank_and_no_gpu(pool):
    import tests_dist_helpers as H
    out = pool.run(H.worker_env)
    assert [o[:2] for o in out] == [(r, 4) for r in range(4)]
    assert all(o[2] == "" and o[3] == "0" and o[4] is False and o[5] == "sim" for o in out)


def test_an_error_in_one_rank_names_the_rank_and_the_pool_goes_on(pool):
    import tests_dist_helpers as H
    with pytest.raises(RankError, match="rank 2"):
        pool.run(H.fail_on_rank, 2)
    assert pool.run(H.worker_env)[3][:2] == (3, 4)     # the other ranks were not stuck: same pool


def test_thread_world_collectives_equal_their_definitions():
    def body(comm):
        x = torch.arange(4.0) + 10 * comm.rank
        return comm.all_reduce(x), comm.all_gather(x), comm.reduce_scatter(x)

    out = C.run_threads(body, 2)
    total = torch.arange(4.0) * 2 + 10
    for rank, (ar, ag, rs) in enumerate(out):
        assert torch.equal(ar, total)
        assert torch.equal(ag, torch.cat([torch.arange(4.0), torch.arange(4.0) + 10]))
        assert torch.equal(rs, total.chunk(2)[rank])


def test_thread_world_names_a_deadlock():
    def both_receive_first(comm):
        other = 1 - comm.rank
        x = comm.recv((2,), torch.float32, other)
        comm.send(x, other)

    with pytest.raises(C.Deadlock, match="rank 0 waits in recv from rank 1; rank 1 waits in recv from rank 0"):
        C.run_threads(both_receive_first, 2, timeout_s=10)


def test_thread_world_names_a_collective_only_some_ranks_enter():
    def only_rank0(comm):
        if comm.rank == 0:
            comm.all_reduce(torch.ones(1))

    with pytest.raises(C.Deadlock, match="rank 0 waits in all_reduce.*rank 1 has finished"):
        C.run_threads(only_rank0, 2, timeout_s=10)


def test_thread_world_names_mismatched_collectives():
    def mismatched(comm):
        x = torch.ones(2)
        return comm.all_reduce(x) if comm.rank == 0 else comm.all_gather(x)

    with pytest.raises(C.Deadlock, match="different collectives"):
        C.run_threads(mismatched, 2, timeout_s=10)


def test_reduce_scatter_refuses_uneven_sizes():
    with pytest.raises(ValueError, match="multiple"):
        C.run_threads(lambda comm: comm.reduce_scatter(torch.ones(3)), 2, timeout_s=10)
