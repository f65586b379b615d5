"""File entries: upload bytes, attach known blobs by reference, download.

Every way of adding files goes through a blob writer (writer.py) and ends in
``_record``: inside the writer's one write transaction it locks the package,
then every blob row involved in digest order (the writer's claim), adds or
replaces the entries, moves reference counts, updates the package's totals
and writes one audit event. A batch of 1,500 files is one transaction.

Retries are safe (invariant 8): an entry that already holds exactly the same
bytes (and media type) is left as it is, and the request succeeds as it did
the first time; only different bytes at a taken path are a conflict (409
unless ``replace``).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO

from sqlalchemy import bindparam, select, update
from sqlmodel import Session

from .. import auditlog as audit
from .. import chunking, media
from ..cas import SMALL_BLOB, BlobStore, Location
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
from ..models import Blob, BlobState, FileEntry, Package, PackageStatus, StorageLocation, utcnow
from ..paging import Page
from ..paths import validate_path
from ..tarstream import TarReader
from ..writer import BlobWriter
from .lookup import load_open_package, load_package, require_open

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
    deduplicated: int = 0  # of an upload: bytes the store already held when they arrived (not stored again)


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

    # ------------------------------------------------------------------ upload
    def check_writable(self, package_id: str, announced: dict[str, str | None], replace: bool) -> None:
        """Refuse early, before any byte is read: an unknown or closed package, or a path that
        holds other bytes than the digest the client announced (no announcement: decided later)."""
        with self.db.read() as session:
            require_open(load_package(session, package_id))
            if replace:
                return
            taken = _existing(session, package_id, [p for p, d in announced.items() if d is not None])
            clash = sorted(p for p, e in taken.items() if e.sha256 != announced[p])
            if clash:
                raise PathExists(f"{len(clash)} path(s) already in package {package_id} with other bytes",
                                 paths=clash[:100])

    def put(self, package_id: str, path: str, body: Iterable[bytes], *, actor: str,
            media_type: str | None = None, expected_sha256: str | None = None,
            expected_size: int | None = None, replace: bool = False) -> tuple[Entry, bool]:
        """Stream one file's bytes in and add it at ``path``; (entry, whether anything changed)."""
        validate_path(path)
        media = media_type_or_guess(media_type, path)  # refuse a bad media type before reading the body
        self.check_writable(package_id, {path: expected_sha256}, replace)
        with BlobWriter(self.blobs, actor) as writer:
            staged = writer.add_stream(body, expected_sha256=expected_sha256, expected_size=expected_size)
            entry = Entry(path, staged.sha256, staged.size, media)
            [entry], changed = self._record(writer, package_id, [entry], replace, "package.file_uploaded")
        return entry, changed

    def put_tar(self, package_id: str, stream: IO[bytes], *, actor: str, replace: bool = False,
                expected_sha256: str | None = None) -> list[Entry]:
        """Add every regular file of an uncompressed tar stream, in one transaction.

        Member names are logical paths. ``expected_sha256`` is the whole
        body's (Content-Digest): nothing is recorded unless the body hashes to
        it. A PAX header ``ARTIFACT_STORE.sha256`` is checked the same way for
        one member; ``ARTIFACT_STORE.media_type`` sets its media type.
        Directories are skipped; links and devices are refused. The archive
        must end with its end-of-archive marker and nothing but zero padding.
        """
        self.check_writable(package_id, {}, replace)
        entries: list[Entry] = []
        body = HashingReader(stream)
        with BlobWriter(self.blobs, actor) as writer:
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
                    blob = writer.add_bytes(tar.read_small(), expected)
                else:
                    blob = writer.add_stream(tar.chunks(), expected_sha256=expected, size_hint=member.size,
                                             small_limit=SMALL_BLOB if in_memory < BATCH_MEMORY else 0)
                in_memory += len(blob.data or b"")
                media = media_type_or_guess(member.pax.get(PAX_MEDIA_TYPE), path)
                entries.append(Entry(path, blob.sha256, blob.size, media))
            _refuse_duplicate_paths([e.path for e in entries])
            tar.finish()
            if expected_sha256 is not None and (received := body.drain()) != expected_sha256:
                raise DigestMismatch(f"the tar body hashes to sha256:{received}, "
                                     f"not the sha256:{expected_sha256} announced",
                                     received_sha256=received, expected_sha256=expected_sha256)
            entries, _ = self._record(writer, package_id, entries, replace, "package.files_uploaded")
        return entries

    def put_chunked(self, package_id: str, path: str, stream: IO[bytes], *, actor: str,
                    expected_sha256: str | None = None, replace: bool = False) -> tuple[Entry, bool]:
        """Add a large file sent as its chunk list plus only the chunks the store lacks.

        The body is an uncompressed tar: first ``recipe.json`` ({"chunker", "chunks": [[id,
        size], ...], "media_type"?}), then one member per chunk the store lacks, named by
        its id, in recipe order, each time it occurs. The writer derives each sent chunk's
        id from its bytes, reads the others back, and computes the file's SHA-256 and
        BLAKE3 itself; chunks neither sent nor held answer ChunksMissing (409, listed).
        """
        validate_path(path)
        self.check_writable(package_id, {path: expected_sha256}, replace)
        tar = TarReader(stream)
        members = iter(tar)
        chunker, recipe, media = _read_recipe(tar, next(members, None), path)

        def sent() -> Iterator[tuple[str, bytes]]:
            for member in members:
                if member.is_dir or member.size > chunking.MAX_SIZE or member.size == 0:
                    raise InvalidInput(f"tar member {member.name[:80]!r} is not a chunk")
                yield member.name, tar.read_member()
            tar.finish()

        with BlobWriter(self.blobs, actor) as writer:
            staged = writer.add_chunked(chunker, recipe, sent(), expected_sha256=expected_sha256)
            entry = Entry(path, staged.sha256, staged.size, media)
            [entry], changed = self._record(writer, package_id, [entry], replace, "package.file_uploaded")
        return entry, changed

    def missing_chunks(self, ids: list[str]) -> list[str]:
        """Which of these chunk ids the store lacks (asked of the database, fresh)."""
        with self.db.read() as session:
            return self.blobs.chunks.missing(session, [parse_sha256(i) for i in ids])

    def attach(self, package_id: str, items: list[dict], *, actor: str,
               replace: bool = False) -> tuple[list[Entry], list[str]]:
        """Add entries for blobs the store already holds; returns (attached, missing digests)."""
        wanted = [(validate_path(i["path"]), parse_sha256(i["sha256"]),
                   media_type_or_guess(i.get("media_type"), i["path"])) for i in items]
        _refuse_duplicate_paths([p for p, _, _ in wanted])
        self.check_writable(package_id, {p: d for p, d, _ in wanted}, replace)
        with BlobWriter(self.blobs, actor) as writer, writer.commit() as tx:
            package = load_open_package(tx.session, self.db, package_id)
            existing = _existing(tx.session, package.id, [p for p, _, _ in wanted])
            rows = tx.claim(also_lock={d for _, d, _ in wanted} | {e.sha256 for e in existing.values()})
            present = {d: r for d, r in rows.items() if r.state == BlobState.PRESENT}
            found = [Entry(p, d, present[d].size, m) for p, d, m in wanted if d in present]
            missing = sorted({d for _, d, _ in wanted if d not in present})
            changes, replaced = _changes(package.id, found, existing, replace)
            if changes:
                self._apply(tx.session, package, changes, replaced, _reference_changes(changes, replaced),
                            actor, "package.files_attached")
        return _as_recorded(found, existing), missing

    def _record(self, writer: BlobWriter, package_id: str, entries: list[Entry], replace: bool,
                action: str) -> tuple[list[Entry], bool]:
        """Commit the writer's blobs and these entries in one transaction; returns the entries as
        recorded, and whether anything changed (an entry already holding the same bytes is a retry:
        it is left as it is, and comes back as it was recorded the first time)."""
        with writer.commit() as tx:
            package = load_open_package(tx.session, self.db, package_id)
            existing = _existing(tx.session, package.id, [e.path for e in entries])
            changes, replaced = _changes(package.id, entries, existing, replace)
            refs = _reference_changes(changes, replaced)
            rows = tx.claim(also_lock={e.sha256 for e in replaced.values()}, refs=refs)
            for digest in (d for d, row in rows.items() if row.inserted):  # counted when the row was made
                refs.pop(digest, None)
            if changes:
                self._apply(tx.session, package, changes, replaced, refs, writer.actor, action)
        recorded = _as_recorded(entries, existing)
        for entry, staged in zip(recorded, writer.staged):  # one staged blob per entry, in order
            entry.deduplicated = staged.held_bytes
        return recorded, bool(changes)

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
        package.status = PackageStatus.UPLOADING
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
        return Page.of(rows, limit, key=lambda entry: entry.path)

    def download(self, package_id: str, path: str, byte_range: tuple[int, int | None] | None = None,
                 *, body: bool = True) -> Download:
        """Open a file for reading, whole or the byte range (start, stop exclusive or None)."""
        validate_path(path)
        with self.db.read() as session:
            package = load_package(session, package_id)
            if package.status == PackageStatus.DELETED:
                raise Gone(f"package {package_id} was deleted", package_id=package_id)
            found = session.execute(select(*ENTRY_COLUMNS, Blob.blake3, StorageLocation.object_key,
                                           StorageLocation.offset, StorageLocation.length, Blob.chunker)
                                    .join(Blob, Blob.sha256 == FileEntry.blob_sha256)
                                    .outerjoin(StorageLocation, StorageLocation.blob_sha256 == FileEntry.blob_sha256)
                                    .where(FileEntry.package_id == package_id, FileEntry.path == path)).first()
            if found is None:
                raise NotFound(f"no file {path!r} in package {package_id}", package_id=package_id, path=path)
            entry, blake3 = Entry(*found[:5]), found[5]
        start, end = _resolve_range(byte_range, entry.size)
        chunks: Iterator[bytes] = iter(())
        if body and end > start:
            if found.chunker is not None:  # a chunked file: read through its recipe (only the chunks in range)
                where = Location.of_recipe(entry.sha256, entry.size)
            elif found.object_key is None:
                raise ObjectMissing(f"no location recorded for sha256:{entry.sha256}")
            else:
                where = Location(*found[6:9])
            chunks = self.blobs.read(where, start, end)
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


