"""File entries: upload bytes, attach known blobs by reference, download.

Every way of adding files ends in ``_commit``: one write transaction that
locks the package, then every blob row involved in digest order, records the
blobs, adds or replaces the entries, moves reference counts, updates the
package's totals and writes one audit event. A batch of 1,500 files is one
transaction, not 1,500.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO

from sqlalchemy import bindparam, select, update
from sqlmodel import Session

from .. import media
from ..cas import SMALL_BLOB, BlobStore, Location, Placement, StagedBlob
from ..collect import BlobCollector
from ..db import Database
from ..digests import HashingReader, parse_sha256
from ..errors import (
    DigestMismatch,
    Gone,
    InvalidInput,
    InvalidPath,
    NotFound,
    ObjectMissing,
    PathExists,
    RangeNotSatisfiable,
)
from ..models import Blob, FileEntry, Package, StorageLocation, utcnow
from ..paths import validate_path
from ..tarstream import TarReader
from . import audit
from .packages import Page, load_open_package, load_package, require_open

DEFAULT_MEDIA_TYPE = "application/octet-stream"
MAX_BATCH_FILES = 10_000
BATCH_MEMORY = 64 << 20
PAX_SHA256 = "ARTIFACT_STORE.sha256"
PAX_MEDIA_TYPE = "ARTIFACT_STORE.media_type"


_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*"
                         r"""(\s*;\s*[\w.+-]+=("[^"\x00-\x1f\x7f]*"|[\w.+-]+))*""")


def media_type_or_guess(value: str | None, path: str) -> str:
    """The media type a client gave (checked: it is sent back as a Content-Type header), else a guess."""
    if value is None:
        return guess_media_type(path)
    value = value.strip()
    if len(value) > 255 or not _MEDIA_TYPE.fullmatch(value):
        raise InvalidInput(f"not a media type: {value[:100]!r}")
    return value


def guess_media_type(path: str) -> str:
    return media.guess(path)


@dataclass
class Entry:
    """A file entry as services hand it out: where, what bytes, which media type, since when."""

    path: str
    sha256: str
    size: int
    media_type: str
    created_at: datetime | None = None


@dataclass
class Download:
    """What a download answers with: the entry, the byte range, and the bytes."""

    entry: Entry
    blake3: str
    start: int
    end: int  # exclusive
    chunks: Iterator[bytes]


