"""Audit records: one row appended inside the transaction that makes the change it describes.

On the floor below every layer that changes state (services, the blob
writer, gc's collector): each writes its record through ``record`` and the
record commits or rolls back with the change (invariant 5).
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from .models import AuditEvent, utcnow


def record(session: Session, actor: str, action: str, *, package_id: str | None = None,
           subject: str | None = None, **details: Any) -> AuditEvent:
    """Append one audit event to the session's transaction (it commits or rolls back with it)."""
    event = AuditEvent(at=utcnow(), actor=actor, action=action, package_id=package_id,
                       subject=subject, details=details or None)
    session.add(event)
    return event
