"""bench/chaos.py's recovery measure: from the later of the kill and the job's retry due time."""

from __future__ import annotations

import pytest

from bench.chaos import Entry, Fault, Sighting, Start, recoveries

pytestmark = pytest.mark.pure

KILL = 100.0


def job(starts, sightings=(), kind="doomed") -> Entry:
    entry = Entry("job-1", kind, 1.0, accepted=90.0)
    entry.starts = [Start(at, agent, n + 1) for n, (at, agent) in enumerate(starts)]
    entry.sightings = list(sightings)
    return entry


def sent(at, retries, due) -> Sighting:
    return Sighting("task-sent", at, "jobyard@a", retries, due)


def received(at, host, retries, due) -> Sighting:
    return Sighting("task-received", at, f"jobyard@{host}", retries, due)


@pytest.mark.parametrize("sightings, seconds, from_kill, mid_retry, held", [
    # No retry pending: late from the kill.
    ([], 11.0, 11.0, False, False),
    # In a retry countdown at the kill, held by the killed agent: late from its due time.
    ([sent(98.0, 1, 104.0), received(98.5, "a", 1, 104.0)], 7.0, 11.0, True, True),
    # The retry was due before the kill: late from the kill.
    ([sent(95.0, 1, 96.0), received(95.5, "b", 1, 96.0)], 11.0, 11.0, False, False),
    # The latest retry seen before the re-run decides; one seen after it does not.
    ([sent(97.0, 1, 99.0), sent(99.5, 2, 103.0), sent(112.0, 3, 130.0)], 8.0, 11.0, True, False),
])
def test_recovery_counts_from_the_later_of_the_kill_and_the_retry_due_time(sightings, seconds, from_kill,
                                                                            mid_retry, held):
    entry = job([(97.0, "a"), (111.0, "b")], sightings)
    found, missing, total = recoveries([entry], [Fault("a", KILL, respawned=KILL + 1.5)])
    assert (missing, total) == ([], 1)
    (recovery,) = found
    assert (recovery.seconds, recovery.from_kill) == (pytest.approx(seconds), pytest.approx(from_kill))
    assert (recovery.mid_retry, recovery.held_by_killed) == (mid_retry, held)


def test_a_job_not_re_run_is_missing_and_a_job_on_another_agent_is_not_in_flight():
    waiting = job([(97.0, "a")])
    elsewhere = job([(97.0, "b"), (111.0, "b")])
    elsewhere.id = "job-2"
    found, missing, total = recoveries([waiting, elsewhere], [Fault("a", KILL)])
    assert (found, missing, total) == ([], ["job-1 (None)"], 1)
