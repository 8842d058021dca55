"""Simulated schedules of a measured workload: what other placements would have made of it.

bench/packing.py measures each job's reserved time (admitted → released) on real
agents. Replaying those times through a simulator, with no dispatch latency, answers
two questions the area bound cannot:

* **the same policy, ideal**: jobyard's rule (oldest job that fits, every host
  backfilling) with zero dispatch cost. The gap to the real run is what taking,
  starting and reservations cost.
* **clairvoyant**: list schedules that know every job's duration in advance and
  start the longest (by duration × dominant share) first, the classic heuristic
  for makespan. No online scheduler knows durations; this is what one could reach
  if it did. The gap to the area bound is fragmentation: two resources rarely run
  out together.

Hosts are identical; a job fits a host when its cpus and memory both fit what is
free. Every simulated schedule respects capacity at every moment.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass(frozen=True)
class Item:
    """One job to place: its requests and how long it holds them."""

    cpus: float
    memory: float
    seconds: float


def simulate(items: Sequence[Item], hosts: int, cpus: float, memory: float,
             priority: Callable[[int, Item], float]) -> float:
    """Makespan of a greedy list schedule: at time 0 and at every release, start every
    waiting job (lowest ``priority`` first) that fits a host, on the host it fits
    tightest. All jobs are ready at time 0."""
    free = [[cpus, memory] for _ in range(hosts)]
    waiting = sorted(range(len(items)), key=lambda i: priority(i, items[i]))
    running: list[tuple[float, int, int]] = []  # (ends, job, host)
    now = 0.0
    while waiting or running:
        left = []
        for i in waiting:
            item = items[i]
            fitting = [h for h in range(hosts)
                       if item.cpus <= free[h][0] + 1e-9 and item.memory <= free[h][1] + 1e-6]
            if not fitting:
                left.append(i)
                continue
            host = min(fitting, key=lambda h: (free[h][0] - item.cpus) / cpus + (free[h][1] - item.memory) / memory)
            free[host][0] -= item.cpus
            free[host][1] -= item.memory
            heapq.heappush(running, (now + item.seconds, i, host))
        waiting = left
        if not running:
            raise ValueError("a job fits no host")
        now, i, host = heapq.heappop(running)
        free[host][0] += items[i].cpus
        free[host][1] += items[i].memory
        while running and running[0][0] <= now:
            _, j, other = heapq.heappop(running)
            free[other][0] += items[j].cpus
            free[other][1] += items[j].memory
    return now


def in_queue_order(items: Sequence[Item], hosts: int, cpus: float, memory: float) -> float:
    """jobyard's policy with no dispatch cost: the oldest job that fits goes first."""
    return simulate(items, hosts, cpus, memory, lambda i, _: i)


def clairvoyant(items: Sequence[Item], hosts: int, cpus: float, memory: float) -> float:
    """The best of the duration-aware list schedules (longest work first, by two measures)."""
    def work(_, item: Item) -> float:
        return -item.seconds * max(item.cpus / cpus, item.memory / memory)

    def longest(_, item: Item) -> float:
        return -item.seconds

    return min(simulate(items, hosts, cpus, memory, rule) for rule in (work, longest))
