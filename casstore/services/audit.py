"""Audit events: written inside the transaction that makes the change they describe."""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Any

from sqlmodel import Session

from ..models import AuditEvent, utcnow

# Who asked, beyond the actor: the HTTP layer binds the request id (and the token id, and the
# client's free-text X-Actor note when a token names the actor) for the request's thread.
_request: ContextVar[dict | None] = ContextVar("audit_request", default=None)


def bind_request(**fields: Any) -> Token:
    """Add ``fields`` as ``details.request`` to every event recorded in this context until unbound."""
    return _request.set({k: v for k, v in fields.items() if v is not None} or None)


def unbind_request(token: Token) -> None:
    _request.reset(token)


def record(session: Session, actor: str, action: str, *, package_id: str | None = None,
           subject: str | None = None, **details: Any) -> AuditEvent:
    """Append one audit event to the session's transaction (it commits or rolls back with it)."""
    if (request := _request.get()) is not None:
        details = {**details, "request": request}
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
            rows = list(session.scalars(stmt.order_by(AuditEvent.id).limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, str(rows[-1].id) if more and rows else None)
