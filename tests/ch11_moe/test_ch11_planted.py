"""Chapter 11's graded tasks: each planted wrong answer is rejected with feedback that
names the mistake (the mutation score is printed), and the solution notebook's answer passes."""
import pytest

from helpers import assert_planted_rejected, assert_solution_passes, planted_tasks, task_id

TASKS = planted_tasks("11")


@pytest.mark.parametrize("task", TASKS, ids=task_id)
def test_every_planted_wrong_answer_is_rejected_with_its_mistake_named(task, capsys):
    score = assert_planted_rejected(task)
    with capsys.disabled():
        print(f"\n  {score}")


@pytest.mark.parametrize("task", TASKS, ids=task_id)
def test_the_solution_passes(task):
    assert_solution_passes(task)
