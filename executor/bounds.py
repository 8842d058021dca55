"""How much of what a job writes the agent reads, keeps, stores or logs.

A job controls its result file and its output, so the agent never relies on the
in-container runner's own truncation: every job-written string is cut here, in UTF-8
bytes, before it reaches an error, Redis or a log line. A result is refused before it
is parsed when it is over the cap, holds more JSON values than the cap allows, or is
nested too deep (:func:`result_problem`), so parsing it costs the agent a bounded
multiple of the cap.
"""

from __future__ import annotations

import re
from itertools import accumulate
from typing import Any

#: exc_type and exc_module of a job's exception (the start is kept).
NAME_BYTES = 200
#: The job's own exception message, ``remote_message`` (the start is kept).
MESSAGE_BYTES = 4 * 1024
#: The job's traceback (the end is kept: the frame that raised).
TRACEBACK_BYTES = 16 * 1024
#: The tail of output put in errors (``log_tail``).
LOG_TAIL_BYTES = 4 * 1024
#: Captured output kept per job (the end), ``jobyard logs``.
LOG_KEEP_BYTES = 256 * 1024
#: Error text in a dead letter and in the agent's log lines about a job.
ERROR_BYTES = 4 * 1024
#: The last output line quoted in a non-zero exit's message.
LINE_BYTES = 300
#: Deepest nesting of arrays and objects in a result the agent parses.
MAX_DEPTH = 100
#: A result may hold one JSON value or key per this many bytes of the cap: CPython
#: spends 50-100 bytes on each, so the parsed value stays within ~12x the cap.
BYTES_PER_VALUE = 8

CUT = "..."
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
#: Bytes that are not brackets (deleted) and brackets mapped to +1 / -1 (as signed bytes).
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_FACT_SIZES = {"exc_type": NAME_BYTES, "exc_module": NAME_BYTES, "remote_message": MESSAGE_BYTES}
_FACT_TAILS = {"traceback": TRACEBACK_BYTES, "log_tail": LOG_TAIL_BYTES}


def head(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` UTF-8 bytes, keeping its start (cut text ends with ``...``)."""
    if len(text) * 4 <= limit:
        return text
    data = text[:limit].encode("utf-8", "replace")
    if len(text) <= limit and len(data) <= limit:
        return text
    keep = max(limit - len(CUT), 0)
    return data[:keep].decode("utf-8", "ignore") + CUT


def tail(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` UTF-8 bytes, keeping its end (cut text starts with ``...``)."""
    if len(text) * 4 <= limit:
        return text
    data = text[-limit:].encode("utf-8", "replace")
    if len(text) <= limit and len(data) <= limit:
        return text
    keep = max(limit - len(CUT), 0)
    return CUT + data[len(data) - keep:].decode("utf-8", "ignore")


def text(value: Any, limit: int, keep_end: bool = False) -> str:
    """A job-written field as text of at most ``limit`` bytes, whatever JSON type it has."""
    if value is None:
        value = ""
    elif not isinstance(value, str):
        value = str(value)
    return tail(value, limit) if keep_end else head(value, limit)


def clip_facts(facts: dict[str, Any]) -> dict[str, Any]:
    """``facts`` with every string cut to its documented size (others to :data:`ERROR_BYTES`)."""
    clipped = {}
    for key, value in facts.items():
        if isinstance(value, str):
            if key in _FACT_TAILS:
                value = tail(value, _FACT_TAILS[key])
            else:
                value = head(value, _FACT_SIZES.get(key, ERROR_BYTES))
        clipped[key] = value
    return clipped


def result_problem(raw: bytes, cap: int) -> dict[str, int] | None:
    """Why ``raw`` JSON would cost too much to parse under ``cap``, or None.

    A cheap scan of the bytes, outside strings: the number of values and keys
    (commas, colons and openings bound it from above) and the nesting depth.
    Returns ``{"values": n, "max_values": m}`` or ``{"depth": d, "max_depth": MAX_DEPTH}``.
    """
    skeleton = _skeleton(raw)
    values = skeleton.count(b",") + skeleton.count(b":") + skeleton.count(b"[") + skeleton.count(b"{") + 1
    max_values = max(cap // BYTES_PER_VALUE, 1)
    if values > max_values:
        return {"values": values, "max_values": max_values}
    steps = skeleton.translate(_STEPS, _NOT_BRACKETS)
    depth = max(accumulate(memoryview(steps).cast("b")), default=0)
    if depth > MAX_DEPTH:
        return {"depth": depth, "max_depth": MAX_DEPTH}
    return None


def _skeleton(raw: bytes) -> bytearray:
    """``raw`` with every string emptied; built piecewise, since ``re.sub`` would hold every piece at once."""
    skeleton = bytearray()
    view = memoryview(raw)
    last = 0
    for match in _STRING.finditer(raw):
        start, end = match.span()
        skeleton += view[last:start]
        skeleton += b'""'
        last = end
    skeleton += view[last:]
    return skeleton
