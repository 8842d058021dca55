"""The control loop: the only place that holds the safety rules.

Every poll it observes the backlog, asks the strategy how many hosts the demand
needs, and turns that into an :class:`~autoscaler.action.Action` under these rules:

* never fewer than ``minimum`` nor more than ``maximum`` hosts;
* scale out on the next poll; scale in only after the demand has stayed below the
  fleet for ``stabilisation`` seconds, and not within ``cooldown`` of the last
  action; a scale-in target is packed to ``1 - hysteresis`` of each host, so a
  fleet that just fits its demand is not shrunk (and then grown again);
* a host leaves only by a drain: idle hosts first, then the one whose work ends
  soonest; it stops consuming, and is removed only once it and its worker hold no
  job. A host running a job is never removed.

Nothing the loop needs lives only in its memory: hosts come from the provider,
drains and agent states from Redis, so a restarted loop picks up where it was.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol

from tasks.records import AgentState

from .action import HOLD, IN, OUT, Action
from .drain import Drainer
from .errors import AutoscalerError, ConfigError
from .metrics import Observation
from .roles import Host, HostProvider, MetricSource, Strategy
from .shape import Request
from .strategy import BinPacking, Target

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Policy:
    """The loop's safety settings (seconds for times)."""

    minimum: int = 0
    maximum: int = 4
    poll: float = 1.0
    cooldown: float = 10.0
    stabilisation: float = 30.0
    hysteresis: float = 0.2
    boot_timeout: float = 120.0

    def __post_init__(self):
        if not 0 <= self.minimum <= self.maximum:
            raise ConfigError(f"need 0 <= min <= max, got min={self.minimum} max={self.maximum}")
        if self.poll <= 0 or self.cooldown < 0 or self.stabilisation < 0 or self.boot_timeout <= 0:
            raise ConfigError("poll must be positive; cooldown, stabilisation and boot timeout not negative")
        if not 0 <= self.hysteresis < 1:
            raise ConfigError(f"hysteresis must be in [0, 1), got {self.hysteresis}")

    def clamp(self, hosts: int) -> int:
        """``hosts`` within [minimum, maximum]."""
        return max(self.minimum, min(self.maximum, hosts))


@dataclass(frozen=True)
class Tick:
    """Everything one poll saw and did, for logs, the timeline and metrics."""

    time: float
    observation: Observation
    current: int
    desired: int
    draining: tuple[str, ...]
    action: Action
    removed: tuple[str, ...] = ()
    unfit: tuple[Request, ...] = field(default=())

    def row(self) -> dict:
        """The timeline row: flat JSON values."""
        obs = self.observation
        return {"time": round(self.time, 3), "ready": obs.ready, "in_flight": obs.in_flight,
                "running": obs.running, "waiting": len(obs.demand.waiting),
                "demand_cpus": round(obs.demand.cpus, 3), "demand_memory": obs.demand.memory,
                "hosts_current": self.current, "hosts_desired": self.desired, "draining": len(self.draining),
                "decision": self.action.direction, "count": self.action.count, "reason": self.action.reason,
                "hosts": ",".join(self.action.hosts), "removed": ",".join(self.removed)}


class Listener(Protocol):
    """Something told about every tick (log, timeline file, Redis, Prometheus)."""

    def observe(self, tick: Tick) -> None:
        """Take note of ``tick``; must not raise."""


