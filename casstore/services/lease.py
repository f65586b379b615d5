"""Leases: one background job of a kind at a time, across processes and hosts.

A lease is a row (name, holder, expires_at). Taking it succeeds when nobody
holds it or the holder's time ran out (a crashed holder never renews), so
gc, verify and the staging sweep can be started from cron on several hosts.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import delete, select
from ulid import ULID

from ..db import Database
from ..errors import LeaseHeld
from ..models import Lease, utcnow
from ..times import iso


class LeaseHandle:
    def __init__(self, db: Database, name: str, holder: str, ttl: timedelta) -> None:
        self.db, self.name, self.holder, self.ttl = db, name, holder, ttl

    def renew(self) -> None:
        """Push the expiry out again; LeaseHeld if another holder took over meanwhile."""
        with self.db.write() as session:
            row = session.scalars(self.db.for_update(select(Lease).where(Lease.name == self.name))).first()
            if row is None or row.holder != self.holder:
                raise LeaseHeld(f"lease {self.name} was lost to {row.holder if row else 'nobody'}")
            row.expires_at = utcnow() + self.ttl
            session.add(row)


@contextmanager
def lease(db: Database, name: str, ttl: timedelta = timedelta(minutes=5)) -> Iterator[LeaseHandle]:
    holder = f"{socket.gethostname()}:{os.getpid()}:{ULID()}"
    now = utcnow()
    with db.write() as session:
        row = session.scalars(db.for_update(select(Lease).where(Lease.name == name))).first()
        if row is not None and row.expires_at > now:
            raise LeaseHeld(f"{name} is already running ({row.holder}, lease until {iso(row.expires_at)})",
                            holder=row.holder)
        if row is None:
            session.add(Lease(name=name, holder=holder, expires_at=now + ttl))
        else:
            row.holder, row.expires_at = holder, now + ttl
            session.add(row)
    try:
        yield LeaseHandle(db, name, holder, ttl)
    finally:
        with db.write() as session:
            session.execute(delete(Lease).where(Lease.name == name, Lease.holder == holder))
