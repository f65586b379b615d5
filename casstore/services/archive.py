"""Whole-package archives: one finalized package as one tar (or zip) stream.

Tar layout (version 1), the same bytes on every request for the same package:

    <id>.manifest.json          the exact manifest bytes (their SHA-256 is the manifest digest)
    <id>/<logical path>         every file, in manifest order (code point order of paths)
    two zero blocks             the end-of-archive marker

Each member has a POSIX.1-2001 (pax) header made by ``tarfile`` with fixed
fields (mode 0644, uid/gid 0, no user names, mtime = the package's
finalization time), so names of any length and any Unicode survive. The
layout is computed from the manifest before a byte is read: the total length
(Content-Length) is exact, and a byte range is served by reading only the
members it overlaps. Bytes come from the blob store in ~1 MiB chunks, so a
request's memory is the layout, never the data: compact arrays (_members.py),
~100 bytes a file held and little more at the peak while built (the manifest is
parsed as it arrives, its files located 500 at a time), pinned by
tests/test_archive_memory.py.

Zip (``format=zip``) holds the same members, stored (no compression), with
zip64 records where sizes need them (zipstream-ng). Its CRC-32s are computed
while streaming, so its length is known in advance but a byte range is not
served (it would need every CRC before the first byte): resume with the tar.
"""

from __future__ import annotations

import bisect
import codecs
import json
import re
import tarfile
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from enum import Enum

from sqlalchemy import select

from .. import layout
from ..cas import BlobStore, Location
from ..db import Database
from ..errors import Gone, NotFound, ObjectMissing, RangeNotSatisfiable
from ..models import Blob, Package, PackageStatus, StorageLocation
from ._members import Members
from .lookup import load_package

BLOCK = 512
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)
LAYOUT_VERSION = "1"
TEXT_SLICE = 256 << 10  # bytes of the manifest decoded at a time


class ArchiveFormat(str, Enum):
    TAR = "tar"
    ZIP = "zip"


MEDIA_TYPES = {ArchiveFormat.TAR: "application/x-tar", ArchiveFormat.ZIP: "application/zip"}


@dataclass
class Archive:
    """What an archive request answers with."""

    package_id: str
    manifest_digest: str
    format: ArchiveFormat
    size: int  # of the whole archive
    start: int
    end: int  # exclusive
    chunks: Iterator[bytes]
    _slice: Callable[[int, int], Iterator[bytes]] | None = None

    def ranged(self, byte_range: tuple[int, int | None] | None) -> "Archive":
        """The same archive restricted to a byte range (start, stop exclusive or None); tar only."""
        if byte_range is None or self._slice is None:
            return self
        start, end = _resolve_range(byte_range, self.size)
        return replace(self, start=start, end=end, chunks=self._slice(start, end))

    @property
    def etag(self) -> str:
        """Names the bytes: the manifest digest fixes the content, the layout version the form."""
        return f"{self.manifest_digest.removeprefix('sha256:')}.{self.format.value}.{LAYOUT_VERSION}"

    @property
    def filename(self) -> str:
        return f"{self.package_id}.{self.format.value}"

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.format]


HEAD = re.compile(r'\{"file_count":\d+,"files":\[')


def manifest_files(manifest: bytes | Iterable[bytes]) -> Iterator[dict]:
    """The manifest's file records one at a time, never all parsed nor all held at once.

    A canonical manifest starts ``{"file_count":N,"files":[`` (keys sorted, no
    white space), so each record is decoded where it stands, as its bytes
    arrive: a request holds a chunk of the manifest and one record, not the
    22 MiB (and as much again decoded) of a 100,000-file package's manifest.
    A record is a JSON object, so it cannot parse before its closing brace has
    arrived. Anything else is parsed whole.
    """
    pieces = _decoded([manifest] if isinstance(manifest, (bytes, bytearray)) else manifest)
    text = ""
    while len(text) < 64 and (piece := next(pieces, None)) is not None:
        text += piece
    head = HEAD.match(text)
    if head is None:
        yield from json.loads(text + "".join(pieces))["files"]
        return
    decoder, at = json.JSONDecoder(), head.end()
    while True:
        if at < len(text) and text[at] == "]":
            return
        if at < len(text) and text[at] == ",":
            at += 1
            continue
        try:
            record, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:  # the record's end has not arrived yet (or never will)
            piece = next(pieces, None)
            if piece is None:
                raise
            text, at = text[at:] + piece, 0
            continue
        yield record


