"""Verify: prove the invariants, report every discrepancy, repair nothing silently.

Checks (each failure is one Finding):

* blob-missing / blob-size: a blob row whose object (its own, or its pack) is absent or of
  another size, or that has no location (the row is marked 'missing', so existence answers
  stop claiming it and the next upload repairs it);
* refcount: a blob's reference count differs from its live file entries + manifests;
* manifest: a finalized package whose manifest blob is absent or hashes to something else;
* orphan-object: an object under blobs/ or packs/ that no location names (reported; gc
  removes it after its grace period); a pack younger than cas.PACK_SWEEP_AGE is listed as
  pack-active instead: an upload may be about to record it; a pack that repacking emptied,
  as pack-retired-active (gc deletes it after its grace: reads in flight);
* staging-object: a staging object older than an hour: an upload that died
  (``repair_staging`` removes them); younger ones are listed as staging-active,
  which is not a discrepancy;
* incomplete-upload: an S3 multipart upload (or a local temporary file) that
  never completed, older than an hour (``repair_staging`` aborts it);
  younger ones are upload-active;
* corrupt (deep only): a blob's bytes no longer hash to its SHA-256;
* pack-index (deep only): a pack's own index (packs.py) does not list a blob where the
  database says it is - the index is how a pack is read without the database;
* chunked files: recipe, chunk-missing, chunk-size, chunk-refcount, chunk-corrupt and
  chunk-pack-index (verify_chunks.py); a chunked file's SHA-256 is re-hashed through its
  recipe in the deep scrub like any blob's.

The deep scrub re-hashes blobs oldest-verified first and records each blob's
``verified_at``; with a time budget it stops in time, and the next run goes on
where this one stopped (restic's read-data-subset, git-annex's incremental fsck).
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select, update

from .. import auditlog as audit
from .. import layout, packs
from ..cas import PACK_SWEEP_AGE, BlobStore, Location
from ..db import Database
from ..errors import ObjectMissing, StorageError
from ..models import Blob, BlobState, FileEntry, Package, PackageStatus, RetiredPack, StorageLocation, utcnow
from ..storage import Storage
from .verify_chunks import ChunkVerifier

STAGING_GRACE = timedelta(hours=1)


@dataclass(frozen=True)
class Finding:
    kind: str
    subject: str
    detail: str

    def line(self) -> str:
        return f"{self.kind}\t{self.subject}\t{self.detail}"


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    blobs_checked: int = 0
    blobs_rehashed: int = 0
    bytes_rehashed: int = 0
    packages_checked: int = 0
    complete: bool = True  # False when a deep scrub stopped at its time budget

    @property
    def ok(self) -> bool:
        """No discrepancy (an upload in progress, 'staging-active', is not one)."""
        return all(f.kind.endswith("-active") for f in self.findings)


@dataclass(frozen=True)
class BlobAt:
    """A blob row and its location (key None: no location recorded)."""

    sha256: str
    size: int
    state: str
    key: str | None
    offset: int | None
    length: int | None
    chunker: str | None = None


class VerifyService:
    def __init__(self, db: Database, storage: Storage, blobs: BlobStore) -> None:
        self.db = db
        self.storage = storage
        self.blobs = blobs
        self.chunks = ChunkVerifier(db, storage, blobs.chunks, Finding)

    def run(self, *, deep: bool = False, max_duration: float | None = None) -> Report:
        report = Report()
        rows = self._blob_rows()
        report.blobs_checked = len(rows)
        self._check_objects(rows, report)
        self.chunks.check(report)
        self._check_refcounts(report)
        self._check_manifests(report)
        self._check_unknown_objects(rows, report)
        if deep:
            self._check_pack_indexes(rows, report)
            deadline = None if max_duration is None else time.monotonic() + max_duration
            report.complete = self.chunks.scrub(report, deadline)
            self._scrub(report, deadline)
        return report

    def _check_pack_indexes(self, rows: dict[str, BlobAt], report: Report) -> None:
        located: dict[str, list[BlobAt]] = {}
        for row in rows.values():
            if row.key is not None and layout.is_pack_key(row.key) and row.state != BlobState.DELETING:
                located.setdefault(row.key, []).append(row)
        for key, blobs in located.items():
            try:
                index = {(b.sha256, b.offset, b.length) for b in packs.read_index(self.storage, key)}
            except ObjectMissing:
                continue  # already reported blob by blob as blob-missing
            except (StorageError, ValueError) as exc:
                report.findings.append(Finding("pack-index", key, f"unreadable index: {exc}"[:300]))
                continue
            wrong = [b.sha256 for b in blobs if (b.sha256, b.offset, b.length) not in index]
            if wrong:
                report.findings.append(Finding("pack-index", key, f"{len(wrong)} blob(s) not in its index, "
                                                                  f"first sha256:{wrong[0]}"))

    def _blob_rows(self) -> dict[str, BlobAt]:
        with self.db.read() as session:
            return {row.sha256: BlobAt(*row) for row in session.execute(
                select(Blob.sha256, Blob.size, Blob.state, StorageLocation.object_key,
                       StorageLocation.offset, StorageLocation.length, Blob.chunker)
                .outerjoin(StorageLocation, StorageLocation.blob_sha256 == Blob.sha256))}

    def _check_objects(self, rows: dict[str, BlobAt], report: Report) -> None:
        """One HEAD per object: a pack of a thousand blobs is looked at once."""
        seen: dict[str, int | None] = {}
        for sha, row in rows.items():
            if row.state == BlobState.DELETING or (row.chunker is not None and row.key is None):
                continue  # a chunked file: its recipe and chunks are checked by ChunkVerifier
            if row.key is None:
                report.findings.append(Finding("blob-missing", sha, "row exists, no location recorded"))
                self._mark_missing(sha)
                continue
            if row.key not in seen:
                info = self.storage.head(row.key)
                seen[row.key] = None if info is None else info.size
            have = seen[row.key]
            packed = layout.is_pack_key(row.key)
            if have is None:
                report.findings.append(Finding("blob-missing", sha, f"row exists, {row.key} is not on the backend"))
                self._mark_missing(sha)
            elif row.length != row.size or (have < row.offset + row.size if packed else have != row.size):
                report.findings.append(Finding("blob-size", sha, f"row says {row.size} bytes at {row.offset} "
                                                                 f"of {row.key}, which has {have}"))
                self._mark_missing(sha)

    def _mark_missing(self, sha: str) -> None:
        """Take a lost blob out of the existence answers, so the next upload of its bytes repairs it.

        Until then POST /v1/blobs/missing names it and attach refuses it: a
        producer re-sends the bytes instead of being told they already exist.
        """
        with self.db.write() as session:
            rows = self.blobs.lock_rows(session, [sha])
            if sha in rows and rows[sha].state == BlobState.PRESENT:
                session.execute(update(Blob).where(Blob.sha256 == sha).values(state=BlobState.MISSING))
                audit.record(session, "verify", "blob.missing", subject=f"sha256:{sha}")

    def _check_refcounts(self, report: Report) -> None:
        with self.db.read() as session:
            expected: Counter[str] = Counter(dict(session.execute(
                select(FileEntry.blob_sha256, func.count())
                .join(Package, Package.id == FileEntry.package_id)
                .where(Package.status != PackageStatus.DELETED)
                .group_by(FileEntry.blob_sha256)).all()))
            for digest, n in session.execute(select(Package.manifest_digest, func.count())
                                             .where(Package.manifest_digest.is_not(None))
                                             .group_by(Package.manifest_digest)):
                expected[digest.removeprefix("sha256:")] += n
            actual = dict(session.execute(select(Blob.sha256, Blob.refcount)).all())
        for sha in sorted(set(expected) | set(actual)):
            if sha not in actual:
                report.findings.append(Finding("refcount", sha, f"{expected[sha]} live references, no blob row"))
            elif actual[sha] != expected.get(sha, 0):
                report.findings.append(Finding(
                    "refcount", sha, f"refcount {actual[sha]}, live references {expected.get(sha, 0)}"))

    def _check_manifests(self, report: Report) -> None:
        with self.db.read() as session:
            packages = session.execute(select(Package.id, Package.manifest_digest)
                                       .where(Package.status == PackageStatus.FINALIZED)).all()
        for package_id, digest in packages:
            report.packages_checked += 1
            if digest is None:
                report.findings.append(Finding("manifest", package_id, "finalized without a manifest digest"))
                continue
            hex_ = digest.removeprefix("sha256:")
            try:
                actual = _sha256_of(self.blobs.open(hex_))
            except StorageError as exc:
                report.findings.append(Finding("manifest", package_id, f"manifest {digest} unreadable: {exc.detail}"))
                continue
            if actual != hex_:
                report.findings.append(Finding("manifest", package_id, f"manifest {digest} hashes to {actual}"))

    def _check_unknown_objects(self, rows: dict[str, BlobAt], report: Report) -> None:
        named = {row.key for row in rows.values()} | self.chunks.object_keys()
        with self.db.read() as session:
            retired = set(session.scalars(select(RetiredPack.object_key)))
        recent = utcnow() - PACK_SWEEP_AGE
        for prefix in (layout.KeyKind.BLOB, layout.KeyKind.PACK, layout.KeyKind.CHUNK_PACK):
            for info in self.storage.list(prefix):
                if info.key not in named:
                    made = layout.any_pack_key_time(info.key)
                    kind = "pack-active" if made is not None and made > recent else "orphan-object"
                    if info.key in retired:  # emptied by repacking: gc deletes it after its grace
                        kind = "pack-retired-active"
                    report.findings.append(Finding(kind, info.key, f"{info.size} bytes, no location"))
        stale_before = utcnow() - STAGING_GRACE
        for info in self.storage.list(layout.KeyKind.STAGING):
            made = layout.staging_key_time(info.key) or info.last_modified
            kind = "staging-object" if made < stale_before else "staging-active"
            report.findings.append(Finding(kind, info.key, f"{info.size} bytes, started {made.isoformat()}"))
        for stray in self.storage.stray_writes():
            kind = "incomplete-upload" if stray.started < stale_before else "upload-active"
            report.findings.append(Finding(kind, stray.key, f"never completed ({stray.handle}), "
                                                            f"started {stray.started.isoformat()}"))

    def _scrub(self, report: Report, deadline: float | None) -> None:
        with self.db.read() as session:
            order = session.execute(select(Blob.sha256, Blob.size, StorageLocation.object_key,
                                           StorageLocation.offset, StorageLocation.length, Blob.chunker)
                                    .outerjoin(StorageLocation, StorageLocation.blob_sha256 == Blob.sha256)
                                    .where(Blob.state == BlobState.PRESENT)
                                    .where((StorageLocation.object_key.is_not(None)) | (Blob.chunker.is_not(None)))
                                    .order_by(Blob.verified_at.is_not(None), Blob.verified_at, Blob.sha256)).all()
        for n, (sha, size, key, offset, length, chunker) in enumerate(order):
            if deadline is not None and n > 0 and time.monotonic() >= deadline:  # at least one per run
                report.complete = False
                return
            where = Location(key, offset, length) if key is not None else Location.of_recipe(sha, size)
            try:
                actual = _sha256_of(self.blobs.read(where))
            except StorageError:
                continue  # already reported as blob-missing
            report.blobs_rehashed += 1
            report.bytes_rehashed += size
            if actual != sha:
                report.findings.append(Finding("corrupt", sha, f"bytes hash to {actual}"))
                self._mark_missing(sha)
                continue
            with self.db.write() as session:
                session.execute(update(Blob).where(Blob.sha256 == sha).values(verified_at=utcnow()))

    def repair_staging(self, older_than: timedelta) -> list[str]:
        """Remove what uploads that died left: staging objects, incomplete multipart uploads and
        temporary files older than ``older_than``; returns what was removed."""
        cutoff: datetime = utcnow() - older_than
        removed = []
        for info in list(self.storage.list(layout.KeyKind.STAGING)):
            made = layout.staging_key_time(info.key) or info.last_modified
            if made < cutoff:
                self.storage.delete(info.key)
                removed.append(info.key)
        for stray in self.storage.stray_writes():
            if stray.started < cutoff:
                self.storage.abort_stray(stray)
                removed.append(f"{stray.key} ({stray.handle})")
        return removed


def _sha256_of(chunks) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()
