"""The agent registers its own task body and hands itself to its task and steps (pure).

Callers' apps register no task body: they publish ``jobyard.run`` by name. An agent
registers it on its app, bound to itself; its loops are worker steps that start
before the pool and stop after it, so leases are renewed while a warm shutdown lets
running jobs finish.
"""

from __future__ import annotations

import pytest
from celery.result import allow_join_result

from executor.request import ContainerRequest
from executor.steps import AGENT_OPTION, Gate, Heartbeat, Reaper, add_steps
from executor.task import ContainerJobTask, register
from tasks.app import create_app
from tasks.config import Settings
from tasks.names import RUN_TASK

pytestmark = pytest.mark.pure

#: Nothing listens here: building a worker never connects.
NOWHERE = "redis://127.0.0.1:1/0"


class Stub:
    """Stands in for an Agent: steps only read it when they start."""

    beat_seconds = 1.0


def app_for_test():
    return create_app(Settings.from_env({"JOBYARD_BROKER_URL": NOWHERE}))


def test_a_callers_app_registers_no_task_body():
    assert RUN_TASK not in app_for_test().tasks


def test_the_agent_registers_the_task_bound_to_itself():
    app, agent = app_for_test(), Stub()
    task = register(app, agent)
    assert app.tasks[RUN_TASK] is task and isinstance(task, ContainerJobTask)
    assert task.agent is agent and task.Request is ContainerRequest
    other = Stub()
    assert register(app, other).agent is other and app.tasks[RUN_TASK].agent is other


def worker_steps(app, **options):
    # Building the pool step marks this process as a worker's (result.get() would then
    # refuse to block in later tests): the context restores the mark.
    with allow_join_result():
        worker = app.WorkController(pool="threads", concurrency=1, without_mingle=True, without_gossip=True,
                                    **options)
    return [type(step) for step in worker.steps]


def test_the_agents_loops_start_before_the_pool_and_stop_after_it():
    app = app_for_test()
    add_steps(app)
    steps = worker_steps(app, **{AGENT_OPTION: Stub()})
    pool = next(n for n, step in enumerate(steps) if step.__name__ == "Pool")
    assert {Heartbeat, Reaper} == set(steps[:2]) and pool > 1
    assert Gate in app.steps["consumer"]


def test_a_worker_without_an_agent_includes_none_of_its_steps():
    app = app_for_test()
    add_steps(app)
    assert not {Heartbeat, Reaper} & set(worker_steps(app))
