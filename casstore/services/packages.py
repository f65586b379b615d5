"""Packages: create, read, list, finalize.

A package is one producer run. Its id (``pkg_`` + ULID) is opaque, URL-safe,
time-sortable and never reused. Lifecycle: created -> uploading -> finalized,
or failed; finalized -> deleted (a tombstone). Once finalized it never
changes again: the manifest digest names its content for good.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session
from ulid import ULID

from .. import auditlog as audit
from ..cas import BlobStore
from ..db import Database
from ..errors import Conflict, DuplicateRun, InvalidInput, NotFound
from ..models import RUN_HOLDING, Blob, FileEntry, Package, PackageStatus, utcnow
from ..paging import Page
from ..times import iso
from ..writer import BlobWriter
from . import manifest, retention
from .lookup import load_package, require_open

MAX_METADATA_BYTES = 1 << 20
MAX_FINALIZE_ROUNDS = 5
QUERY_FIELDS = ("producer", "run_id", "target_profile", "assessment_profile", "status", "retention_class")


def new_package_id() -> str:
    return f"pkg_{ULID()}"


class PackageService:
    def __init__(self, db: Database, blobs: BlobStore, default_retention_class: str) -> None:
        self.db = db
        self.blobs = blobs
        self.default_retention_class = default_retention_class

    def create(self, *, producer: str, actor: str, run_id: str | None = None,
               target_profile: str | None = None, assessment_profile: str | None = None,
               retention_class: str | None = None, metadata: dict[str, Any] | None = None) -> Package:
        """Register a new package; DuplicateRun if a live package has this producer + run_id."""
        metadata = metadata or {}
        if len(json.dumps(metadata)) > MAX_METADATA_BYTES:
            raise InvalidInput(f"metadata is larger than {MAX_METADATA_BYTES} bytes of JSON")
        try:
            with self.db.write() as session:
                self._refuse_duplicate(session, producer, run_id)
                cls = retention.resolve_class(session, producer, retention_class, self.default_retention_class)
                now = utcnow()
                package = Package(
                    id=new_package_id(), producer=producer, status=PackageStatus.CREATED, run_id=run_id,
                    target_profile=target_profile, assessment_profile=assessment_profile,
                    retention_class=cls.name, expires_at=retention.expiry(cls, now), created_at=now,
                    producer_metadata=metadata)
                session.add(package)
                audit.record(session, actor, "package.created", package_id=package.id,
                             run_id=run_id, producer=producer, retention_class=cls.name,
                             expires_at=iso(package.expires_at))
                session.flush()
                return package
        except IntegrityError:
            # Lost a race with a concurrent create of the same run: report the winner.
            with self.db.read() as session:
                self._refuse_duplicate(session, producer, run_id)
            raise

    def _refuse_duplicate(self, session: Session, producer: str, run_id: str | None) -> None:
        if run_id is None:
            return
        existing = session.scalars(select(Package).where(
            Package.producer == producer, Package.run_id == run_id,
            Package.status.in_(RUN_HOLDING))).first()
        if existing is not None:
            raise DuplicateRun(
                f"producer {producer!r} already registered run {run_id!r} as {existing.id} ({existing.status})",
                package_id=existing.id, package_status=existing.status)

    def get(self, package_id: str) -> Package:
        with self.db.read() as session:
            return load_package(session, package_id)

    def list(self, filters: dict[str, str], *, cursor: str | None = None, limit: int = 100) -> Page:
        """Packages matching every filter, newest first, ``limit`` at a time."""
        stmt = select(Package)
        for name in QUERY_FIELDS:
            if filters.get(name) is not None:
                stmt = stmt.where(getattr(Package, name) == filters[name])
        if cursor:
            stmt = stmt.where(Package.id < cursor)
        stmt = stmt.order_by(Package.id.desc()).limit(limit + 1)
        with self.db.read() as session:
            rows = list(session.scalars(stmt))
        return Page.of(rows, limit, key=lambda package: package.id)

    def finalize(self, package_id: str, *, actor: str) -> Package:
        """Write the manifest, store it as a blob, and make the package immutable.

        Idempotent, also under concurrency: whoever finds the package finalized
        (before or under its row lock) returns it as it is, with its manifest
        digest. The manifest is built and placed by a blob writer before the
        write transaction; under the package's lock the entries are read again,
        and if an upload changed them in between, the attempt is cancelled and
        made again.
        """
        for _ in range(MAX_FINALIZE_ROUNDS):
            with self.db.read() as session:
                package = load_package(session, package_id)
                if package.status == PackageStatus.FINALIZED:
                    return package
                require_open(package)
                now = utcnow()
                document = self._manifest(session, package, now)
            with BlobWriter(self.blobs, actor) as writer:
                staged = writer.add_bytes(document)
                with writer.commit() as tx:
                    package = load_package(tx.session, package_id, lock=True, db=self.db)
                    if package.status == PackageStatus.FINALIZED:
                        return package
                    require_open(package)
                    if self._manifest(tx.session, package, now) != document:
                        continue  # an upload landed meanwhile: build the manifest again
                    self._seal(tx, package, staged.sha256, now, actor)
                    return package
        raise Conflict(f"package {package_id} kept changing while being finalized; try again",
                       package_id=package_id)

    def _manifest(self, session: Session, package: Package, finalized_at) -> bytes:
        """The manifest bytes the package would have if finalized at ``finalized_at``."""
        return manifest.build(package, self._manifest_files(session, package.id), finalized_at)

    def _seal(self, tx, package: Package, manifest_sha256: str, now, actor: str) -> None:
        """Inside the writer's transaction: record the manifest blob and make the package immutable."""
        tx.claim(refs={manifest_sha256: 1})
        if not tx.rows[manifest_sha256].inserted:  # an existing row: count this package's reference
            self.blobs.add_refs(tx.session, {manifest_sha256: 1})
        cls = retention.resolve_class(tx.session, package.producer, package.retention_class,
                                      self.default_retention_class)
        package.finalized_at = now
        package.expires_at = retention.later(package.expires_at, retention.expiry(cls, now))
        package.status = PackageStatus.FINALIZED
        package.manifest_digest = f"sha256:{manifest_sha256}"
        tx.session.add(package)
        audit.record(tx.session, actor, "package.finalized", package_id=package.id,
                     subject=package.manifest_digest, file_count=package.file_count,
                     total_bytes=package.total_bytes, expires_at=iso(package.expires_at))
        tx.session.flush()

    @staticmethod
    def _manifest_files(session: Session, package_id: str) -> list[dict]:
        rows = session.execute(
            select(FileEntry.path, FileEntry.blob_sha256, Blob.blake3, FileEntry.size, FileEntry.media_type)
            .join(Blob, Blob.sha256 == FileEntry.blob_sha256)
            .where(FileEntry.package_id == package_id))
        return [dict(path=p, sha256=s, blake3=b, size=n, media_type=m) for p, s, b, n, m in rows]

    def manifest(self, package_id: str):
        """(digest, size, chunks) of a finalized package's manifest."""
        with self.db.read() as session:
            package = load_package(session, package_id)
            if package.manifest_digest is None:
                raise NotFound(f"package {package_id} is {package.status}: it has no manifest until finalized",
                               package_id=package_id, package_status=package.status)
            digest = package.manifest_digest.removeprefix("sha256:")
            blob = session.get(Blob, digest)
        return digest, blob.size, self.blobs.open(digest)