def _decoded(chunks: Iterable[bytes]) -> Iterator[str]:
    """UTF-8 chunks as text a slice at a time (a read's chunk is 4 MiB), a character split
    between two slices decoded whole."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    for chunk in chunks:
        view = memoryview(chunk)
        for at in range(0, len(view), TEXT_SLICE):
            yield decoder.decode(view[at:at + TEXT_SLICE])
    yield decoder.decode(b"", final=True)


def _plain(name: str, size: int, mtime: int) -> bool:
    """An ASCII name of at most 100 bytes and numbers that fit their octal fields: no pax header."""
    return name.isascii() and len(name) <= 100 and 0 <= size < 8 ** 11 and 0 <= mtime < 8 ** 11


def header_size(name: str, size: int, mtime: int) -> int:
    """len(tar_header(...)), without building it."""
    return BLOCK if _plain(name, size, mtime) else len(tar_header(name, size, mtime))


def _ustar(name: str, size: int, mtime: int) -> bytes:
    """The one-block header ``tarfile`` writes for a plain member, built directly (tarfile's
    general code took 70 us a member: most of the time of a 100,000-file archive)."""
    buf = bytearray(BLOCK)
    buf[0:len(name)] = name.encode("ascii")
    buf[100:124] = b"0000644\x000000000\x000000000\x00"  # mode, uid, gid
    buf[124:148] = b"%011o\x00%011o\x00" % (size, mtime)
    buf[148:156] = b"        "  # the checksum is computed with its own field as spaces
    buf[156] = ord(tarfile.REGTYPE)
    buf[257:265] = tarfile.POSIX_MAGIC
    buf[148:156] = b"%06o\x00 " % sum(buf)
    return bytes(buf)


def tar_header(name: str, size: int, mtime: int) -> bytes:
    """A member header with every field fixed but name, size and mtime (deterministic)."""
    if _plain(name, size, mtime):
        return _ustar(name, size, mtime)
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.type = size, mtime, 0o644, tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


class ArchiveService:
    def __init__(self, db: Database, blobs: BlobStore) -> None:
        self.db = db
        self.blobs = blobs

    def _members(self, package_id: str) -> tuple[Package, Members]:
        """The package and its members in archive order (manifest first), locations resolved.

        The manifest is parsed as its bytes arrive, and its files' locations are looked up
        a batch at a time meanwhile (Members.add_files): never all rows, nor the whole text.
        """
        with self.db.read() as session:
            package = load_package(session, package_id)
            if package.status == PackageStatus.DELETED:
                raise Gone(f"package {package_id} was deleted; its archive is gone with its files",
                           package_id=package_id)
            if package.manifest_digest is None:
                raise NotFound(f"package {package_id} is {package.status}: it has no archive until finalized",
                               package_id=package_id, package_status=package.status)
            manifest_at = self.blobs.locate(session, package.manifest_digest.removeprefix("sha256:"))
            if manifest_at is None:
                raise ObjectMissing(f"no location recorded for the manifest of {package_id}")
            # read again when streamed: a request holds its layout, not the manifest's bytes
            members = Members(package_id, manifest_at)
            manifest = members.counted(self.blobs.read(manifest_at))
            members.add_files(manifest_files(manifest), lambda digests: _locations(session, digests))
            for _ in manifest:  # what follows the files (the package's fields) counts too
                pass
        return package, members

    # ------------------------------------------------------------------ tar
    def tar(self, package_id: str, byte_range: tuple[int, int | None] | None = None) -> Archive:
        """The tar of a finalized package, whole or the byte range (start, stop exclusive or None).

        Nothing is read from the backend until the chunks are iterated; ``Archive.ranged``
        picks a range after the ETag is known (If-Range) without loading the layout again.
        """
        package, members = self._members(package_id)
        mtime = int(package.finalized_at.timestamp())
        offsets = _tar_offsets(members, mtime)
        size = offsets[-1] + len(END_OF_ARCHIVE)

        def slice_(start: int, end: int) -> Iterator[bytes]:
            return self._tar_bytes(members, offsets, mtime, start, end)

        whole = Archive(package.id, package.manifest_digest, ArchiveFormat.TAR, size, 0, size, slice_(0, size),
                        slice_)
        return whole.ranged(byte_range)

    def _tar_bytes(self, members: Members, offsets: array, mtime: int, start: int, end: int) -> Iterator[bytes]:
        """The bytes [start, end) of the tar, reading only the members that overlap them."""
        reader = MemberReader(self.blobs, members)
        first = max(bisect.bisect_right(offsets, start) - 1, 0)
        for i in range(first, len(members)):
            at = offsets[i]
            if at >= end:
                return
            name, size = members.name(i), members.sizes[i]
            header = tar_header(name, size, mtime)
            yield from _clip(header, at, start, end)
            data_start = at + len(header)
            a, b = max(start, data_start), min(end, data_start + size)
            if a < b:
                yield from reader.data(i, a - data_start, b - data_start)
            pad_start = data_start + size
            yield from _clip(b"\0" * (offsets[i + 1] - pad_start), pad_start, start, end)
        yield from _clip(END_OF_ARCHIVE, offsets[-1], start, end)

    # ------------------------------------------------------------------ zip
    def zip(self, package_id: str) -> Archive:
        """The zip of a finalized package: the same members, stored, zip64 where needed."""
        from ._zip import zip_length

        package, members = self._members(package_id)
        size = zip_length((members.name(i), n) for i, n in enumerate(members.sizes))
        return Archive(package.id, package.manifest_digest, ArchiveFormat.ZIP, size, 0, size,
                       self._zip_bytes(members, package.finalized_at))

    def _zip_bytes(self, members: Members, finalized_at: datetime) -> Iterator[bytes]:
        """The zip's bytes, each member queued only when the one before has been streamed."""
        from ._zip import FixedTimeZip

        reader = MemberReader(self.blobs, members)
        stream = FixedTimeZip(finalized_at)
        for i, size in enumerate(members.sizes):
            if size == 0:
                stream.add(b"", members.name(i))
            else:
                stream.add(_lazy(reader, i), members.name(i), size=size)
            yield from stream.all_files()
        yield from stream.footer()


