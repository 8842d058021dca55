"""The registry of role implementations by name, and the CLI's pick from it: pure table tests."""

import pytest

from autoscaler.errors import ConfigError
from autoscaler.registry import REGISTRY, Registry, default_registry
from autoscaler.run import AutoscaleConfig

pytestmark = pytest.mark.pure


@pytest.mark.parametrize("role, expected", [
    ("sources", ("broker",)),
    ("strategies", ("bin-packing",)),
    ("providers", ("local", "docker", "aws")),
])
def test_built_in_implementations_are_registered_by_name(role, expected):
    assert getattr(default_registry(), role).names() == expected


@pytest.mark.parametrize("role, name, message", [
    ("providers", "kubernetes", "unknown provider 'kubernetes': local, docker or aws"),
    ("strategies", "llen", "unknown strategy 'llen': bin-packing"),
    ("sources", "", "unknown metric source '': broker"),
])
def test_an_unknown_name_is_a_config_error_naming_the_known_ones(role, name, message):
    with pytest.raises(ConfigError) as raised:
        getattr(default_registry(), role).make(name, AutoscaleConfig(maximum=1))
    assert str(raised.value) == message


@pytest.mark.parametrize("name", ["", "Local", "two words", "a/b", "-x", "x" * 65])
def test_a_malformed_name_is_refused(name):
    with pytest.raises(ConfigError):
        Registry().providers.register(name, lambda config: None)


def test_a_name_taken_by_another_factory_is_refused_and_the_same_one_is_kept():
    registry = default_registry()
    with pytest.raises(ConfigError, match="already registered"):
        registry.providers.register("local", lambda config: None)
    factory = lambda config: "made"  # noqa: E731 - a one-line factory
    registry.providers.register("mine", factory)
    registry.providers.register("mine", factory)
    assert registry.providers.make("mine", AutoscaleConfig(maximum=1)) == "made"
    assert registry.providers.names()[-1] == "mine"


@pytest.mark.parametrize("config, names", [
    (AutoscaleConfig(maximum=2), ("broker", "bin-packing")),
    (AutoscaleConfig(maximum=2, metric_source="broker", strategy="bin-packing", jobs_per_host=3), ("broker", "bin-packing")),
])
def test_the_run_config_names_its_source_and_strategy(config, names):
    assert (config.metric_source, config.strategy) == names
    strategy = REGISTRY.strategies.make(config.strategy, config)
    assert strategy.jobs_per_host == config.jobs_per_host


def test_the_aws_provider_needs_its_group():
    with pytest.raises(ConfigError, match="--asg-name is required"):
        default_registry().providers.make("aws", AutoscaleConfig(maximum=1, provider="aws"))


def test_the_cli_offers_exactly_the_registered_providers_and_no_bench_signal():
    from jobyard.autoscale_command import autoscale

    options = {param.name: param for param in autoscale.params}
    assert tuple(options["provider"].type.choices) == REGISTRY.providers.names()
    assert "signal_kind" not in options


def test_the_list_length_baseline_lives_in_bench_and_registers_through_the_registry():
    import autoscaler.metrics
    import autoscaler.strategy

    assert not hasattr(autoscaler.metrics, "ListLengthMetrics")
    assert not hasattr(autoscaler.strategy, "ListLength")
    from bench import keda_like

    assert "list-length" in REGISTRY.sources.names() and "list-length" in REGISTRY.strategies.names()
    strategy = REGISTRY.strategies.make("list-length", AutoscaleConfig(maximum=1))
    assert isinstance(strategy, keda_like.ListLength) and strategy.jobs_per_host == 5
