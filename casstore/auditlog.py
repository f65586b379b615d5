"""Audit records: one row appended inside the transaction that makes the change it describes.

On the floor below every layer that changes state (services, the blob
writer, gc's collector): each writes its record through ``record`` and the
record commits or rolls back with the change (invariant 5).
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Any

from sqlmodel import Session

from .models import AuditEvent, utcnow

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