class FileService:
    def __init__(self, db: Database, blobs: BlobStore) -> None:
        self.db = db
        self.blobs = blobs
        self.collector = BlobCollector(blobs)

    # ------------------------------------------------------------------ upload
    def check_writable(self, package_id: str, paths: list[str], replace: bool) -> None:
        """Refuse early, before any byte is read: unknown or closed package, or a taken path."""
        with self.db.read() as session:
            package = load_package(session, package_id)
            require_open(package)
            _existing_or_refuse(session, package_id, paths, replace)

    def put(self, package_id: str, path: str, chunks: Iterable[bytes], *, actor: str,
            media_type: str | None = None, expected_sha256: str | None = None,
            replace: bool = False, size_hint: int | None = None) -> Entry:
        """Stream one file's bytes in and add it at ``path``."""
        validate_path(path)
        media_type_or_guess(media_type, path)  # refuse a bad media type before reading the body
        self.check_writable(package_id, [path], replace)
        staged = self.blobs.stage(chunks, expected_sha256, size_hint=size_hint)
        entry = Entry(path, staged.sha256, staged.size, media_type_or_guess(media_type, path))
        return self._place_and_commit(package_id, [entry], [staged], replace, actor, "package.file_uploaded")[0]

    def put_tar(self, package_id: str, stream: IO[bytes], *, actor: str, replace: bool = False,
                expected_sha256: str | None = None) -> list[Entry]:
        """Add every regular file of an uncompressed tar stream, in one transaction.

        Member names are logical paths. ``expected_sha256`` is the whole
        body's (Content-Digest): nothing is recorded unless the body hashes to
        it. A PAX header ``ARTIFACT_STORE.sha256`` is checked the same way for
        one member; ``ARTIFACT_STORE.media_type`` sets its media type.
        Directories are skipped; links and devices are refused.
        """
        self.check_writable(package_id, [], replace)
        staged: list[StagedBlob] = []
        entries: list[Entry] = []
        body = HashingReader(stream)
        try:
            in_memory = 0
            tar = TarReader(body)
            for member in tar:
                if member.is_dir:
                    continue
                path = _tar_member_path(member.name)
                if len(entries) >= MAX_BATCH_FILES:
                    raise InvalidInput(f"a batch holds at most {MAX_BATCH_FILES} files")
                expected = member.pax.get(PAX_SHA256)
                expected = parse_sha256(expected) if expected else None
                if member.size <= SMALL_BLOB and in_memory < BATCH_MEMORY:  # the common case, kept short
                    blob = self.blobs.stage_bytes(tar.read_small(), expected)
                else:
                    blob = self.blobs.stage(tar.chunks(), expected, size_hint=member.size,
                                            small_limit=None if in_memory < BATCH_MEMORY else 0)
                staged.append(blob)
                in_memory += len(blob.data or b"")
                media = media_type_or_guess(member.pax.get(PAX_MEDIA_TYPE), path)
                entries.append(Entry(path, blob.sha256, blob.size, media))
            _refuse_duplicate_paths([e.path for e in entries])
            if expected_sha256 is not None and (received := body.drain()) != expected_sha256:
                raise DigestMismatch(f"the tar body hashes to sha256:{received}, "
                                     f"not the sha256:{expected_sha256} announced",
                                     received_sha256=received, expected_sha256=expected_sha256)
        except BaseException:
            for blob in staged:
                self.blobs.discard(blob)
            raise
        return self._place_and_commit(package_id, entries, staged, replace, actor, "package.files_uploaded")

    def attach(self, package_id: str, items: list[dict], *, actor: str,
               replace: bool = False) -> tuple[list[Entry], list[str]]:
        """Add entries for blobs the store already holds; returns (attached, missing digests)."""
        wanted = [(validate_path(i["path"]), parse_sha256(i["sha256"]),
                   media_type_or_guess(i.get("media_type"), i["path"])) for i in items]
        _refuse_duplicate_paths([p for p, _, _ in wanted])
        self.check_writable(package_id, [p for p, _, _ in wanted], replace)
        with self.db.write() as session:
            package = load_open_package(session, self.db, package_id)
            existing = _existing_or_refuse(session, package.id, [p for p, _, _ in wanted], replace)
            rows = self.blobs.claim(session, [], also_lock={d for _, d, _ in wanted}
                                    | {e.sha256 for e in existing.values()})
            present = {d: r for d, r in rows.items() if r.state == "present"}
            new = [Entry(p, d, present[d].size, m) for p, d, m in wanted if d in present]
            missing = sorted({d for _, d, _ in wanted if d not in present})
            existing = {p: e for p, e in existing.items() if p in {n.path for n in new}}
            added = self._apply(session, package, new, existing, _reference_changes(new, existing), actor,
                                "package.files_attached") if new else []
        return added, missing

    def _place_and_commit(self, package_id: str, entries: list[Entry], staged: list[StagedBlob],
                          replace: bool, actor: str, action: str) -> list[Entry]:
        """Steps 3 to 5 of the CAS write for a set of staged blobs, whatever happens."""
        placement = Placement()
        try:
            placement = self.blobs.place_all(staged)
            return self._commit(package_id, entries, staged, replace, actor, action)
        except BaseException:
            self.collector.undo_place(placement, actor)
            raise
        finally:
            for blob in staged:
                self.blobs.discard(blob)

    def _commit(self, package_id: str, entries: list[Entry], staged: list[StagedBlob],
                replace: bool, actor: str, action: str) -> list[Entry]:
        with self.db.write() as session:
            package = load_open_package(session, self.db, package_id)
            existing = _existing_or_refuse(session, package.id, [e.path for e in entries], replace)
            refs = _reference_changes(entries, existing)
            rows = self.blobs.claim(session, staged, also_lock={e.sha256 for e in existing.values()}, refs=refs)
            for digest in (d for d, row in rows.items() if row.inserted):  # counted when the row was made
                refs.pop(digest, None)
            return self._apply(session, package, entries, existing, refs, actor, action)

    def _apply(self, session: Session, package: Package, entries: list[Entry],
               existing: dict[str, Entry], refs: dict[str, int], actor: str, action: str) -> list[Entry]:
        """Add or replace entries; every blob row involved must be locked, the new ones present.

        ``refs``: how each blob's reference count moves (less what claim already counted).

        Plain Core statements, executemany: a batch of 1,000 entries costs a
        few milliseconds, not a thousand ORM objects.
        """
        now = utcnow()
        inserts, updates, added_bytes = [], [], 0
        for new in entries:
            new.created_at = now
            old = existing.get(new.path)
            if old is not None:
                added_bytes -= old.size
                updates.append({"p": new.path, "d": new.sha256, "n": new.size, "m": new.media_type})
            else:
                inserts.append({"package_id": package.id, "path": new.path, "blob_sha256": new.sha256,
                                "size": new.size, "media_type": new.media_type, "created_at": now})
            added_bytes += new.size
        package.file_count += len(inserts)
        package.total_bytes += added_bytes
        table, conn = FileEntry.__table__, session.connection()
        if inserts:
            conn.execute(table.insert(), inserts)
        if updates:
            conn.execute(update(table).where(table.c.package_id == package.id, table.c.path == bindparam("p"))
                         .values(blob_sha256=bindparam("d"), size=bindparam("n"), media_type=bindparam("m"),
                                 created_at=now), updates)
        self.blobs.add_refs(session, refs)
        package.status = "uploading"
        session.add(package)
        audit.record(session, actor, action, package_id=package.id, count=len(entries),
                     bytes=sum(e.size for e in entries), replaced=sorted(existing),
                     files=[{"path": e.path, "sha256": e.sha256, "size": e.size} for e in entries[:1000]])
        session.flush()
        return entries

    # ------------------------------------------------------------------ read
    def list(self, package_id: str, *, cursor: str | None = None, limit: int = 1000) -> Page:
        """A package's entries in path order, ``limit`` at a time."""
        with self.db.read() as session:
            load_package(session, package_id)
            stmt = select(*ENTRY_COLUMNS).where(FileEntry.package_id == package_id)
            if cursor:
                stmt = stmt.where(FileEntry.path > cursor)
            rows = [Entry(*row) for row in session.execute(stmt.order_by(FileEntry.path).limit(limit + 1))]
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, rows[-1].path if more and rows else None)

    def download(self, package_id: str, path: str, byte_range: tuple[int, int | None] | None = None,
                 *, body: bool = True) -> Download:
        """Open a file for reading, whole or the byte range (start, stop exclusive or None)."""
        validate_path(path)
        with self.db.read() as session:
            package = load_package(session, package_id)
            if package.status == "deleted":
                raise Gone(f"package {package_id} was deleted", package_id=package_id)
            found = session.execute(select(*ENTRY_COLUMNS, Blob.blake3, StorageLocation.object_key,
                                           StorageLocation.offset, StorageLocation.length)
                                    .join(Blob, Blob.sha256 == FileEntry.blob_sha256)
                                    .outerjoin(StorageLocation, StorageLocation.blob_sha256 == FileEntry.blob_sha256)
                                    .where(FileEntry.package_id == package_id, FileEntry.path == path)).first()
            if found is None:
                raise NotFound(f"no file {path!r} in package {package_id}", package_id=package_id, path=path)
            entry, blake3 = Entry(*found[:5]), found[5]
        start, end = _resolve_range(byte_range, entry.size)
        chunks: Iterator[bytes] = iter(())
        if body and end > start:
            if found.object_key is None:
                raise ObjectMissing(f"no location recorded for sha256:{entry.sha256}")
            chunks = self.blobs.read(Location(*found[6:9]), start, end)
        return Download(entry, blake3, start, end, chunks)


