"""Retention: classes, expiry, extension, holds - and the events every change leaves.

Rules:
* a class's duration lives in the database (``retention_class.days``; None = never);
* ``expires_at`` is set at creation and recomputed at finalization, never earlier
  than it was;
* it can be extended (to a later date, by a number of days, or by moving to a
  class that keeps longer) and never shortened: RetentionConflict (409), and a
  database trigger refuses it even to SQL typed by hand;
* holds are independent of dates: several per package, each with a reason,
  who placed it and when; released with a reason; a held package is never
  eligible for deletion;
* every change writes a retention event (before, after, reason, actor) and an
  audit event, in the transaction that makes it.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlmodel import Session
from ulid import ULID

from .. import auditlog as audit
from ..db import Database
from ..errors import Conflict, Gone, InvalidInput, NotFound, RetentionConflict
from ..models import Hold, Package, PackageStatus, Producer, RetentionClass, RetentionEvent, utcnow
from ..times import iso
from .lookup import load_package

CLASS_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


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


def is_shorter(new: datetime | None, old: datetime | None) -> bool:
    if old is None:
        return new is not None
    return new is not None and new < old


def active_holds(session: Session, package_id: str) -> list[Hold]:
    return list(session.scalars(select(Hold).where(Hold.package_id == package_id, Hold.released_at.is_(None))
                                .order_by(Hold.placed_at)))


def why_not_eligible(package: Package, holds: list[Hold], as_of: datetime) -> list[str]:
    """Every reason the package may not be deleted at ``as_of`` (empty: eligible)."""
    reasons = [f"held by {h.id} ({h.reason}) placed by {h.placed_by}" for h in holds]
    if package.status == PackageStatus.DELETED:
        reasons.append("already deleted")
    if package.expires_at is None:
        reasons.append(f"retention class {package.retention_class} never expires")
    elif package.expires_at > as_of:
        reasons.append(f"retained until {iso(package.expires_at)}")
    return reasons


def _snapshot(package: Package) -> dict:
    return {"retention_class": package.retention_class, "expires_at": iso(package.expires_at)}


class RetentionService:
    def __init__(self, db: Database) -> None:
        self.db = db

    # classes --------------------------------------------------------------------
    def classes(self) -> list[RetentionClass]:
        with self.db.read() as session:
            return list(session.scalars(select(RetentionClass).order_by(RetentionClass.days.is_(None),
                                                                         RetentionClass.days)))

    def set_class_days(self, name: str, days: int | None, *, actor: str, reason: str = "") -> RetentionClass:
        """Change a class's duration for packages created or finalized from now on (audited)."""
        if days is not None and days < 0:
            raise InvalidInput("days must be 0 or more (or none: never expires)")
        with self.db.write() as session:
            cls = session.scalars(self.db.for_update(select(RetentionClass).where(RetentionClass.name == name))).first()
            if cls is None:
                raise NotFound(f"no retention class {name!r}", retention_class=name)
            before = cls.days
            cls.days, cls.updated_at = days, utcnow()
            session.add(cls)
            audit.record(session, actor, "retention_class.updated", subject=name, before={"days": before},
                         after={"days": days}, reason=reason)
            session.flush()
            return cls

    def create_class(self, name: str, days: int | None, *, actor: str, reason: str = "",
                     description: str = "") -> RetentionClass:
        """Add a retention class (audited as retention_class.created); Conflict if the name is taken."""
        if not CLASS_NAME.fullmatch(name or ""):
            raise InvalidInput("a retention class name is 1-64 of a-z, 0-9, '.', '_', '-', "
                               "starting with a letter or digit", retention_class=name)
        if days is not None and days < 0:
            raise InvalidInput("days must be 0 or more (or none: never expires)")
        with self.db.write() as session:
            if session.get(RetentionClass, name) is not None:
                raise Conflict(f"retention class {name!r} already exists; change it with "
                               f"`retention-classes set`", retention_class=name)
            cls = RetentionClass(name=name, days=days, description=description, updated_at=utcnow())
            session.add(cls)
            audit.record(session, actor, "retention_class.created", subject=name, after={"days": days},
                         reason=reason)
            session.flush()
            return cls

    # one package ----------------------------------------------------------------
    def status(self, package_id: str, as_of: datetime | None = None) -> dict:
        as_of = as_of or utcnow()
        with self.db.read() as session:
            package = load_package(session, package_id)
            holds = active_holds(session, package_id)
        reasons = why_not_eligible(package, holds, as_of)
        return {"package_id": package.id, "retention_class": package.retention_class,
                "expires_at": package.expires_at, "holds": holds, "eligible": not reasons,
                "not_eligible_because": reasons}

    def extend(self, package_id: str, *, actor: str, reason: str, expires_at: datetime | None = None,
               days: int | None = None, retention_class: str | None = None) -> dict:
        """Move expiry later; RetentionConflict if the request would shorten it."""
        if sum(x is not None for x in (expires_at, days, retention_class)) != 1:
            raise InvalidInput("give exactly one of expires_at, days or retention_class")
        with self.db.write() as session:
            package = load_package(session, package_id, lock=True, db=self.db)
            if package.status == PackageStatus.DELETED:
                raise Gone(f"package {package_id} was deleted", package_id=package_id)
            before = _snapshot(package)
            new_class = package.retention_class
            if expires_at is not None:
                target = expires_at
            elif days is not None:
                if package.expires_at is None:
                    raise RetentionConflict(f"package {package_id} never expires; there is nothing to extend")
                target = package.expires_at + timedelta(days=days)
            else:
                cls = session.get(RetentionClass, retention_class)
                if cls is None:
                    raise InvalidInput(f"unknown retention class: {retention_class!r}")
                new_class = cls.name
                target = expiry(cls, package.finalized_at or package.created_at)
            if is_shorter(target, package.expires_at):
                raise RetentionConflict(
                    f"that would shorten retention of {package_id} from {iso(package.expires_at) or 'never'} "
                    f"to {iso(target)}; retention can only be extended",
                    expires_at=iso(package.expires_at), requested=iso(target))
            package.expires_at, package.retention_class = target, new_class
            session.add(package)
            after = _snapshot(package)
            self._events(session, package_id, actor, "extended", before, after, reason)
            session.flush()
        return self.status(package_id)

    def place_hold(self, package_id: str, *, actor: str, reason: str) -> Hold:
        with self.db.write() as session:
            package = load_package(session, package_id, lock=True, db=self.db)
            if package.status == PackageStatus.DELETED:
                raise Gone(f"package {package_id} was deleted", package_id=package_id)
            hold = Hold(id=f"hold_{ULID()}", package_id=package_id, reason=reason, placed_by=actor,
                        placed_at=utcnow())
            session.add(hold)
            self._events(session, package_id, actor, "hold_placed", None, {"hold_id": hold.id}, reason)
            session.flush()
            return hold

    def holds(self, package_id: str, include_released: bool = True) -> list[Hold]:
        with self.db.read() as session:
            load_package(session, package_id)
            stmt = select(Hold).where(Hold.package_id == package_id)
            if not include_released:
                stmt = stmt.where(Hold.released_at.is_(None))
            return list(session.scalars(stmt.order_by(Hold.placed_at)))

    def release_hold(self, package_id: str, hold_id: str, *, actor: str, reason: str) -> Hold:
        if not reason or not reason.strip():
            raise InvalidInput("releasing a hold needs a reason")
        with self.db.write() as session:
            load_package(session, package_id, lock=True, db=self.db)
            hold = session.scalars(self.db.for_update(select(Hold).where(Hold.id == hold_id,
                                                                         Hold.package_id == package_id))).first()
            if hold is None:
                raise NotFound(f"no hold {hold_id!r} on package {package_id}", hold_id=hold_id)
            if hold.released_at is not None:
                raise RetentionConflict(f"hold {hold_id} was already released at {iso(hold.released_at)}")
            hold.released_at, hold.released_by, hold.release_reason = utcnow(), actor, reason
            session.add(hold)
            self._events(session, package_id, actor, "hold_released", {"hold_id": hold_id}, None, reason)
            session.flush()
            return hold

    def events(self, package_id: str) -> list[dict]:
        """The package's retention and audit events, oldest first."""
        from ..models import AuditEvent

        with self.db.read() as session:
            load_package(session, package_id)
            retention = [{"kind": "retention", "at": e.at, "actor": e.actor, "action": e.kind, "before": e.before,
                          "after": e.after, "reason": e.reason, "id": e.id}
                         for e in session.scalars(select(RetentionEvent)
                                                  .where(RetentionEvent.package_id == package_id))]
            audits = [{"kind": "audit", "at": e.at, "actor": e.actor, "action": e.action, "subject": e.subject,
                       "details": e.details, "id": e.id}
                      for e in session.scalars(select(AuditEvent).where(AuditEvent.package_id == package_id))]
        return sorted(retention + audits, key=lambda e: (e["at"], e["kind"] != "retention", e["id"]))

    @staticmethod
    def _events(session: Session, package_id: str, actor: str, kind: str, before, after, reason: str) -> None:
        session.add(RetentionEvent(package_id=package_id, at=utcnow(), actor=actor, kind=kind, before=before,
                                   after=after, reason=reason))
        audit.record(session, actor, f"retention.{kind}", package_id=package_id, before=before, after=after,
                     reason=reason)
