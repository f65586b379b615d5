"""Garbage collection: remove the bytes of blobs that no live reference holds.

Never stop-the-world, never a read-only window: each blob is removed by the
two-phase, row-locked collect of collect.py, so an upload or attach racing with
gc is settled in the database (the loser is told the blob is missing and
uploads it again). Objects that no location names (an upload that died
between placing its object or pack and committing) are removed once older
than a grace period. One gc at a time, under a lease.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select

from .. import layout
from ..cas import BlobStore
from ..collect import BlobCollector
from ..db import Database
from ..models import Blob, StorageLocation, utcnow
from ..storage import Storage
from .lease import lease

ORPHAN_GRACE = timedelta(hours=1)


@dataclass
class GcReport:
    blobs_removed: int = 0
    bytes_freed: int = 0
    orphans_removed: int = 0
    orphan_bytes_freed: int = 0
    skipped: int = 0  # candidates that a writer took back meanwhile
    removed: list[str] = field(default_factory=list)


class GcService:
    def __init__(self, db: Database, storage: Storage, blobs: BlobStore) -> None:
        self.db = db
        self.storage = storage
        self.blobs = blobs
        self.collector = BlobCollector(blobs)

    def run(self, *, actor: str, orphan_grace: timedelta = ORPHAN_GRACE, limit: int | None = None) -> GcReport:
        report = GcReport()
        with lease(self.db, "gc") as held:
            with self.db.read() as session:
                stmt = select(Blob.sha256).where(Blob.refcount == 0).order_by(Blob.sha256)
                candidates = list(session.scalars(stmt.limit(limit) if limit else stmt))
            for i, sha in enumerate(candidates):
                freed = self.collector.collect(sha, actor)
                if freed is None:
                    report.skipped += 1
                else:
                    report.blobs_removed += 1
                    report.bytes_freed += freed
                    report.removed.append(sha)
                if i % 500 == 499:
                    held.renew()
            self._sweep(report, actor, utcnow() - orphan_grace)
        return report

    def _sweep(self, report: GcReport, actor: str, cutoff) -> None:
        """Remove objects older than ``cutoff`` that no location names."""
        with self.db.read() as session:
            named = set(session.scalars(select(StorageLocation.object_key)))
        for prefix in (layout.KeyKind.BLOB, layout.KeyKind.PACK):
            for info in list(self.storage.list(prefix)):
                if info.key in named or info.last_modified > cutoff:
                    continue
                freed = self.collector.remove_orphan(info.key, actor)
                if freed is not None:
                    report.orphans_removed += 1
                    report.orphan_bytes_freed += freed
