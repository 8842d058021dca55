"""Implementations of the three roles (:mod:`autoscaler.roles`), registered by name.

``jobyard autoscale`` picks from :data:`REGISTRY` alone (its ``--provider`` choices
are :meth:`Kinds.names`), so an implementation registered here needs no other wiring.
Each entry is a factory from the run's :class:`~autoscaler.run.AutoscaleConfig`
(metric sources also get the state Redis client). Built-in factories import their
module only when called, so listing names never imports boto3 or the Docker SDK.
"""

from __future__ import annotations

import importlib
import re
from typing import TYPE_CHECKING, Callable, Generic, TypeVar

from .errors import ConfigError
from .roles import HostProvider, MetricSource, Strategy

if TYPE_CHECKING:
    import redis

    from .run import AutoscaleConfig

T = TypeVar("T")
NAME = re.compile(r"[a-z][a-z0-9-]{0,63}")


class Kinds(Generic[T]):
    """The implementations of one role, each a factory under a name."""

    def __init__(self, role: str):
        self.role = role
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str, factory: Callable[..., T]) -> None:
        """Offer ``factory`` as ``name``; a name another factory holds is refused."""
        if not NAME.fullmatch(name):
            raise ConfigError(f"a {self.role} name is lowercase letters, digits and '-', got {name!r}")
        if self._factories.get(name, factory) is not factory:
            raise ConfigError(f"{self.role} {name!r} is already registered")
        self._factories[name] = factory

    def names(self) -> tuple[str, ...]:
        """Every registered name, in the order registered."""
        return tuple(self._factories)

    def make(self, name: str, *args) -> T:
        """Build the implementation ``name`` from ``args`` (the role's factory arguments)."""
        factory = self._factories.get(name)
        if factory is None:
            known = self.names()
            listed = f"{', '.join(known[:-1])} or {known[-1]}" if len(known) > 1 else "".join(known)
            raise ConfigError(f"unknown {self.role} {name!r}: {listed}")
        return factory(*args)


class Registry:
    """One table per role: metric sources, strategies and host providers."""

    def __init__(self):
        self.sources: Kinds[MetricSource] = Kinds("metric source")
        self.strategies: Kinds[Strategy] = Kinds("strategy")
        self.providers: Kinds[HostProvider] = Kinds("provider")


def default_registry() -> Registry:
    """A registry holding the built-in implementations."""
    registry = Registry()
    registry.sources.register("broker", _broker_metrics)
    registry.strategies.register("bin-packing", _bin_packing)
    for kind in ("local", "docker", "aws"):
        registry.providers.register(kind, _from_module(f"autoscaler.providers.{kind}"))
    return registry


def _broker_metrics(config: AutoscaleConfig, client: redis.Redis) -> MetricSource:
    from .metrics import BrokerMetrics

    return BrokerMetrics(client, config.queues)


def _bin_packing(config: AutoscaleConfig) -> Strategy:
    from .strategy import BinPacking

    return BinPacking(config.jobs_per_host)


def _from_module(module: str) -> Callable[[AutoscaleConfig], HostProvider]:
    def build(config: AutoscaleConfig) -> HostProvider:
        return importlib.import_module(module).from_config(config)

    return build


#: The registry ``jobyard autoscale`` and the bench pick from.
REGISTRY = default_registry()
