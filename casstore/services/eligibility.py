"""Deletion eligibility, reported and never acted on by itself; and the explicit deletion.

A package is eligible at a time T when it is not deleted, its expiry is at
or before T, and it holds no active hold. For each eligible package the
report gives ``reclaimable_bytes`` - the bytes of its blobs whose every live
reference is in eligible packages (for a chunked file: only its chunks that no
other file holds, the bytes its deletion really frees) - and ``shared_bytes`` - the bytes of its
blobs that a package which is not eligible still holds. Totals count every
blob once. Manifests are kept with tombstones, so they are never counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, exists, func, select
from sqlmodel import Session

from .. import auditlog as audit
from ..cas import BlobStore
from ..db import Database
from ..errors import Gone, InvalidInput, RetentionConflict
from ..models import Blob, BlobChunk, Chunk, FileEntry, Hold, Package, PackageStatus, RetentionEvent, utcnow
from ..times import iso
from .lookup import load_package
from .retention import active_holds, why_not_eligible


@dataclass
class EligiblePackage:
    package_id: str
    run_id: str | None
    producer: str
    retention_class: str
    expires_at: datetime
    total_bytes: int
    reclaimable_bytes: int = 0
    shared_bytes: int = 0


@dataclass
class EligibilityReport:
    as_of: datetime
    packages: list[EligiblePackage] = field(default_factory=list)
    reclaimable_bytes: int = 0
    shared_bytes: int = 0


def eligible(as_of: datetime):
    """Packages eligible for deletion at ``as_of`` (an index range on expires_at, minus held ones)."""
    held = exists(select(Hold.id).where(Hold.package_id == Package.id, Hold.released_at.is_(None)))
    return select(Package).where(Package.status != PackageStatus.DELETED, Package.expires_at.is_not(None),
                                 Package.expires_at <= as_of, ~held)


class EligibilityService:
    def __init__(self, db: Database, blobs: BlobStore) -> None:
        self.db = db
        self.blobs = blobs

    def report(self, as_of: datetime | None = None) -> EligibilityReport:
        """Eligible packages with what deleting them would free.

        A blob is reclaimable when all its live references are in eligible
        packages: its reference count (maintained under row locks, proved by
        verify) equals the number of eligible entries pointing at it. So the
        work is proportional to the eligible packages' entries, never to the
        whole registry.
        """
        as_of = as_of or utcnow()
        report = EligibilityReport(as_of)
        eligible_refs: Counter[str] = Counter()
        size, refcount, refs, chunked = {}, {}, set(), set()
        with self.db.read() as session:
            packages = list(session.scalars(eligible(as_of).order_by(Package.expires_at, Package.id)))
            # Explicit id lists (not a subquery): the planner then walks the (package_id, path)
            # index for each package instead of scanning every entry in the registry.
            ids = [p.id for p in packages]
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                for sha, n, count, chunker, refs_here in session.execute(
                        select(FileEntry.blob_sha256, Blob.size, Blob.refcount, Blob.chunker, func.count())
                        .join(Blob, Blob.sha256 == FileEntry.blob_sha256)
                        .where(FileEntry.package_id.in_(chunk))
                        .group_by(FileEntry.blob_sha256, Blob.size, Blob.refcount, Blob.chunker)):
                    size[sha], refcount[sha] = n, count
                    eligible_refs[sha] += refs_here
                    if chunker is not None:
                        chunked.add(sha)
                refs.update(session.execute(select(FileEntry.package_id, FileEntry.blob_sha256)
                                            .where(FileEntry.package_id.in_(chunk)).distinct()).all())
            blocked = {sha for sha in size if refcount[sha] > eligible_refs[sha]}
            freed, chunk_bytes = self._chunk_bytes(session, sorted(chunked - blocked))
        if not packages:
            return report
        reclaim, shared = Counter(), Counter()
        for package_id, sha in refs:
            if sha in blocked:
                shared[package_id] += size[sha]
            else:
                reclaim[package_id] += freed.get(sha, 0) if sha in chunked else size[sha]
        for p in packages:
            report.packages.append(EligiblePackage(p.id, p.run_id, p.producer, p.retention_class, p.expires_at,
                                                   p.total_bytes, reclaim[p.id], shared[p.id]))
        report.reclaimable_bytes = chunk_bytes + sum(n for sha, n in size.items()
                                                     if sha not in blocked and sha not in chunked)
        report.shared_bytes = sum(size[sha] for sha in blocked)
        return report

    @staticmethod
    def _chunk_bytes(session: Session, blobs: list[str]) -> tuple[dict[str, int], int]:
        """For chunked files that deletion would free: the bytes of each one's chunks that no
        other file holds (a chunk is freed when every recipe row naming it is of these files),
        and those chunks' bytes counted once."""
        held_here: Counter[str] = Counter()
        recipe: dict[str, set[str]] = {}
        chunk_size, chunk_refs = {}, {}
        for i in range(0, len(blobs), 500):
            for sha, cid, n, csize, crefs in session.execute(
                    select(BlobChunk.blob_sha256, BlobChunk.chunk_id, func.count(), Chunk.size, Chunk.refcount)
                    .join(Chunk, Chunk.id == BlobChunk.chunk_id)
                    .where(BlobChunk.blob_sha256.in_(blobs[i:i + 500]))
                    .group_by(BlobChunk.blob_sha256, BlobChunk.chunk_id, Chunk.size, Chunk.refcount)):
                held_here[cid] += n
                recipe.setdefault(sha, set()).add(cid)
                chunk_size[cid], chunk_refs[cid] = csize, crefs
        gone = {cid for cid, n in held_here.items() if chunk_refs[cid] <= n}
        per_blob = {sha: sum(chunk_size[c] for c in cids if c in gone) for sha, cids in recipe.items()}
        return per_blob, sum(chunk_size[c] for c in gone)

    def delete(self, package_id: str, *, actor: str, reason: str) -> Package:
        """Delete an eligible package: it becomes a tombstone, its entries stop holding blobs.

        The package row (metadata, counts, manifest digest) and its events stay;
        its file entries go, and the manifest blob - still referenced by the
        tombstone - keeps the exact record of every path and digest it held.
        The bytes stay until gc removes blobs that nothing live references.
        """
        if not reason or not reason.strip():
            raise InvalidInput("deleting a package needs a reason")
        now = utcnow()
        with self.db.write() as session:
            package = load_package(session, package_id, lock=True, db=self.db)
            if package.status == PackageStatus.DELETED:
                raise Gone(f"package {package_id} was already deleted at {iso(package.deleted_at)}")
            reasons = why_not_eligible(package, active_holds(session, package_id), now)
            if reasons:
                raise RetentionConflict(f"package {package_id} is not eligible for deletion: " + "; ".join(reasons),
                                        not_eligible_because=reasons)
            counts = self._entry_counts(session, package_id)
            self.blobs.lock_rows(session, sorted(counts))
            self.blobs.add_refs(session, {sha: -n for sha, n in counts.items()})
            # The manifest (kept, and still referenced) is the record of what the package held.
            session.execute(delete(FileEntry).where(FileEntry.package_id == package_id))
            before = {"status": package.status}
            package.status, package.deleted_at = PackageStatus.DELETED, now
            session.add(package)
            session.add(RetentionEvent(package_id=package_id, at=now, actor=actor, kind="deleted", before=before,
                                       after={"status": PackageStatus.DELETED.value}, reason=reason))
            audit.record(session, actor, "package.deleted", package_id=package_id, reason=reason,
                         released_references=sum(counts.values()), expires_at=iso(package.expires_at))
            session.flush()
            return package

    @staticmethod
    def _entry_counts(session: Session, package_id: str) -> dict[str, int]:
        return dict(session.execute(select(FileEntry.blob_sha256, func.count())
                                    .where(FileEntry.package_id == package_id)
                                    .group_by(FileEntry.blob_sha256)).all())

