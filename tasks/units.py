"""Parsing and formatting of memory sizes.

Accepted forms (case-insensitive suffixes, as Docker reads them, all binary):
plain bytes (``1048576``), ``b``, ``k``/``kb``, ``m``/``mb``, ``g``/``gb``, ``t``/``tb``;
and the Kubernetes binary forms ``Ki``, ``Mi``, ``Gi``, ``Ti``. Decimals are allowed
(``1.5Gi``). Kubernetes' decimal ``M``/``G`` are read as Docker reads them (binary).
"""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_FACTORS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "ki": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mi": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gi": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "ti": 1024**4,
}


def parse_memory(value: int | float | str) -> int:
    """Return ``value`` as a whole number of bytes; raise ValueError if malformed."""
    if isinstance(value, bool):
        raise ValueError(f"not a memory size: {value!r}")
    if isinstance(value, (int, float)):
        if value < 0 or value != value:
            raise ValueError(f"memory size must be positive: {value!r}")
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"not a memory size: {value!r}")
    match = _SIZE.match(value)
    if not match:
        raise ValueError(f"not a memory size: {value!r} (use e.g. 512m, 1g, 256Mi, 1Gi or bytes)")
    number, suffix = match.groups()
    factor = _FACTORS.get(suffix.lower())
    if factor is None:
        raise ValueError(f"unknown memory unit {suffix!r} in {value!r} (use b, k, m, g, t, Ki, Mi, Gi, Ti)")
    return int(float(number) * factor)


def format_memory(size: int) -> str:
    """Format bytes in the largest binary unit that keeps one decimal: ``1.5Gi``."""
    for unit, factor in (("Ti", 1024**4), ("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if size >= factor:
            text = f"{size / factor:.1f}".rstrip("0").rstrip(".")
            return f"{text}{unit}"
    return f"{size}B"