class Autoscaler:
    """Runs the loop described in the module docstring."""

    def __init__(self, source: MetricSource, provider: HostProvider, drainer: Drainer,
                 policy: Policy | None = None, strategy: Strategy | None = None,
                 listeners: list[Listener] | None = None,
                 clock: Callable[[], float] = time.time):
        self.source = source
        self.provider = provider
        self.drainer = drainer
        self.policy = policy or Policy()
        self.strategy = strategy or BinPacking()
        self.listeners = list(listeners or ())
        self.clock = clock
        self._below_since: float | None = None
        self._window: list[tuple[float, int]] = []
        self._last_action = float("-inf")
        self._stopped: set[str] = set()
        self._empty_polls: dict[str, int] = {}

    def run(self, stop: threading.Event) -> None:
        """Tick every ``policy.poll`` seconds until ``stop`` is set."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.tick()
            except AutoscalerError as exc:
                log.warning("autoscaler poll failed, retrying: %s", exc)
            stop.wait(max(0.0, self.policy.poll - (time.monotonic() - started)))

    def tick(self) -> Tick:
        """One poll: observe, progress drains, decide, act, tell the listeners."""
        now = self.clock()
        observation = self.source.read()
        hosts = {host.name: host for host in self.provider.hosts()}
        draining = self._reconcile_drains(hosts)
        removed = self._progress_drains(draining, hosts, observation)
        removed += self._remove_failed_boots(hosts, draining, observation, now)
        active = [h for name, h in hosts.items() if name not in draining and name not in removed]
        wanted = self.strategy.desired(observation.demand, self.provider.shape)
        keep = self.strategy.desired(observation.demand, self.provider.shape, 1.0 - self.policy.hysteresis)
        desired = self.policy.clamp(wanted.hosts)
        action = self._decide(now, active, desired, self.policy.clamp(max(keep.hosts, wanted.hosts)), wanted)
        action = self._apply(action, observation, active, [d for d in draining if d in hosts and d not in removed])
        self.provider.protect({n for n, s in observation.agents.items() if s.busy and n in hosts})
        current = len(active) + {OUT: action.count, IN: -action.count}.get(action.direction, 0)
        tick = Tick(now, observation, current, desired, tuple(sorted(self.drainer.draining())), action,
                    tuple(removed), wanted.unfit)
        for listener in self.listeners:
            listener.observe(tick)
        return tick

    def _reconcile_drains(self, hosts: dict[str, Host]) -> dict[str, float]:
        draining = self.drainer.draining()
        for name in [n for n in draining if n not in hosts]:
            self.drainer.unmark(name)
            del draining[name]
        return draining

    def _progress_drains(self, draining: dict[str, float], hosts: dict[str, Host],
                         observation: Observation) -> list[str]:
        removed = []
        for name in draining:
            state = observation.agents.get(name)
            if name not in self._stopped:
                queues = state.queues if state else self.source.queues
                if self.drainer.stop_consuming(name, queues):
                    self._stopped.add(name)
                continue
            if self.drainer.is_empty(name, state):
                self._empty_polls[name] = self._empty_polls.get(name, 0) + 1
            else:
                self._empty_polls[name] = 0
            # Two empty polls in a row: a message prefetched just before the consumer
            # was cancelled shows up in between.
            if self._empty_polls[name] >= 2:
                self.provider.remove(name)
                self.drainer.unmark(name)
                self._forget(name)
                removed.append(name)
                log.info("removed drained host %s", name)
        return removed

    def _remove_failed_boots(self, hosts: dict[str, Host], draining: dict[str, float],
                             observation: Observation, now: float) -> list[str]:
        # Only a host that never heartbeated at all: its worker never consumed a job.
        # One whose state merely expired (Redis hiccup, hung agent) may run jobs; it stays.
        failed = [h.name for h in hosts.values() if h.name not in draining and h.name not in observation.registered
                  and now - h.created > self.policy.boot_timeout]
        for name in failed:
            log.warning("host %s did not come up within %gs; removing it", name, self.policy.boot_timeout)
            self.provider.remove(name)
        return failed

    def _decide(self, now: float, active: list[Host], desired: int, keep: int, wanted: Target) -> Action:
        current = len(active)
        self._window = [(t, n) for t, n in self._window if now - t <= self.policy.stabilisation]
        self._window.append((now, keep))
        if keep >= current:
            self._below_since = None
        elif self._below_since is None:
            self._below_since = now
        below = self._below_since
        situation = Situation(current, desired, keep, None if below is None else now - below,
                              now - self._last_action,
                              max(n for t, n in self._window if below is None or t >= below), wanted.hosts,
                              wanted.reason)
        return decide(self.policy, situation)

    def _apply(self, action: Action, observation: Observation, active: list[Host],
               draining: list[str]) -> Action:
        if action.direction == OUT:
            resumed = self._resume(draining[: action.count], observation)
            started = self.provider.add(action.count - len(resumed))
            action = replace(action, hosts=tuple(resumed) + tuple(h.name for h in started))
        elif action.direction == IN:
            candidates = {h.name: observation.agents[h.name] for h in active if h.name in observation.agents}
            victims = choose_victims(candidates, action.count)
            if not victims:
                return Action.hold(f"no host can be drained yet ({action.reason})")
            for name in victims:
                self.drainer.mark(name)
            action = replace(action, count=len(victims), hosts=tuple(victims))
            self._below_since, self._window = None, []
        if action.direction != HOLD:
            self._last_action = self.clock()
            log.info("%s", action.describe())
        return action

    def _resume(self, names: list[str], observation: Observation) -> list[str]:
        for name in names:
            state = observation.agents.get(name)
            self.drainer.resume(name, state.queues if state else self.source.queues)
            self._forget(name)
        return names

    def _forget(self, name: str) -> None:
        self._stopped.discard(name)
        self._empty_polls.pop(name, None)


@dataclass(frozen=True)
class Situation:
    """What one decision is made from (hosts counts are clamped to min/max)."""

    current: int
    desired: int
    keep: int
    below_for: float | None
    since_action: float
    window_keep: int
    needed: int
    reason: str


def decide(policy: Policy, now: Situation) -> Action:
    """The safety rules as a pure function (see the module docstring).

    ``desired`` packs hosts full; ``keep`` (>= desired) packs them to 1 - hysteresis;
    ``below_for`` is how long ``keep`` has stayed below ``current`` (None: it is not);
    ``window_keep`` is the most ``keep`` asked for in that time.
    """
    if now.desired > now.current:
        note = ""
        if now.needed > now.desired:
            note = f"; capped at max {policy.maximum}"
        elif now.needed < now.desired:
            note = f"; raised to min {policy.minimum}"
        return Action(OUT, now.desired - now.current, now.reason + note)
    if now.current > policy.maximum:
        return Action(IN, now.current - policy.maximum, f"{now.current} hosts exceed max {policy.maximum}")
    if now.below_for is None:
        return Action.hold(f"{now.current} host(s) fit the demand: {now.reason}")
    if now.below_for < policy.stabilisation:
        return Action.hold(f"demand fits {now.keep} host(s) for {now.below_for:.0f}s of {policy.stabilisation:g}s "
                           "stabilisation window")
    if now.since_action < policy.cooldown:
        return Action.hold(f"cooldown: {now.since_action:.0f}s of {policy.cooldown:g}s since last action")
    if now.window_keep >= now.current:
        return Action.hold(f"{now.current} host(s) needed within the stabilisation window")
    return Action(IN, now.current - now.window_keep,
                  f"demand has fit {now.window_keep} host(s) for {now.below_for:.0f}s: {now.reason}")


def choose_victims(candidates: dict[str, AgentState], count: int) -> list[str]:
    """The ``count`` hosts to drain: idle ones first, then those whose work ends soonest.

    Only hosts that published state are candidates; a host still starting is not.
    """
    order = sorted(candidates.values(), key=lambda s: (s.busy, s.work_ends_by, s.hostname))
    return [state.hostname for state in order[:count]]
