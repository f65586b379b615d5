"""Garbage collection: remove the bytes of blobs that no live reference holds.

Never stop-the-world, never a read-only window: each blob is removed by the
two-phase, row-locked collect of collect.py, so an upload or attach racing with
gc is settled in the database (the loser is told the blob is missing and
uploads it again). Objects that no location names (an upload that died
between placing its object or pack and committing) are removed once older
than a grace period. One gc at a time, under a lease.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select

from .. import layout
from ..cas import BlobStore
from ..collect import BlobCollector, ChunkCollector
from ..db import Database
from ..errors import StorageError
from ..models import Blob, Chunk, StorageLocation, utcnow
from ..packs import PACK_TRUST
from ..repack import REPACK_BELOW, REPACK_GRACE, Repacker
from ..storage import Storage
from .lease import lease

log = logging.getLogger(__name__)

ORPHAN_GRACE = timedelta(hours=1)


@dataclass
class GcReport:
    blobs_removed: int = 0
    bytes_freed: int = 0
    orphans_removed: int = 0
    orphan_bytes_freed: int = 0
    skipped: int = 0  # candidates that a writer took back meanwhile
    chunks_removed: int = 0
    chunk_bytes_freed: int = 0  # bytes of chunk packs deleted with their last chunk
    packs_repacked: int = 0
    repack_bytes_copied: int = 0
    retired_removed: int = 0  # packs emptied by an earlier repack, deleted after their grace
    retired_bytes_freed: int = 0
    removed: list[str] = field(default_factory=list)


class GcService:
    def __init__(self, db: Database, storage: Storage, blobs: BlobStore) -> None:
        self.db = db
        self.storage = storage
        self.blobs = blobs
        self.collector = BlobCollector(blobs)
        self.chunk_collector = ChunkCollector(blobs)
        self.repacker = Repacker(blobs)

    def run(self, *, actor: str, orphan_grace: timedelta = ORPHAN_GRACE, limit: int | None = None,
            repack_below: float = REPACK_BELOW, repack_grace: timedelta = REPACK_GRACE,
            repack_min_age: timedelta = PACK_TRUST) -> GcReport:
        """Collect unreferenced blobs and chunks, repack packs under ``repack_below`` live, delete
        packs retired longer than ``repack_grace`` ago, sweep orphans older than ``orphan_grace``."""
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
            self._collect_chunks(report, actor, held, limit)
            self._repack(report, actor, held, repack_below, repack_min_age)
            report.retired_removed, report.retired_bytes_freed = self.repacker.remove_retired(repack_grace, actor)
            self._sweep(report, actor, utcnow() - orphan_grace)
        return report

    def _collect_chunks(self, report: GcReport, actor: str, held, limit: int | None) -> None:
        """Chunks no recipe names (the blobs just collected released theirs)."""
        for i, cid in enumerate(self.chunk_collector.candidates(limit)):
            freed = self.chunk_collector.collect(cid, actor)
            if freed is None:
                report.skipped += 1
            else:
                report.chunks_removed += 1
                report.chunk_bytes_freed += freed
            if i % 500 == 499:
                held.renew()

    def _repack(self, report: GcReport, actor: str, held, below: float, min_age: timedelta) -> None:
        for key, _live, _size in self.repacker.candidates(below, min_age):
            try:
                moved = self.repacker.repack(key, actor)
            except StorageError as exc:  # the pack went meanwhile (its last entries collected): nothing to do
                log.warning("could not repack %s: %s", key, exc.detail)
                report.skipped += 1
                continue
            report.packs_repacked += 1
            report.repack_bytes_copied += moved[1] if moved else 0
            held.renew()

    def _sweep(self, report: GcReport, actor: str, cutoff) -> None:
        """Remove objects older than ``cutoff`` that no location or chunk row names."""
        with self.db.read() as session:
            named = set(session.scalars(select(StorageLocation.object_key)))
            named |= set(session.scalars(select(Chunk.object_key).distinct()))
        for prefix in (layout.KeyKind.BLOB, layout.KeyKind.PACK, layout.KeyKind.CHUNK_PACK):
            for info in list(self.storage.list(prefix)):
                if info.key in named or info.last_modified > cutoff:
                    continue
                freed = self.collector.remove_orphan(info.key, actor)
                if freed is not None:
                    report.orphans_removed += 1
                    report.orphan_bytes_freed += freed