def _changes(package_id: str, entries: list[Entry], existing: dict[str, Entry],
             replace: bool) -> tuple[list[Entry], dict[str, Entry]]:
    """(the entries that change something, the existing entries they replace).

    An entry equal to the one at its path (same bytes, same media type) is a
    retry and changes nothing; one with other bytes at a taken path is a
    conflict unless ``replace``.
    """
    changes = [e for e in entries if not _same(existing.get(e.path), e)]
    replaced = {e.path: existing[e.path] for e in changes if e.path in existing}
    if replaced and not replace:
        raise PathExists(f"{len(replaced)} path(s) already in package {package_id} with other bytes",
                         paths=sorted(replaced)[:100])
    return changes, replaced


def _as_recorded(entries: list[Entry], existing: dict[str, Entry]) -> list[Entry]:
    """Each entry as the package now holds it: a retried one as it was first recorded."""
    return [existing[e.path] if _same(existing.get(e.path), e) else e for e in entries]


def _same(old: Entry | None, new: Entry) -> bool:
    return old is not None and old.sha256 == new.sha256 and old.media_type == new.media_type


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


MAX_RECIPE = 16 << 20  # about 200,000 chunks: a file of some 250 GB


def _read_recipe(tar: TarReader, member, path: str) -> tuple[str, list[tuple[str, int]], str]:
    """The recipe member that opens a chunked upload, checked: (chunker, [(id, size)], media type)."""
    if member is None or member.name != "recipe.json" or member.is_dir:
        raise InvalidInput("a chunked upload starts with its recipe.json member")
    if member.size > MAX_RECIPE:
        raise InvalidInput(f"recipe.json is larger than {MAX_RECIPE} bytes")
    try:
        doc = json.loads(tar.read_small())
        chunker, listed = doc["chunker"], doc["chunks"]
        recipe = [(parse_sha256(cid), size) for cid, size in listed]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"recipe.json is not a recipe: {exc}"[:300]) from exc
    if not isinstance(chunker, str) or not recipe \
            or any(type(n) is not int or not 0 < n <= chunking.MAX_SIZE for _, n in recipe):
        raise InvalidInput(f"a recipe lists 1 or more chunks of 1 to {chunking.MAX_SIZE} bytes, by its chunker")
    return chunker, recipe, media_type_or_guess(doc.get("media_type"), path)


def _tar_member_path(name: str) -> str:
    try:
        return validate_path(name)
    except InvalidPath as exc:
        raise InvalidPath(f"tar member {name[:200]!r}: {exc.detail}") from exc
