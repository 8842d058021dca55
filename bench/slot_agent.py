"""A fixed-slot agent, for comparisons only (bench/packing.py): the monolith's model.

``python -m bench.slot_agent agent --slots N [jobyard agent options]`` runs the
``jobyard agent`` command with an agent whose ledger admits N jobs at once whatever
they request. jobyard itself always admits by requests; this lives in the bench.
"""

from __future__ import annotations

import functools
import sys

from executor.agent import Agent
from executor.capacity import Capacity, Ledger


class SlotLedger(Ledger):
    """Admits a fixed number of jobs, ignoring their requests."""

    sizes_jobs = False

    def __init__(self, capacity: Capacity, slots: int):
        super().__init__(capacity)
        self.slots = slots

    def _fits(self, cpus: float, memory: int) -> bool:
        return len(self._held) < self.slots


class SlotAgent(Agent):
    """An agent whose admission counts slots (:class:`SlotLedger`)."""

    def __init__(self, config, slots: int, **kwargs):
        self.slots = slots
        super().__init__(config, **kwargs)

    def make_ledger(self, capacity: Capacity) -> Ledger:
        return SlotLedger(capacity, self.slots)


def split_slots(argv: list[str]) -> tuple[int, list[str]]:
    """(N, the other arguments) of an argv that holds ``--slots N``."""
    at = argv.index("--slots")
    slots = int(argv[at + 1])
    if slots < 1:
        raise SystemExit("--slots must be at least 1")
    return slots, argv[:at] + argv[at + 2:]


def main(argv: list[str] | None = None) -> None:
    """Run ``jobyard agent`` with a :class:`SlotAgent`."""
    from jobyard.cli import main as jobyard

    slots, rest = split_slots(list(sys.argv[1:] if argv is None else argv))
    jobyard.main(rest, prog_name="bench.slot_agent", obj={"agent_class": functools.partial(SlotAgent, slots=slots)})


if __name__ == "__main__":
    main()
