"""Printing results: JSON for scripts, rich tables for people."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


def emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    t = Table(title=title)
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*("" if v is None else str(v) for v in row))
    console.print(t)


def prob(p: float) -> str:
    return f"{p:.4f}"


def health_line(health: dict) -> str | None:
    """A release's health in one line, or None when it was not measured."""
    if "perplexity" not in health:
        return None
    return (
        f"held-out perplexity {health['perplexity_base']:.2f} -> {health['perplexity']:.2f} "
        f"({health['perplexity_rise_pct']:+.1f} %), fluency {health['fluency_change_pct']:+.1f} %"
    )
