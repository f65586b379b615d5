"""Verify's checks of chunked files: recipes, chunk rows, chunk packs, and (deep) every chunk's id.

Findings (each one a verify.Finding):

* recipe: a chunked file whose recipe does not cover its bytes exactly (a gap, an
  overlap, or another total than the file's size);
* chunk-missing / chunk-size: a chunk row whose pack is absent or too short (the chunk,
  and every file holding it, is marked 'missing': the next upload that carries the chunk
  repairs it, and the files' existence answers make producers send them again);
* chunk-refcount: a chunk's reference count differs from the recipe rows naming it;
* chunk-corrupt (deep): a chunk's bytes no longer give its id (marked as above);
* chunk-pack-index (deep): a chunk pack's own index does not list a chunk where its row says.
"""

from __future__ import annotations

import time
from collections import defaultdict

from sqlalchemy import func, select, update

from .. import auditlog as audit
from .. import packs
from ..chunking import chunk_id
from ..chunks import ChunkStore
from ..db import Database
from ..errors import ObjectMissing, StorageError
from ..models import Blob, BlobChunk, BlobState, Chunk, utcnow
from ..storage import Storage


class ChunkVerifier:
    def __init__(self, db: Database, storage: Storage, chunks: ChunkStore, finding) -> None:
        self.db, self.storage, self.chunks, self.finding = db, storage, chunks, finding

    def object_keys(self) -> set[str]:
        with self.db.read() as session:
            return set(session.scalars(select(Chunk.object_key).distinct()))

    def check(self, report) -> None:
        self._check_recipes(report)
        self._check_chunk_rows(report)
        self._check_refcounts(report)

    def _check_recipes(self, report) -> None:
        with self.db.read() as session:
            sizes = dict(session.execute(select(Blob.sha256, Blob.size).where(
                Blob.chunker.is_not(None), Blob.state != BlobState.DELETING)).all())
            ends: dict[str, int] = {}
            broken: set[str] = set()
            for sha, offset, size in session.execute(
                    select(BlobChunk.blob_sha256, BlobChunk.offset, Chunk.size)
                    .join(Chunk, Chunk.id == BlobChunk.chunk_id)
                    .order_by(BlobChunk.blob_sha256, BlobChunk.offset)):
                if ends.get(sha, 0) != offset:
                    broken.add(sha)
                ends[sha] = offset + size
        for sha, size in sizes.items():
            if sha in broken or ends.get(sha, 0) != size:
                report.findings.append(self.finding("recipe", sha, f"recipe covers {ends.get(sha, 0)} of {size} "
                                                                   f"bytes{' with gaps' if sha in broken else ''}"))

    def _check_chunk_rows(self, report) -> None:
        with self.db.read() as session:
            rows = session.execute(select(Chunk.id, Chunk.size, Chunk.object_key, Chunk.offset)
                                   .where(Chunk.state == BlobState.PRESENT)).all()
        seen: dict[str, int | None] = {}
        for cid, size, key, offset in rows:
            if key not in seen:
                info = self.storage.head(key)
                seen[key] = None if info is None else info.size
            have = seen[key]
            if have is None:
                report.findings.append(self.finding("chunk-missing", cid, f"{key} is not on the backend"))
                self.mark_missing(cid)
            elif have < offset + size:
                report.findings.append(self.finding("chunk-size", cid, f"{size} bytes at {offset} of {key}, "
                                                                       f"which has {have}"))
                self.mark_missing(cid)

    def _check_refcounts(self, report) -> None:
        with self.db.read() as session:
            expected = dict(session.execute(select(BlobChunk.chunk_id, func.count())
                                            .group_by(BlobChunk.chunk_id)).all())
            actual = dict(session.execute(select(Chunk.id, Chunk.refcount)).all())
        for cid in sorted(set(expected) | set(actual)):
            if actual.get(cid) != expected.get(cid, 0):
                report.findings.append(self.finding("chunk-refcount", cid, f"refcount {actual.get(cid)}, "
                                                                           f"recipe rows {expected.get(cid, 0)}"))

    def mark_missing(self, cid: str) -> None:
        """Take a lost or damaged chunk out of the existence answers, and the files that hold it:
        the next upload of any of them sends the chunk again and repairs it."""
        with self.db.write() as session:
            holders = sorted(session.scalars(select(BlobChunk.blob_sha256).where(BlobChunk.chunk_id == cid)
                                             .distinct()))
            rows = self.chunks.lock_rows(session, [cid])  # blob rows are not locked: a plain update
            if cid in rows and rows[cid].state == BlobState.PRESENT:
                session.execute(update(Chunk).where(Chunk.id == cid).values(state=BlobState.MISSING))
                if holders:
                    session.execute(update(Blob).where(Blob.sha256.in_(holders), Blob.state == BlobState.PRESENT)
                                    .values(state=BlobState.MISSING))
                audit.record(session, "verify", "chunk.missing", subject=f"chunk:{cid}", files=holders[:100])

    def _verified(self, ids: list[str]) -> None:
        """Record when these chunks were last found sound (one transaction for a batch)."""
        if ids:
            with self.db.write() as session:
                session.execute(update(Chunk).where(Chunk.id.in_(ids)).values(verified_at=utcnow()))
            ids.clear()

    def scrub(self, report, deadline: float | None) -> bool:
        """Re-derive every present chunk's id from its bytes, oldest-verified first; False if
        the time budget ran out. Chunks of one pack are read in pack order."""
        with self.db.read() as session:
            order = session.execute(select(Chunk.id, Chunk.size, Chunk.object_key, Chunk.offset)
                                    .where(Chunk.state == BlobState.PRESENT)
                                    .order_by(Chunk.verified_at.is_not(None), Chunk.verified_at,
                                              Chunk.object_key, Chunk.offset)).all()
        by_pack, verified = defaultdict(list), []
        for n, (cid, size, key, offset) in enumerate(order):
            if deadline is not None and n > 0 and time.monotonic() >= deadline:
                self._verified(verified)
                return False
            by_pack[key].append((cid, offset, size))
            try:
                data = b"".join(self.storage.get(key, offset, offset + size))
            except StorageError:
                continue  # reported as chunk-missing
            if len(data) != size or chunk_id(data) != cid:
                report.findings.append(self.finding("chunk-corrupt", cid, f"{size} bytes at {offset} of {key} "
                                                                          "no longer give this id"))
                self.mark_missing(cid)
                continue
            verified.append(cid)
            if len(verified) >= 500:
                self._verified(verified)
        self._verified(verified)
        for key, listed in by_pack.items():
            try:
                index = {(b.sha256, b.offset, b.length) for b in packs.read_index(self.storage, key)}
            except ObjectMissing:
                continue
            except (StorageError, ValueError) as exc:
                report.findings.append(self.finding("chunk-pack-index", key, f"unreadable index: {exc}"[:300]))
                continue
            wrong = [cid for cid, offset, size in listed if (cid, offset, size) not in index]
            if wrong:
                report.findings.append(self.finding("chunk-pack-index", key, f"{len(wrong)} chunk(s) not in "
                                                                              f"its index, first {wrong[0]}"))
        return True