def _lazy(reader: "MemberReader", i: int) -> Iterator[bytes]:
    """A member's bytes, read only when the zip reaches it (one open blob at a time)."""
    yield from reader.data(i, 0, reader.members.sizes[i])


class MemberReader:
    """Reads members' bytes for one request, small packed ones a stretch at a time.

    A run's small files arrive in tar batches stored as packs, in path order,
    so in manifest order they mostly sit back to back in a few pack objects.
    Reading each with its own range request costs a round trip per file (on
    S3 an HTTP request, locally an open and a seek): a quarter of the time of
    a 1 GiB package's archive. So one read takes up to WINDOW bytes of a pack
    covering the members that follow in it, and those are cut from it; at
    most one window is held at a time.
    """

    WINDOW = 8 << 20

    def __init__(self, blobs: BlobStore, members: Members) -> None:
        self.blobs = blobs
        self.members = members
        self._key: str | None = None
        self._start = 0
        self._bytes = b""

    def data(self, i: int, a: int, b: int) -> Iterator[bytes]:
        """Bytes [a, b) of member i, checked to be as long as the manifest says."""
        at = self.members.location(i)
        if layout.is_pack_key(at.object_key) and at.length <= self.WINDOW:
            if not self._holds(at):
                self._fill(i)
            piece = self._bytes[at.offset - self._start + a:at.offset - self._start + b]
            if len(piece) != b - a:
                raise ObjectMissing(f"{self.members.name(i)}: the pack holds {len(piece)} of its bytes [{a}, {b})")
            yield piece
            return
        sent = 0
        for chunk in self.blobs.read(at, a, b):
            sent += len(chunk)
            yield chunk
        if sent != b - a:
            raise ObjectMissing(f"{self.members.name(i)}: the backend returned {sent} bytes where {b - a} "
                                "were expected")

    def _holds(self, at: Location) -> bool:
        return (at.object_key == self._key and at.offset >= self._start
                and at.offset + at.length <= self._start + len(self._bytes))

    def _fill(self, i: int) -> None:
        """Read the stretch of member i's pack that also covers the next members in that pack."""
        at = self.members.location(i)
        start, end = at.offset, at.offset + at.length
        for j in range(i + 1, len(self.members)):
            nxt = self.members.location(j)
            if nxt is None or nxt.object_key != at.object_key or nxt.offset < start:
                break
            if nxt.offset + nxt.length - start > self.WINDOW:
                break
            end = max(end, nxt.offset + nxt.length)
        self._key, self._start = at.object_key, start
        self._bytes = b"".join(self.blobs.read(Location(at.object_key, start, end - start)))


def _locations(session, digests: list[str]):
    """(sha256, size, chunker, object key, offset, length) of these blobs (a chunked one has
    no storage_location row: its recipe is read instead)."""
    blob, where = Blob.__table__, StorageLocation.__table__
    return session.connection().execute(
        select(blob.c.sha256, blob.c.size, blob.c.chunker, where.c.object_key, where.c.offset, where.c.length)
        .outerjoin(where, where.c.blob_sha256 == blob.c.sha256).where(blob.c.sha256.in_(digests)))


def _tar_offsets(members: Members, mtime: int) -> array:
    """Where each member's header starts, then where the end-of-archive marker starts (one pass)."""
    offsets = array("q", [0])
    at = 0
    for i, size in enumerate(members.sizes):
        at += header_size(members.name(i), size, mtime) + -(-size // BLOCK) * BLOCK
        offsets.append(at)
    return offsets


def _clip(data: bytes, at: int, start: int, end: int) -> Iterator[bytes]:
    """The part of ``data`` (which sits at offset ``at``) inside [start, end)."""
    a, b = max(start, at), min(end, at + len(data))
    if a < b:
        yield data[a - at:b - at]


def _resolve_range(byte_range: tuple[int, int | None] | None, size: int) -> tuple[int, int]:
    """[start, end) for an HTTP byte range (start, stop exclusive or None); a negative start is a suffix."""
    if byte_range is None:
        return 0, size
    start, stop = byte_range
    if start < 0:
        return max(size + start, 0), size
    if start >= size:
        raise RangeNotSatisfiable(f"range starts at byte {start} but the archive has {size} bytes", size=size)
    return start, size if stop is None else min(stop, size)
