"""How the store writes times: RFC 3339 UTC with microseconds and a 'Z', everywhere."""

from __future__ import annotations

from datetime import datetime


def iso(value: datetime | None) -> str | None:
    """RFC 3339 UTC with a 'Z', as every answer and every manifest of the store writes times."""
    if value is None:
        return None
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
