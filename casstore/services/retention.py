"""Retention classes and expiry arithmetic (durations live in the database)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlmodel import Session

from ..errors import InvalidInput
from ..models import Producer, RetentionClass


def resolve_class(session: Session, producer: str, requested: str | None, store_default: str) -> RetentionClass:
    """The class a new package gets: the one asked for, else the producer's default, else the store's."""
    name = requested or _producer_default(session, producer) or store_default
    cls = session.get(RetentionClass, name)
    if cls is None:
        raise InvalidInput(f"unknown retention class: {name!r}", retention_class=name)
    return cls


def _producer_default(session: Session, producer: str) -> str | None:
    row = session.get(Producer, producer)
    return row.default_retention_class if row else None


def expiry(cls: RetentionClass, start: datetime) -> datetime | None:
    """When a package of this class started at ``start`` expires; None means never."""
    return None if cls.days is None else start + timedelta(days=cls.days)


def later(a: datetime | None, b: datetime | None) -> datetime | None:
    """The later of two expiries, where None (never) is the latest of all."""
    if a is None or b is None:
        return None
    return max(a, b)
