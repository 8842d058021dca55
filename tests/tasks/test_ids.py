"""The task id rule shared by callers and agents (tasks.ids)."""

import pytest

from tasks.errors import InvalidJobSpec
from tasks.ids import MAX_TASK_ID, check_task_id, task_id_problem

pytestmark = pytest.mark.pure

VALID = ["0b6c3f1e-8a9e-4a53-9d1e-1f2a3b4c5d6e", "a", "job.1", "a:b_c-d", "x" * MAX_TASK_ID, "A.."]
INVALID = ["", ".hidden", ".", "..", "../x", "a/../../b", "/abs", "a/b", "x" * (MAX_TASK_ID + 1),
           "caf\u00e9", "\u0661\u0662", "a\x00b", "a b", "a\nb", "ok\n", "a\\b", None, 7, b"bytes"]


@pytest.mark.parametrize("task_id", VALID)
def test_valid_ids_pass(task_id):
    assert task_id_problem(task_id) is None
    assert check_task_id(task_id) == task_id


@pytest.mark.parametrize("task_id", INVALID)
def test_invalid_ids_are_refused_naming_the_field(task_id):
    assert task_id_problem(task_id)
    with pytest.raises(InvalidJobSpec) as info:
        check_task_id(task_id)
    assert info.value.field == "task_id"
