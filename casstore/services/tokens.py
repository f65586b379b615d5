"""API bearer tokens: create, list, revoke, authenticate; and the audit of refused requests.

A token is ``as_`` + 256 random bits (``secrets.token_urlsafe(32)``). The
database keeps only the SHA-256 of the whole string and looks tokens up by
it: a fast hash is right for a secret of that entropy (there is no password
to guess), and nothing in the database can be replayed as a token.
Expiry and revocation are checked on every request (no cache: a revoked
token stops working on the next request, in every process).

Refused requests (401/403) are audited in a transaction of their own, but
a client without a token could otherwise write one row per request for as
long as it likes. ``DenialBudget`` keeps at most ``per_window`` such rows
per process per window; the ones over budget are counted, and the count is
written with the next row that is admitted (``suppressed_before``). The
metrics counter and the access log still see every refusal.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import select
from ulid import ULID

from .. import auditlog as audit
from ..db import Database
from ..errors import InvalidInput, NotFound, Unauthenticated
from ..models import Package, Role, Token, utcnow

PREFIX = "as_"
SECRET_CHARS = len(secrets.token_urlsafe(32))  # 43
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # no ':' or '@': never mistaken for cli:<user>@<host>
RESERVED_NAMES = {"anonymous", "verify"}  # actors the store itself records
PRODUCER_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,128}")


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who an authenticated request is: the token's id, name, role and producer names."""

    token_id: str
    name: str
    role: Role
    producers: frozenset[str]


class TokenService:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.denials = DenialBudget()

    # ------------------------------------------------------------------ lifecycle
    def create(self, *, name: str, role: str, actor: str, producers: list[str] | tuple[str, ...] = (),
               expires_at: datetime | None = None) -> tuple[Token, str]:
        """A new token and its secret (returned once; only its hash is stored). Audited."""
        role = _role(role)
        producers = sorted(set(producers))
        _check_name(name)
        if role is Role.PRODUCER and not producers:
            raise InvalidInput("a producer token needs at least one producer name (--producer)")
        if role is not Role.PRODUCER and producers:
            raise InvalidInput("only producer tokens carry producer names")
        for producer in producers:
            if not PRODUCER_NAME.fullmatch(producer):
                raise InvalidInput(f"not a producer name: {producer[:100]!r}")
        now = utcnow()
        if expires_at is not None and expires_at <= now:
            raise InvalidInput("a token's expiry must be in the future")
        secret = PREFIX + secrets.token_urlsafe(32)
        token = Token(id=f"tok_{ULID()}", name=name, role=role.value, producers=producers,
                      secret_sha256=hash_secret(secret), created_at=now, created_by=actor, expires_at=expires_at)
        with self.db.write() as session:
            session.add(token)
            audit.record(session, actor, "token.created", subject=token.id, name=name, role=role.value,
                         producers=producers, expires_at=expires_at.isoformat() if expires_at else None)
            session.flush()
        return token, secret

    def list(self) -> list[Token]:
        with self.db.read() as session:
            return list(session.scalars(select(Token).order_by(Token.id)))

    def revoke(self, token_id: str, *, actor: str) -> Token:
        """Revoke a token (from its next request on). Revoking it again changes nothing."""
        with self.db.write() as session:
            token = session.scalars(self.db.for_update(select(Token).where(Token.id == token_id))).first()
            if token is None:
                raise NotFound(f"no token {token_id!r}", token_id=token_id)
            if token.revoked_at is None:
                token.revoked_at, token.revoked_by = utcnow(), actor
                session.add(token)
                audit.record(session, actor, "token.revoked", subject=token.id, name=token.name, role=token.role)
                session.flush()
            return token

    # ------------------------------------------------------------------ requests
    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization: Bearer ...`` header, or Unauthenticated with a reason."""
        if not authorization:
            raise Unauthenticated("this request needs a bearer token (Authorization: Bearer <token>)",
                                  reason="missing")
        scheme, _, secret = authorization.strip().partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise Unauthenticated("the Authorization header must be 'Bearer <token>'", reason="malformed")
        if not secret.startswith(PREFIX) or len(secret) != len(PREFIX) + SECRET_CHARS:
            raise Unauthenticated("unknown token", reason="unknown")
        table = Token.__table__  # plain Core on every request: half the cost of an ORM session
        with self.db.engine.connect() as conn:
            token = conn.execute(select(table.c.id, table.c.name, table.c.role, table.c.producers,
                                        table.c.expires_at, table.c.revoked_at)
                                 .where(table.c.secret_sha256 == hash_secret(secret))).first()
        if token is None:
            raise Unauthenticated("unknown token", reason="unknown")
        if token.revoked_at is not None:
            raise Unauthenticated(f"token {token.id} was revoked", reason="revoked", token_id=token.id)
        if token.expires_at is not None and _aware(token.expires_at) <= utcnow():
            raise Unauthenticated(f"token {token.id} expired", reason="expired", token_id=token.id)
        return Principal(token.id, token.name, Role(token.role), frozenset(token.producers))

    def producer_of(self, package_id: str) -> str | None:
        """The producer of a package (None if there is no such package): may a producer token write to it?"""
        table = Package.__table__
        with self.db.engine.connect() as conn:
            return conn.execute(select(table.c.producer).where(table.c.id == package_id)).scalar()

    def record_denial(self, *, actor: str, status: int, reason: str, package_id: str | None = None,
                      **details: Any) -> bool:
        """Audit one refused request in its own transaction, within the budget; True if written."""
        admitted, suppressed = self.denials.admit()
        if not admitted:
            return False
        if suppressed:
            details["suppressed_before"] = suppressed
        with self.db.write() as session:
            audit.record(session, actor, "auth.denied", package_id=package_id, status=status,
                         outcome="unauthenticated" if status == 401 else "forbidden", reason=reason, **details)
        return True


class DenialBudget:
    """At most ``per_window`` audited refusals per process per window; the rest are counted."""

    def __init__(self, per_window: int = 30, window_s: float = 60.0) -> None:
        self.per_window, self.window_s = per_window, window_s
        self._lock = threading.Lock()
        self._start, self._used, self._suppressed = time.monotonic(), 0, 0

    def admit(self) -> tuple[bool, int]:
        """(write this one?, refusals suppressed since the last one written)."""
        with self._lock:
            now = time.monotonic()
            if now - self._start >= self.window_s:
                self._start, self._used = now, 0
            if self._used >= self.per_window:
                self._suppressed += 1
                return False, 0
            self._used += 1
            suppressed, self._suppressed = self._suppressed, 0
            return True, suppressed


def expiry_in_days(days: float | None) -> datetime | None:
    return None if days is None else utcnow() + timedelta(days=days)


def _aware(value: datetime) -> datetime:
    """Core reads of SQLite give naive UTC datetimes; PostgreSQL's timestamptz come aware."""
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise InvalidInput(f"role is one of {', '.join(r.value for r in Role)}, not {value!r}") from None


def _check_name(name: str) -> None:
    if not NAME.fullmatch(name) or name.lower() in RESERVED_NAMES:
        raise InvalidInput("a token name is 1-64 letters, digits, '.', '_' or '-', starting with a letter "
                           f"or digit, and not {' or '.join(sorted(RESERVED_NAMES))}")
