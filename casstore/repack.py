"""Repacking: packs whose live bytes fell below a fraction are rewritten, so that packs shrink.

A pack (a batch's small blobs, packs/<ulid>; or an upload's new chunks,
chunks/<ulid>) only ever loses entries: gc removes a blob's location or a
chunk row, and the pack is deleted with its last entry. A pack of a deleted
run that shares one chunk with a kept run would keep its whole size forever.
So gc rewrites a pack whose live fraction is below REPACK_BELOW:

1. plan, read only: the pack's live entries ('present' rows naming it);
2. copy, no transaction open: their bytes, in pack order, into a new pack
   (a fresh ULID key, with its own index), streamed;
3. move, one write transaction: under the rows' locks (blob rows, or chunk
   rows, in key order), every entry that still names the old pack at the same
   offset now names the new one; the old pack is recorded in ``retired_pack``;
4. the old pack is deleted by the gc sweep only once retired for longer than
   the grace (REPACK_GRACE, longer than any read in flight: a download that
   located an entry in the old pack just before the move reads it there).

No window in which a live entry cannot be read: before the commit every
entry names the old pack (still there), after it the new one (complete
before the commit began), and the old one stays for the grace. A crash
during 2 leaves a new pack that no row names (swept as an orphan after
cas.PACK_SWEEP_AGE); after 3, a retired pack swept after its grace. No entry is
moved that gc took or a writer revived meanwhile: the move is conditional,
under the lock. Works the same on every backend: it uses only get, put, head
and delete.

Why below one half: the bytes rewritten (the live ones) are then never more
than the bytes freed (borg compacts at 10% unused, kopia rewrites packs under
60% live, restic prunes repo-wide at 5% unused: all trade rewrite I/O for space).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import and_, bindparam, delete, func, select, update

from . import auditlog as audit
from . import layout, packs
from .cas import PACK_TRUST, BlobStore
from .db import insert_for
from .models import Blob, BlobState, Chunk, RetiredPack, StorageLocation, utcnow
from .prefetch import Prefetched

log = logging.getLogger(__name__)

REPACK_BELOW = 0.5  # rewrite a pack whose live bytes are less than this fraction of it
REPACK_GRACE = timedelta(hours=1)  # a retired pack stays this long (reads in flight)


@dataclass
class RepackReport:
    packs_rewritten: int = 0
    bytes_copied: int = 0
    bytes_reclaimable: int = 0  # dead bytes of the packs rewritten (freed when the old packs go)
    retired_removed: int = 0
    retired_bytes_freed: int = 0
    rewritten: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Entry:
    name: str  # a blob's sha256, or a chunk id
    offset: int
    length: int


class Repacker:
    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self.db = blobs.db
        self.storage = blobs.storage

    # which packs ---------------------------------------------------------------------
    def candidates(self, below: float = REPACK_BELOW, min_age: timedelta = PACK_TRUST) -> list[tuple[str, int, int]]:
        """(pack key, live bytes, pack size) of packs older than ``min_age`` whose live fraction
        is below ``below``. Only committed packs have rows at all; the age keeps repacking away
        from a pack whose upload is still tidying up after its commit."""
        with self.db.read() as session:
            live = dict(session.execute(select(StorageLocation.object_key, func.sum(StorageLocation.length))
                                        .join(Blob, Blob.sha256 == StorageLocation.blob_sha256)
                                        .where(Blob.state == BlobState.PRESENT)
                                        .group_by(StorageLocation.object_key)).all())
            live.update(session.execute(select(Chunk.object_key, func.sum(Chunk.size))
                                        .where(Chunk.state == BlobState.PRESENT).group_by(Chunk.object_key)).all())
            retired = set(session.scalars(select(RetiredPack.object_key)))
        found, old = [], utcnow() - min_age
        for key, used in live.items():
            made = layout.any_pack_key_time(key)
            if made is None or made > old or key in retired:
                continue
            info = self.storage.head(key)
            if info is not None and used < below * info.size:
                found.append((key, int(used), info.size))
        return sorted(found)

    # one pack --------------------------------------------------------------------------
    def repack(self, key: str, actor: str) -> tuple[str, int] | None:
        """Rewrite one pack's live entries into a new pack and move them; (new key, bytes copied)."""
        chunk_pack = layout.is_chunk_pack_key(key)
        entries = self._live(key, chunk_pack)
        new_key = layout.new_chunk_pack_key() if chunk_pack else layout.new_pack_key()
        placed, offset = [], 0
        for e in entries:
            placed.append(packs.PackedBlob(e.name, offset, e.length))
            offset += e.length
        fmt = packs.CHUNK_FORMAT if chunk_pack else packs.FORMAT
        if entries:
            with Prefetched(self._bytes(key, entries)) as stream:
                self.storage.put_stream(new_key, _then(stream, lambda: packs.trailer(placed, fmt)),
                                        size_hint=offset)
        moved = self._move(key, new_key if entries else None, entries, placed, chunk_pack, actor)
        if entries and moved == 0:  # everything went meanwhile: nobody can name the new pack
            self.storage.delete(new_key)
        return new_key, offset

    def _live(self, key: str, chunk_pack: bool) -> list[Entry]:
        with self.db.read() as session:
            if chunk_pack:
                rows = session.execute(select(Chunk.id, Chunk.offset, Chunk.size).where(
                    Chunk.object_key == key, Chunk.state == BlobState.PRESENT).order_by(Chunk.offset))
            else:
                rows = session.execute(select(StorageLocation.blob_sha256, StorageLocation.offset,
                                              StorageLocation.length)
                                       .join(Blob, Blob.sha256 == StorageLocation.blob_sha256)
                                       .where(StorageLocation.object_key == key, Blob.state == BlobState.PRESENT)
                                       .order_by(StorageLocation.offset))
            return [Entry(*r) for r in rows]

    def _bytes(self, key: str, entries: list[Entry]):
        """The entries' bytes in order, neighbours read with one range request."""
        runs: list[list[int]] = []
        for e in entries:
            if runs and runs[-1][1] == e.offset:
                runs[-1][1] = e.offset + e.length
            else:
                runs.append([e.offset, e.offset + e.length])
        for lo, hi in runs:
            yield from self.storage.get(key, lo, hi)

    def _move(self, old: str, new: str | None, entries: list[Entry], placed: list[packs.PackedBlob],
              chunk_pack: bool, actor: str) -> int:
        """Under the rows' locks, point every entry still in ``old`` at ``new``; retire ``old``."""
        params = [{"n": e.name, "o": e.offset, "no": p.offset} for e, p in zip(entries, placed)]
        with self.db.write() as session:
            names = [e.name for e in entries]
            if chunk_pack:
                self.blobs.chunks.lock_rows(session, names)
                table = Chunk.__table__
                stmt = (update(table).where(and_(table.c.id == bindparam("n"), table.c.object_key == old,
                                                 table.c.offset == bindparam("o"),
                                                 table.c.state == BlobState.PRESENT))
                        .values(object_key=new, offset=bindparam("no")))
            else:
                self.blobs.lock_rows(session, sorted(names))
                table = StorageLocation.__table__
                stmt = (update(table).where(and_(table.c.blob_sha256 == bindparam("n"), table.c.object_key == old,
                                                 table.c.offset == bindparam("o")))
                        .values(object_key=new, offset=bindparam("no")))
            moved = 0
            if params and new:
                session.connection().execute(stmt, params)
                moved = session.connection().execute(select(func.count()).where(table.c.object_key == new)).scalar()
            session.connection().execute(insert_for(session)(RetiredPack.__table__).on_conflict_do_nothing()
                                         .values(object_key=old, retired_at=utcnow()))
            audit.record(session, actor, "pack.repacked", subject=old, into=new, moved=moved,
                         bytes=sum(e.length for e in entries))
            return moved

    # the old packs, after their grace -------------------------------------------------
    def remove_retired(self, grace: timedelta, actor: str) -> tuple[int, int]:
        """Delete retired packs older than ``grace`` that no row names; (packs, bytes) freed."""
        from .collect import BlobCollector

        collector = BlobCollector(self.blobs)
        removed = freed = 0
        with self.db.read() as session:
            due = list(session.scalars(select(RetiredPack.object_key)
                                       .where(RetiredPack.retired_at <= utcnow() - grace)))
        for key in due:
            with self.db.write() as session:
                if not collector.pack_referenced(session, key):
                    info = self.storage.head(key)
                    self.storage.delete(key)
                    if info is not None:
                        removed, freed = removed + 1, freed + info.size
                        audit.record(session, actor, "pack.collected", subject=key, size=info.size, retired=True)
                session.connection().execute(delete(RetiredPack.__table__)
                                             .where(RetiredPack.__table__.c.object_key == key))
        return removed, freed


def _then(stream, make):
    yield from stream
    yield from make()
