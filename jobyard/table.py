"""Plain-text tables for the CLI: aligned columns, no dependencies."""

from __future__ import annotations

from typing import Any, Iterable, Sequence


def render_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], empty: str = "(none)") -> str:
    """Render ``rows`` under ``headers`` as an aligned text table."""
    text_rows = [["" if cell is None else str(cell) for cell in row] for row in rows]
    if not text_rows:
        return f"{'  '.join(h.upper() for h in headers)}\n{empty}"
    widths = [len(h) for h in headers]
    for row in text_rows:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))
    line = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths)).rstrip()
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in text_rows]
    return "\n".join([line, rule, *body])
