"""Strategies and the loop's bounds: pure table tests."""

import pytest

from autoscaler.errors import ConfigError
from autoscaler.loop import Policy, choose_victims
from tasks.records import AgentState, HeldJob
from autoscaler.shape import HostShape, Request
from autoscaler.strategy import BinPacking, Demand, pack
from bench.keda_like import ListLength

pytestmark = pytest.mark.pure

Mi = 1024**2
Gi = 1024**3
SHAPE = HostShape(2.0, 2 * Gi)


def jobs(count, cpus=0.5, memory=256 * Mi):
    return tuple(Request(f"j{i}", cpus, memory) for i in range(count))


@pytest.mark.parametrize("waiting, running, per_host, expected", [
    ((), (), None, 0),                                   # nothing to do: zero hosts
    (jobs(1), (), None, 1),                              # one small job needs one host
    (jobs(4), (), None, 1),                              # 4 x 0.5 cpu fill exactly one host
    (jobs(5), (), None, 2),                              # one more spills over
    (jobs(3), jobs(3), None, 2),                         # running demand counts too
    (jobs(8, cpus=0.1, memory=1 * Gi), (), None, 4),     # memory binds, not cpus
    (jobs(4, cpus=2.0, memory=Mi * 10), (), None, 4),    # whole-host jobs
    (jobs(6, cpus=0.1, memory=10 * Mi), (), 2, 3),       # target jobs per host wins
    (jobs(2, cpus=0.1, memory=10 * Mi), (), 4, 1),       # packing wins over a loose target
    (jobs(2, cpus=3.0), (), None, 0),                    # too big for any host: no host for them
    (jobs(2, cpus=3.0) + jobs(1), (), None, 1),          # ...but the rest still counts
])
def test_bin_packing(waiting, running, per_host, expected):
    target = BinPacking(per_host).desired(Demand(waiting, running), SHAPE)
    assert target.hosts == expected, target.reason


def test_unfit_jobs_are_named_and_not_scaled_for():
    big = Request("huge", 1.0, 4 * Gi)
    target = BinPacking().desired(Demand((big,) + jobs(1)), SHAPE)
    assert target.unfit == (big,)
    assert target.hosts == 1
    assert "fit no host" in target.reason


def test_first_fit_decreasing_packs_mixed_sizes_tightly():
    # 1.5 + 0.5 and 1.0 + 1.0: two hosts; first-fit in arrival order would need three.
    mixed = (Request("a", 0.5, Mi), Request("b", 1.0, Mi), Request("c", 1.5, Mi), Request("d", 1.0, Mi))
    assert pack(mixed, SHAPE) == 2


@pytest.mark.parametrize("fill, expected", [(1.0, 1), (0.8, 2), (0.5, 2)])
def test_fill_below_one_is_the_hysteresis_band(fill, expected):
    assert pack(jobs(4), SHAPE, fill) == expected


@pytest.mark.parametrize("listed, expected", [(0, 0), (1, 1), (5, 1), (6, 2), (300, 60)])
def test_list_length_strategy_sees_only_the_list(listed, expected):
    target = ListLength(5).desired(Demand(jobs(listed), jobs(10)), SHAPE)
    assert target.hosts == expected


@pytest.mark.parametrize("minimum, maximum, needed, expected", [
    (0, 4, 0, 0), (1, 4, 0, 1), (0, 4, 9, 4), (2, 2, 0, 2), (2, 2, 5, 2), (0, 0, 3, 0),
])
def test_policy_clamps_to_bounds(minimum, maximum, needed, expected):
    assert Policy(minimum=minimum, maximum=maximum).clamp(needed) == expected


@pytest.mark.parametrize("options", [
    {"minimum": 3, "maximum": 2}, {"minimum": -1}, {"poll": 0}, {"hysteresis": 1.0}, {"cooldown": -1},
])
def test_policy_rejects_nonsense(options):
    with pytest.raises(ConfigError):
        Policy(**options)


def _agent(name, *ends):
    running = tuple(HeldJob(f"{name}-{i}", 0.5, Mi, started=end - 10, timeout=10) for i, end in enumerate(ends))
    return AgentState(name, f"jobyard@{name}", ("default",), SHAPE, running)


@pytest.mark.parametrize("agents, count, expected", [
    ([_agent("a", 100), _agent("b"), _agent("c", 50)], 1, ["b"]),            # idle first
    ([_agent("a", 100), _agent("b"), _agent("c", 50)], 2, ["b", "c"]),       # then soonest end
    ([_agent("a", 100, 10), _agent("c", 50, 60)], 1, ["c"]),                 # a host ends with its last job
    ([_agent("a", 100)], 3, ["a"]),                                          # never more than exist
])
def test_victims_idle_first_then_soonest_end(agents, count, expected):
    assert choose_victims({a.hostname: a for a in agents}, count) == expected


def _situation(current, desired, keep=None, below_for=None, since_action=1e9, window_keep=None, needed=None):
    from autoscaler.loop import Situation

    keep = desired if keep is None else keep
    return Situation(current, desired, keep, below_for, since_action,
                     keep if window_keep is None else window_keep, desired if needed is None else needed, "r")


@pytest.mark.parametrize("situation, expected", [
    (_situation(0, 3), ("out", 3)),                                          # scale out at once
    (_situation(2, 4, needed=9), ("out", 2)),                                # capped at max
    (_situation(2, 2), ("hold", 0)),                                         # steady
    (_situation(4, 1, below_for=5), ("hold", 0)),                            # inside the window
    (_situation(4, 1, below_for=31), ("in", 3)),                             # window passed
    (_situation(4, 1, below_for=31, since_action=3), ("hold", 0)),           # cooldown
    (_situation(4, 1, below_for=31, window_keep=3), ("in", 1)),              # the window's peak wins
    (_situation(4, 1, below_for=31, window_keep=4), ("hold", 0)),
    (_situation(6, 4), ("in", 2)),                                           # above max: no window needed
])
def test_decisions(situation, expected):
    from autoscaler.loop import decide

    action = decide(Policy(minimum=0, maximum=4, stabilisation=30, cooldown=10), situation)
    assert (action.direction, action.count) == expected, action


def test_min_and_max_notes_say_why():
    from autoscaler.loop import decide

    policy = Policy(minimum=1, maximum=2)
    assert "raised to min 1" in decide(policy, _situation(0, 1, needed=0)).reason
    assert "capped at max 2" in decide(policy, _situation(0, 2, needed=5)).reason


def test_hysteresis_band_keeps_a_fleet_whose_demand_wobbles():
    """Demand wobbling between 4 and 5 half-CPU jobs flips the full packing between one
    and two 2-CPU hosts, but the 80% packing keeps two: two hosts never scale in."""
    strategy = BinPacking()
    fulls, keeps = set(), set()
    for count in (4, 5, 4, 5, 4, 5):
        demand = Demand(running=jobs(count))
        fulls.add(strategy.desired(demand, SHAPE).hosts)
        keeps.add(strategy.desired(demand, SHAPE, 1 - Policy().hysteresis).hosts)
    assert fulls == {1, 2} and keeps == {2}
