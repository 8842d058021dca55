"""The timeline file: one row per poll, as JSON lines or CSV (by file extension)."""

from __future__ import annotations

import csv
import json
import os
from typing import IO

from .errors import RecordError
from .loop import Tick

COLUMNS = ("time", "ready", "in_flight", "running", "waiting", "demand_cpus", "demand_memory",
           "hosts_current", "hosts_desired", "draining", "decision", "count", "reason", "hosts", "removed")
_NUMERIC = {"time": float, "ready": int, "in_flight": int, "running": int, "waiting": int, "demand_cpus": float,
            "demand_memory": int, "hosts_current": int, "hosts_desired": int, "draining": int, "count": int}


class TimelineWriter:
    """Appends each tick's row to ``path`` (``.csv`` for CSV, anything else JSON lines)."""

    def __init__(self, path: str):
        self.path = path
        self.csv = path.endswith(".csv")
        try:
            new = not os.path.exists(path) or os.path.getsize(path) == 0
            self._file: IO[str] = open(path, "a", newline="")
        except OSError as exc:
            raise RecordError(f"cannot write the timeline {path}: {exc}") from exc
        self._csv = csv.DictWriter(self._file, COLUMNS) if self.csv else None
        if self._csv and new:
            self._csv.writeheader()

    def observe(self, tick: Tick) -> None:
        """Write ``tick``'s row and flush, so the file is readable while the loop runs."""
        row = tick.row()
        if self._csv:
            self._csv.writerow(row)
        else:
            self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file."""
        self._file.close()


def read_timeline(path: str) -> list[dict]:
    """The rows of a timeline file, numbers as numbers."""
    try:
        with open(path, newline="") as handle:
            if path.endswith(".csv"):
                rows = list(csv.DictReader(handle))
            else:
                rows = [json.loads(line) for line in handle if line.strip()]
    except (OSError, ValueError) as exc:
        raise RecordError(f"cannot read the timeline {path}: {exc}") from exc
    for row in rows:
        for name, kind in _NUMERIC.items():
            if name in row and row[name] not in ("", None):
                row[name] = kind(row[name])
    return rows
