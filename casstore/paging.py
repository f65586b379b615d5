"""Keyset paging, written once: a page of items and the cursor that continues after them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Page:
    """``limit`` items, and ``next_cursor`` (None on the last page)."""

    items: list
    next_cursor: str | None

    @classmethod
    def of(cls, rows: list, limit: int, key: Callable[[Any], Any]) -> "Page":
        """Rows fetched with LIMIT limit + 1: keep ``limit``; the cursor is the last kept row's key."""
        more = len(rows) > limit
        rows = rows[:limit]
        return cls(rows, str(key(rows[-1])) if more and rows else None)
