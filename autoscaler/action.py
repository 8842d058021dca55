"""A scaling action: its direction, how many hosts, which ones, and why."""

from __future__ import annotations

from dataclasses import dataclass

OUT = "out"
IN = "in"
HOLD = "hold"


@dataclass(frozen=True)
class Action:
    """What the loop decided on one poll. ``hosts`` names the hosts it affects
    (drained for ``in``, started or resumed for ``out``)."""

    direction: str
    count: int
    reason: str
    hosts: tuple[str, ...] = ()

    @classmethod
    def hold(cls, reason: str) -> "Action":
        """No change, and why."""
        return cls(HOLD, 0, reason)

    def describe(self) -> str:
        """One log line."""
        if self.direction == HOLD:
            return f"hold: {self.reason}"
        names = f" [{', '.join(self.hosts)}]" if self.hosts else ""
        return f"scale {self.direction} by {self.count}{names}: {self.reason}"
