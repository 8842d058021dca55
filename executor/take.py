"""The agent's take: a queued job is always in Redis, on a queue or recorded as taken.

kombu's Redis transport takes a message in two round trips: BRPOP pops it, then
the consumer records it in kombu's unacked hash and index (``unacked``,
``unacked_index``), which is what lets a lease requeue it if its taker dies. A
connection that dies between the two (Redis crashing after the pop, the reply
lost on the way, the consumer killed while reading it) loses the job, though no
container ever started it.

The agent's channel (:mod:`executor.channel`) closes that window, and places jobs
while it is at it:

* **Taking** is one Lua script (:data:`TAKE`): it removes a message from the
  consumer's queue lists, in kombu's order (priority, then queue, oldest first), and
  records it in kombu's unacked hash and index in the same atomic step, scored by the
  server's clock (as renewals and the sweep are, :mod:`executor.channel`). Whatever
  happens to the reply, the job is either still queued or recorded, and an
  unrenewed record is requeued by kombu's visibility sweep (the lease, tasks.app).
* **Only what fits.** A consumer that passes :class:`TakeLimits` (an agent's free
  capacity) gets the oldest of the first :data:`LOOK_AHEAD` messages whose requests
  fit; jobs it passes over keep their place. One passed over for longer than the
  bound gets a host reserved for it: the first host that could run it stops taking
  anything until it fits there, while the other hosts keep backfilling (no
  starvation, and no fleet-wide drain for one job).
* The script never blocks, so a consumer **waits on doorbells**: one short list
  per queue (:func:`tasks.keys.bell`) that every publish pushes to in the same
  script as the message (:data:`tasks.transport.PUBLISH`), and its own
  (:func:`tasks.keys.wake`), rung when its capacity frees. A doorbell holds no job,
  so popping one loses nothing. An empty take deletes its queues' doorbells, leaving
  none behind for jobs already taken; a take that found nothing fitting waits on its
  own doorbell only.
* **Delayed jobs stay in Redis.** Each take first moves its lists' due messages from
  their delayed sets (:func:`tasks.keys.delayed`) to the head of their lists, ringing
  their doorbells, and moves an eta message it finds on a list whose eta is still to
  come to its delayed set instead of taking it (``tasks/lua/delayed.lib.lua``); an
  empty take says when the first delayed job is due, and the consumer's doorbell wait
  ends then. No agent holds a job waiting its eta.
* A message pushed without ringing (a plain kombu publisher, a hand-edited list)
  is still taken: a doorbell wait times out after ``brpop_timeout`` (1 s) and the
  consumer looks again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from tasks import keys
from tasks.records.messages import SAMPLE_BYTES
from tasks.transport import BELL_CAP, DELAYED_LIB, RESERVATION_LIFETIME, lua_script, reservation

#: Messages a consumer looks at, oldest first, per queue list, for one that fits.
LOOK_AHEAD = 32
#: Seconds a consumer that found nothing fitting waits for its own doorbell
#: (rung when its capacity frees) before it looks again.
NOTHING_FITS_WAIT = 0.5

#: Take one message that fits and record it as unacknowledged in the same step. Its
#: KEYS, ARGV, reply and the keys it touches are documented in ``executor/lua/take.lua``;
#: :func:`take_arguments` builds them.
TAKE = DELAYED_LIB + lua_script(__package__, "take.lua")


@dataclass(frozen=True)
class TakeLimits:
    """What a consumer can run now, for :data:`TAKE` to choose a message that fits."""

    free_cpus: float
    free_memory: int
    host_cpus: float
    host_memory: int
    #: Seconds a message that could run here may be passed over for smaller ones
    #: before a host reserves itself for it.
    bound: float
    #: Per queue: the largest (cpus, memory) of any host serving it.
    largest: dict[str, tuple[float, int]]
    #: This consumer's host name: who holds the reservations it makes.
    holder: str = ""
    #: Per queue: how many hosts may hold a reservation in it at once (default 1).
    reserving: dict[str, int] = field(default_factory=dict)


#: The largest raw item a take accepts when its consumer names no cap (bytes).
DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024


def take_arguments(fixed: list[str], lists: list[tuple[str, str]], reservations: list[str], bells: list[str],
                   limits: TakeLimits | None, spec_header: str | None = None,
                   scale_header: str | None = None, max_message: int = DEFAULT_MAX_MESSAGE,
                   host: str | None = None, delayed: list[str] | None = None) -> tuple[list, list]:
    """KEYS and ARGV of :data:`TAKE`: ``fixed`` is [unacked, unacked index, skipped, rejected];
    ``lists`` pairs each queue with its list key, in the order to look at them;
    ``reservations`` is each list's queue's reservations hash, in the same order, and
    ``delayed`` its delayed set (default: :func:`tasks.keys.delayed` of the list key). Items over
    ``max_message`` bytes or not messages are set aside in the rejected list, by ``host``."""
    if limits is None or not spec_header:
        sizing = [0, 0, 0, 0, 0, 0, "", "", "", "", 0]
        per_list = [{"cpus": 0, "memory": 0, "reserving": 0} for _ in lists]
    else:
        sizing = [LOOK_AHEAD, limits.free_cpus, limits.free_memory, limits.host_cpus, limits.host_memory,
                  limits.bound, spec_header, scale_header or "", limits.holder, keys.agent(""),
                  RESERVATION_LIFETIME]
        own = (limits.host_cpus, limits.host_memory)
        per_list = [_largest(limits.largest.get(queue, own), limits.reserving.get(queue, 1)) for queue, _ in lists]
    for entry, (queue, _) in zip(per_list, lists):
        entry["queue"] = queue
        entry["bell"] = next((n for n, key in enumerate(bells) if key.endswith(keys.bell(queue))), None)
    if delayed is None:
        delayed = [keys.delayed(key) for _, key in lists]
    aside = {"cap": int(max_message), "host": host, "kept": keys.REJECTED_KEPT, "ttl": keys.REJECTED_TTL,
             "sample": SAMPLE_BYTES}
    script_keys = [*fixed, *(key for _, key in lists), *reservations, *delayed, *bells]
    return script_keys, [len(lists), *sizing, json.dumps(per_list), json.dumps(aside), BELL_CAP]


def _largest(host: tuple[float, int], reserving: int) -> dict:
    """One entry of :data:`TAKE`'s per-list ARGV: the largest host and the reservation cap."""
    return {"cpus": host[0], "memory": host[1], "reserving": reserving}


def release_reservations(client, queues: list[str], holder: str) -> int:
    """Drop ``holder``'s reservations in ``queues`` (it is draining): another host may
    reserve for those jobs at once. Returns how many it held."""
    released = 0
    for queue in queues:
        mine = [tag for tag, entry in client.hgetall(keys.reservations(queue)).items()
                if reservation(entry)[0] == holder]
        if mine:
            released += client.hdel(keys.reservations(queue), *mine)
    return released
