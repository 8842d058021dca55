"""Run the autoscaler from plain settings: the loop wired to its metric source,
strategy, host provider and listeners (``jobyard autoscale`` fills the settings)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class AutoscaleConfig:
    """Everything one autoscaler run needs; the defaults are ``jobyard autoscale``'s."""

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
    signal_kind: str = "full"
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
    from .metrics import BrokerMetrics, ListLengthMetrics
    from .report import DecisionLog, RedisReporter
    from .strategy import BinPacking, ListLength
    from .telemetry import Telemetry
    from .timeline import TimelineWriter

    client = state_client()
    policy = Policy(minimum=config.minimum, maximum=config.maximum, poll=config.poll,
                    cooldown=config.cooldown, stabilisation=config.stabilisation,
                    hysteresis=config.hysteresis)
    if config.signal_kind == "llen":
        source, strategy = ListLengthMetrics(client, config.queues), ListLength(config.jobs_per_host or 5)
    else:
        source, strategy = BrokerMetrics(client, config.queues), BinPacking(config.jobs_per_host)
    provider = make_provider(config)
    listeners = [DecisionLog(), RedisReporter(client, provider.shape, config.queues, policy.poll)]
    if config.record:
        listeners.append(TimelineWriter(config.record))
    if config.metrics_port:
        telemetry = Telemetry()
        telemetry.serve(config.metrics_port)
        listeners.append(telemetry)
    autoscaler = Autoscaler(source, provider, Drainer(app, client), policy, strategy, listeners)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    logging.getLogger("autoscaler").info("autoscaling %s between %d and %d hosts", ",".join(config.queues),
                                         policy.minimum, policy.maximum)
    autoscaler.run(stop)


def make_provider(config: AutoscaleConfig):
    """The host provider the config names."""
    from tasks.config import Settings

    from .shape import host_shape

    shape = host_shape(config.host_cpus, config.host_memory)
    settings = Settings.from_env()
    prefix = config.host_prefix or socket.gethostname().split(".")[0]
    if config.provider == "local":
        from .providers.local import LocalProvider

        state_dir = config.state_dir or os.path.join(settings.state_dir, "autoscaler")
        return LocalProvider(shape, state_dir, prefix, config.queues, tuple(config.agent_args))
    if config.provider == "docker":
        from .providers.docker import DockerProvider

        image = config.image or settings.agent_image
        return DockerProvider(shape, image, prefix, config.queues, tuple(config.agent_args),
                              state_dir=config.state_dir)
    if config.provider != "aws":
        raise ConfigError(f"unknown provider {config.provider!r}: local, docker or aws")
    from .providers.aws import AwsProvider

    if not config.asg_name:
        raise ConfigError("--asg-name is required for --provider aws")
    return AwsProvider(shape, config.asg_name, region=config.region)
