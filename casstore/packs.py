"""Pack objects: the small blobs of one upload batch written as one object.

Why: a guide-board run is mostly small files (logs, reports of a few KB).
One object per blob costs a filesystem create or an S3 PUT each, which is
most of the time of a small-file ingest (restic and borg pack for the same
reason). A batch's new small blobs go into one pack instead; each blob's
place in it is a storage_location row (object key, offset, length).

The layout of a pack, so that it can be read without the database::

    <blob bytes><blob bytes>...<index JSON><footer: b"ASPACK01" + index length, 8 bytes big-endian>

    index JSON = {"format": "artifact-store.pack/v1",
                  "blobs": [[sha256 hex, offset, length], ...]}

Rules the gc relies on (see collect.BlobCollector.collect): a pack's key is a fresh
ULID, never reused, and the only transaction that records locations in a
pack is the one of the upload that wrote it. After that, the set of blobs a
pack holds only shrinks; when no location names it any more, it is deleted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta

from . import layout
from .errors import ObjectMissing
from .storage import Storage

PACK_TRUST = timedelta(minutes=20)  # a claim records locations only in packs younger than this
PACK_SWEEP_AGE = 2 * PACK_TRUST  # the sweep removes unreferenced packs only when older than this
MAGIC = b"ASPACK01"
FOOTER = len(MAGIC) + 8
FORMAT = "artifact-store.pack/v1"
CHUNK_FORMAT = "artifact-store.chunkpack/v1"  # the same layout; entries are [chunk id, offset, length]


@dataclass(frozen=True)
class PackedBlob:
    sha256: str
    offset: int
    length: int


@dataclass
class Pack:
    """A pack ready to write: its key, its bytes as chunks, and where each blob sits."""

    key: str
    chunks: list[bytes]
    blobs: list[PackedBlob]

    @property
    def size(self) -> int:
        return sum(len(c) for c in self.chunks)


def build(blobs: list[tuple[str, bytes]]) -> Pack:
    """Lay out (sha256, bytes) pairs, each digest once, under a new pack key."""
    chunks: list[bytes] = []
    placed: list[PackedBlob] = []
    seen: set[str] = set()
    offset = 0
    for sha, data in blobs:
        if sha in seen:
            continue
        seen.add(sha)
        chunks.append(data)
        placed.append(PackedBlob(sha, offset, len(data)))
        offset += len(data)
    chunks += trailer(placed)
    return Pack(layout.new_pack_key(), chunks, placed)


def trailer(placed: list[PackedBlob], fmt: str = FORMAT) -> list[bytes]:
    """The index and the footer that end a pack (``sha256`` holds a chunk id in a chunk pack)."""
    index = json.dumps({"format": fmt, "blobs": [[b.sha256, b.offset, b.length] for b in placed]},
                       separators=(",", ":")).encode()
    return [index, MAGIC + len(index).to_bytes(8, "big")]


def write(storage: Storage, pack: Pack) -> None:
    storage.put_stream(pack.key, pack.chunks, size_hint=pack.size)


def read_index(storage: Storage, key: str) -> list[PackedBlob]:
    """The blobs a pack says it holds, from its own index (for recovery and checks).

    ObjectMissing if there is no such object; ValueError if it does not read as a pack.
    """
    info = storage.head(key)
    if info is None:
        raise ObjectMissing(f"object not found: {key}")
    footer = b"".join(storage.get(key, max(info.size - FOOTER, 0), info.size))
    if len(footer) != FOOTER or footer[:len(MAGIC)] != MAGIC:
        raise ValueError(f"{key} has no pack footer")
    start = info.size - FOOTER - int.from_bytes(footer[len(MAGIC):], "big")
    try:
        index = json.loads(b"".join(storage.get(key, start, info.size - FOOTER))) if start >= 0 else {}
        if index.get("format") not in (FORMAT, CHUNK_FORMAT):
            raise ValueError(f"unknown pack format {index.get('format')!r}")
        return [PackedBlob(sha, offset, n) for sha, offset, n in index["blobs"]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{key}: unreadable pack index: {exc}") from exc
