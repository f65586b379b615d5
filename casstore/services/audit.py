"""The fleet-wide audit feed (writing a record is casstore.auditlog, on the floor below)."""

from __future__ import annotations

from sqlalchemy import select

from ..models import AuditEvent
from ..paging import Page


class AuditService:
    """The fleet-wide audit feed: filtered, oldest first, paginated by event id."""

    def __init__(self, db) -> None:
        self.db = db

    def feed(self, *, package_id: str | None = None, actor: str | None = None, action: str | None = None,
             since=None, until=None, cursor: int | None = None, limit: int = 100):
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
        return Page.of(rows, limit, key=lambda event: event.id)
