"""Chapter 03's assignment checks: what they refuse before running anything, and the batch
helper. Every planted wrong answer of the four tasks runs in tests/course/test_planted.py."""
import pytest
import torch

import gpulab  # noqa: F401,I001  (before numba: it picks GPU or simulator)
from gpulab import fusion as fk
from gpulab.course.checks import ch03_kernel_fusion as A
from gpulab.course.feedback import TaskFailed


def test_task1_refuses_non_pipelines_and_a_reduction():
    with pytest.raises(TaskFailed, match="Pipeline"):
        A.check_task1(A.task1_preprocess)
    with pytest.raises(TaskFailed, match="no reduction"):
        A.check_task1(fk.Pipeline(fk.relu(), fk.reduce_sum(), channels=3))


def test_kernel_tasks_refuse_a_plain_function():
    for check in (A.check_task2, A.check_task3, A.check_task4):
        with pytest.raises(TaskFailed, match="@gpulab.kernel"):
            check(lambda *args: None)


def test_task4_batch_helper_makes_different_sizes():
    flat, offsets, gains = A.make_batch(6, torch.Generator().manual_seed(1))
    sizes = (offsets[1:] - offsets[:-1]).tolist()
    assert len(set(sizes)) > 1 and offsets[-1] == flat.numel() and gains.shape == (6,)
    assert offsets.dtype == torch.int32
    assert max(sizes) > A.TASK_GRID * A.TASK_BLOCK  # one item needs the grid to stride
