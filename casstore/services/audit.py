"""Audit events: written inside the transaction that makes the change they describe."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from ..models import AuditEvent, utcnow


def record(session: Session, actor: str, action: str, *, package_id: str | None = None,
           subject: str | None = None, **details: Any) -> AuditEvent:
    """Append one audit event to the session's transaction (it commits or rolls back with it)."""
    event = AuditEvent(at=utcnow(), actor=actor, action=action, package_id=package_id,
                       subject=subject, details=details or None)
    session.add(event)
    return event


class AuditService:
    """The fleet-wide audit feed: filtered, oldest first, paginated by event id."""

    def __init__(self, db) -> None:
        self.db = db

    def feed(self, *, package_id: str | None = None, actor: str | None = None, action: str | None = None,
             since=None, until=None, cursor: int | None = None, limit: int = 100):
        from sqlalchemy import select

        from .packages import Page

        stmt = select(AuditEvent)
        for column, value in ((AuditEvent.package_id, package_id), (AuditEvent.actor, actor),
                              (AuditEvent.action, action)):
            if value is not None:
                stmt = stmt.where(column == value)
        if since is not None:
            stmt = stmt.where(AuditEvent.at >= since)
        if until is not None:
            stmt = stmt.where(AuditEvent.at < until)
        if cursor is not None:
            stmt = stmt.where(AuditEvent.id > cursor)
        with self.db.read() as session:
            if cursor is not None and session.get(AuditEvent, cursor) is None:  # events are never removed
                from ..errors import InvalidInput

                raise InvalidInput(f"unknown cursor {cursor}: pass the next_cursor of a previous page")
            rows = list(session.scalars(stmt.order_by(AuditEvent.id).limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, str(rows[-1].id) if more and rows else None)
