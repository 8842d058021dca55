"""Dead letters against a real redis-server: a requeue starts the job's retries afresh."""

import json

from executor.deadletter import DeadLetters
from tasks import keys


def _message(task_id: str) -> dict:
    return {"body": "", "headers": {"id": task_id, "retries": 2}, "properties": {"delivery_tag": "t1"},
            "content-type": "application/json", "content-encoding": "utf-8"}


def test_requeue_forgets_the_publish_marks_of_earlier_retries(redis_client):
    task_id = "requeue-marks-1"
    queue_key = "requeue-marks-queue"
    letters = DeadLetters(redis_client)
    letters.add(task_id, {"name": "x", "reason": "failed"}, _message(task_id), queue_key)
    for retry in range(3):  # the job was published as retries 0, 1 and 2 before it died
        redis_client.set(keys.published(task_id, retry), 1, ex=keys.PUBLISHED_TTL)
    redis_client.set(keys.retried(task_id), 2)
    try:
        assert letters.requeue(task_id)
        # A retry of the requeued job must publish again, not be swallowed as a repeat.
        left = [retry for retry in range(3) if redis_client.exists(keys.published(task_id, retry))]
        assert left == [], f"publish marks of retries {left} survive the requeue"
        assert not redis_client.exists(keys.retried(task_id))
        assert json.loads(redis_client.lindex(queue_key, 0))["headers"]["retries"] == 0
    finally:
        redis_client.delete(queue_key, keys.dead_job(task_id), keys.retried(task_id),
                            *(keys.published(task_id, retry) for retry in range(3)))
        redis_client.zrem(keys.DEAD, task_id)
