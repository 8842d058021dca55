"""Run the autoscaler from plain settings: the loop wired to its metric source,
strategy and host provider, picked by name from :data:`autoscaler.registry.REGISTRY`,
and its listeners (``jobyard autoscale`` fills the settings)."""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class AutoscaleConfig:
    """Everything one autoscaler run needs; the defaults are ``jobyard autoscale``'s.
    ``provider``, ``metric_source`` and ``strategy`` are names in the registry."""

    maximum: int
    provider: str = "local"
    minimum: int = 0
    poll: float = 1.0
    stabilisation: float = 30.0
    cooldown: float = 10.0
    hysteresis: float = 0.2
    host_cpus: float = 1.0
    host_memory: int = 1024**3
    queues: tuple[str, ...] = ("default",)
    jobs_per_host: int | None = None
    metric_source: str = "broker"
    strategy: str = "bin-packing"
    record: str | None = None
    metrics_port: int | None = None
    state_dir: str | None = None
    host_prefix: str | None = None
    agent_args: tuple[str, ...] = ()
    image: str | None = None
    asg_name: str | None = None
    region: str | None = None


def run_autoscaler(config: AutoscaleConfig) -> None:
    """Scale the fleet until SIGTERM or SIGINT."""
    from tasks.app import app
    from tasks.state import state_client

    from .drain import Drainer
    from .loop import Autoscaler, Policy
    from .registry import REGISTRY
    from .report import DecisionLog, RedisReporter
    from .telemetry import DurabilityWatch, Telemetry
    from .timeline import TimelineWriter

    client = state_client()
    policy = Policy(minimum=config.minimum, maximum=config.maximum, poll=config.poll,
                    cooldown=config.cooldown, stabilisation=config.stabilisation,
                    hysteresis=config.hysteresis)
    source = REGISTRY.sources.make(config.metric_source, config, client)
    strategy = REGISTRY.strategies.make(config.strategy, config)
    provider = REGISTRY.providers.make(config.provider, config)
    durability = DurabilityWatch(client, app.jobyard_settings.durability)
    listeners = [durability, DecisionLog(), RedisReporter(client, provider.shape, config.queues, policy.poll)]
    if config.record:
        listeners.append(TimelineWriter(config.record))
    if config.metrics_port:
        telemetry = Telemetry(degraded=lambda: durability.degraded)
        telemetry.serve(config.metrics_port)
        listeners.append(telemetry)
    autoscaler = Autoscaler(source, provider, Drainer(app, client), policy, strategy, listeners)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    logging.getLogger("autoscaler").info("autoscaling %s between %d and %d hosts", ",".join(config.queues),
                                         policy.minimum, policy.maximum)
    autoscaler.run(stop)