ENTRY_COLUMNS = (FileEntry.path, FileEntry.blob_sha256, FileEntry.size, FileEntry.media_type, FileEntry.created_at)


def _reference_changes(entries: list[Entry], existing: dict[str, Entry]) -> Counter[str]:
    """How adding ``entries`` (replacing ``existing`` at their paths) moves each blob's refcount."""
    refs: Counter[str] = Counter(e.sha256 for e in entries)
    refs.subtract(existing[e.path].sha256 for e in entries if e.path in existing)
    return refs


def _existing(session: Session, package_id: str, paths: list[str]) -> dict[str, Entry]:
    found: dict[str, Entry] = {}
    for i in range(0, len(paths), 500):
        for row in session.execute(select(*ENTRY_COLUMNS).where(
                FileEntry.package_id == package_id, FileEntry.path.in_(paths[i:i + 500]))):
            found[row[0]] = Entry(*row)
    return found


def _existing_or_refuse(session: Session, package_id: str, paths: list[str], replace: bool) -> dict[str, Entry]:
    """The entries already at these paths; PathExists if there are any and replace was not asked."""
    taken = _existing(session, package_id, paths)
    if taken and not replace:
        raise PathExists(f"{len(taken)} path(s) already in package {package_id}", paths=sorted(taken)[:100])
    return taken


def _refuse_duplicate_paths(paths: list[str]) -> None:
    dupes = sorted(p for p, n in Counter(paths).items() if n > 1)
    if dupes:
        raise InvalidInput(f"{len(dupes)} path(s) appear twice in one request", paths=dupes[:100])


def _resolve_range(byte_range: tuple[int, int | None] | None, size: int) -> tuple[int, int]:
    """[start, end) to serve for an HTTP byte range given as (start, stop exclusive or None).

    A negative start is a suffix range (the last -start bytes).
    """
    if byte_range is None:
        return 0, size
    start, stop = byte_range
    if start < 0:
        if size == 0:
            raise RangeNotSatisfiable("a suffix range of an empty file is not satisfiable", size=size)
        return max(size + start, 0), size
    if start >= size:
        raise RangeNotSatisfiable(f"range starts at byte {start} but the file has {size} bytes", size=size)
    return start, size if stop is None else min(stop, size)


def _tar_member_path(name: str) -> str:
    try:
        return validate_path(name)
    except InvalidPath as exc:
        raise InvalidPath(f"tar member {name[:200]!r}: {exc.detail}") from exc
