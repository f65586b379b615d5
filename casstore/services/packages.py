"""Packages: create, read, list, finalize.

A package is one producer run. Its id (``pkg_`` + ULID) is opaque, URL-safe,
time-sortable and never reused. Lifecycle: created -> uploading -> finalized,
or failed; finalized -> deleted (a tombstone). Once finalized it never
changes again: the manifest digest names its content for good.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session
from ulid import ULID

from ..cas import BlobStore
from ..db import Database
from ..errors import DuplicateRun, InvalidInput, NotFound
from ..jsonvalues import check_json, check_name
from ..models import Blob, FileEntry, Package, utcnow
from . import audit, manifest, retention
from .lookup import load_open_package, load_package, require_open  # noqa: F401  (re-exported)

MAX_METADATA_BYTES = 1 << 20
MAX_METADATA_DEPTH = 32
MAX_METADATA_MEMBERS = 10_000
QUERY_FIELDS = ("producer", "run_id", "target_profile", "assessment_profile", "status", "retention_class")


def new_package_id() -> str:
    return f"pkg_{ULID()}"


@dataclass
class Page:
    items: list
    next_cursor: str | None


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
        for what, value in (("producer", producer), ("run_id", run_id), ("target_profile", target_profile),
                            ("assessment_profile", assessment_profile), ("retention_class", retention_class)):
            if value is not None:
                check_name(value, what)
        # Checked before anything is stored: a value the manifest could not serialize as JSON (NaN,
        # a lone surrogate) would make every finalize of this package fail.
        check_json(metadata, what="metadata", max_depth=MAX_METADATA_DEPTH, max_members=MAX_METADATA_MEMBERS)
        if len(json.dumps(metadata, allow_nan=False, ensure_ascii=False).encode()) > MAX_METADATA_BYTES:
            raise InvalidInput(f"metadata is larger than {MAX_METADATA_BYTES} bytes of JSON")
        try:
            with self.db.write() as session:
                self._refuse_duplicate(session, producer, run_id)
                cls = retention.resolve_class(session, producer, retention_class, self.default_retention_class)
                now = utcnow()
                package = Package(
                    id=new_package_id(), producer=producer, status="created", run_id=run_id,
                    target_profile=target_profile, assessment_profile=assessment_profile,
                    retention_class=cls.name, expires_at=retention.expiry(cls, now), created_at=now,
                    producer_metadata=metadata)
                session.add(package)
                audit.record(session, actor, "package.created", package_id=package.id,
                             run_id=run_id, producer=producer, retention_class=cls.name,
                             expires_at=manifest.iso(package.expires_at))
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
            Package.status.not_in(("deleted", "failed")))).first()
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
            if cursor and session.get(Package, cursor) is None:  # package rows are never removed
                raise InvalidInput(f"unknown cursor {cursor[:64]!r}: pass the next_cursor of a previous page")
            rows = list(session.scalars(stmt))
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, rows[-1].id if more and rows else None)

    def finalize(self, package_id: str, *, actor: str) -> Package:
        """Write the manifest, store it as a blob, and make the package immutable.

        Finalizing a package that is already finalized returns it unchanged,
        so a resumed ingestion can always end with finalize.
        """
        with self.db.read() as session:
            package = load_package(session, package_id)
        if package.status == "finalized":
            return package
        with self.db.write() as session:
            package = load_open_package(session, self.db, package_id)
            now = utcnow()
            package.finalized_at = now
            staged = self.blobs.stage_bytes(manifest.build(package, self._manifest_files(session, package_id)))
            self.blobs.place(staged)
            self.blobs.claim(session, [staged])
            self.blobs.add_refs(session, {staged.sha256: 1})
            cls = retention.resolve_class(session, package.producer, package.retention_class,
                                          self.default_retention_class)
            package.expires_at = retention.later(package.expires_at, retention.expiry(cls, now))
            package.status = "finalized"
            package.manifest_digest = f"sha256:{staged.sha256}"
            session.add(package)
            audit.record(session, actor, "package.finalized", package_id=package_id,
                         subject=package.manifest_digest, file_count=package.file_count,
                         total_bytes=package.total_bytes, expires_at=manifest.iso(package.expires_at))
            session.flush()
            return package

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

