"""What every record shares: one writer, one strict reader and one tolerant reader.

A record is a frozen dataclass stored in the broker's Redis. ``to_dict()`` is its
layout on the wire (field names and order as agents and readers have always used
them), ``to_json()`` its JSON text; ``from_json()`` reads it back and raises
:class:`~tasks.errors.RecordError` for anything else; ``parse()`` is what readers use:
a malformed entry gives None and a warning, never a crash.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Mapping, TypeVar

from ..errors import RecordError

log = logging.getLogger("tasks.records")

R = TypeVar("R", bound="Record")


class Record:
    """Base of every stored record; subclasses define ``to_dict`` and ``from_dict``."""

    def to_dict(self) -> dict[str, Any]:
        """The record's wire layout as plain JSON data."""
        raise NotImplementedError

    def to_json(self) -> str:
        """The one writer: the record as JSON text."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any]) -> R:
        """Build the record from its decoded wire layout (may raise KeyError, TypeError, ValueError)."""
        raise NotImplementedError

    @classmethod
    def from_json(cls: type[R], raw: Any) -> R:
        """The one parser: JSON text (or already decoded data) to the record; raises RecordError."""
        try:
            data = json.loads(raw) if isinstance(raw, (str, bytes, bytearray)) else raw
            if not isinstance(data, Mapping):
                raise TypeError(f"a JSON {type(data).__name__}, not an object")
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RecordError(f"not a {cls.__name__}: {type(exc).__name__}: {exc}") from None

    @classmethod
    def parse(cls: type[R], raw: Any) -> R | None:
        """Tolerant :meth:`from_json`: None, with a warning, for a malformed entry."""
        try:
            return cls.from_json(raw)
        except RecordError as exc:
            log.warning("skipped a malformed stored record: %s", exc)
            return None


class HashRecord(Record):
    """A record stored as a Redis hash whose every value is JSON (one field per key)."""

    def to_redis(self) -> dict[str, str]:
        """The one writer: the hash fields to HSET, each value JSON-encoded."""
        return {key: json.dumps(value) for key, value in self.to_dict().items()}

    @classmethod
    def from_redis(cls: type[R], fields: Mapping[str, str]) -> R:
        """The record from an HGETALL reply; a value that is not JSON is kept as text."""
        return cls.from_json({key: _decode(value) for key, value in fields.items()})

    @classmethod
    def parse_redis(cls: type[R], fields: Mapping[str, str]) -> R | None:
        """Tolerant :meth:`from_redis`: None, with a warning, for a malformed hash."""
        return cls.parse({key: _decode(value) for key, value in fields.items()})


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def text(value: Any) -> str:
    """``value`` when it is a string; else a TypeError (for ``from_dict``)."""
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value


def number(value: Any) -> float:
    """``value`` as a float when it is a JSON number; else a TypeError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{value!r} is not a number")
    return float(value)


def whole(value: Any) -> int:
    """``value`` as an int when it is a whole JSON number; else a TypeError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise TypeError(f"{value!r} is not a whole number")
    return int(value)


def strings(items: Any) -> tuple[str, ...]:
    """``items`` as a tuple when it is a JSON list of strings; else a TypeError."""
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
        raise TypeError(f"{items!r} is not a list of strings")
    return tuple(items)
