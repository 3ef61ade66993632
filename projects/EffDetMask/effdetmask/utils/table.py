"""Plain-text tables of benchmark rows (one dict per row), as the benchmark scripts print them."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

__all__ = ["format_number", "format_table"]


def format_number(value: Any) -> str:
    """``-`` for ``None``, 4 significant digits for floats, ``str`` for the rest."""
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
                 fmt: Callable[[Any], str] = format_number) -> str:
    """``rows`` as a ``|``-separated table of ``columns`` (a missing key prints as ``None``),
    with a header and a rule; columns as wide as their widest cell."""
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
