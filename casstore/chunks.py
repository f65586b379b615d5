"""Chunk rows: what a large file is made of, the claim under row locks, and reading ranges.

A chunked file (chunking.py says which) is a blob row with ``chunker`` set
and, instead of a storage_location, its recipe: blob_chunk rows (offset in
the file -> chunk id), in file order. A chunk row says where its bytes are
(a slice of a chunk pack, ``chunks/<ulid>``, written by the one upload that
brought the chunk) and how many recipe rows name it (``refcount``).

The same discipline as blobs (cas.py, collect.py):

* Every change of a chunk's references happens under its row lock, in the
  transaction that adds or removes the recipe rows. Locks are taken in id
  order, and always after the blob rows of the same transaction (writers and
  gc alike), so two transactions never wait on each other in a circle.
* gc deletes a chunk's slice (and a pack, once no chunk row names it) only
  holding the row lock with the row in 'deleting' and refcount 0.
* So a claim that finds a row 'present' under the lock can trust it; one
  that finds it 'deleting' revives it if the pack is still there (gc then
  leaves it); one that finds it gone or 'missing' records the bytes this
  upload wrote into its own pack, or, if it did not write them (the writer
  skipped a chunk the store held when it streamed by), raises ChunksMissing:
  the request is repeated and then carries the bytes. The writer only skips
  chunks that are 'present' with references, so for gc to take such a chunk
  meanwhile every file holding it must be deleted and collected during the
  upload: rare, and answered by a 409 the client can act on, never a broken file.
* A chunk pack is trusted by a claim only while it was completed less than
  PACK_TRUST ago, and the sweep removes an unnamed one only once older than
  PACK_SWEEP_AGE (packs.py), as for blob packs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import bindparam, delete, func, select, update
from sqlmodel import Session

from .chunking import RecipeEntry
from .db import Database, insert_for
from .errors import ChunksMissing, ObjectMissing, StorageError
from .models import BlobChunk, BlobState, Chunk, utcnow
from .packs import PACK_TRUST, PackedBlob
from .storage import Storage

MAX_CLAIM_ROUNDS = 10
HINT_REFRESH = 64  # a streaming upload's hint session starts a fresh snapshot this often
READ_PAGE = 256  # recipe rows read at a time when serving a range


def _segment_rows():
    """The recipe rows of a file from the chunk holding byte ``pos`` up to byte ``end``, with
    where each chunk lies. Built once: building it per range took 1.2 ms of Python, a sixth of
    a 64 MiB range read from the page cache (SQLite runs it in 0.05 ms)."""
    bc, ch = BlobChunk.__table__, Chunk.__table__
    inner = bc.alias("before")  # its own name: the subquery never correlates with the outer blob_chunk
    first = select(func.max(inner.c.offset)).where(inner.c.blob_sha256 == bindparam("sha"),
                                                   inner.c.offset <= bindparam("pos")).scalar_subquery()
    return (select(bc.c.offset, ch.c.size, ch.c.object_key, ch.c.offset)
            .join(ch, ch.c.id == bc.c.chunk_id)
            .where(bc.c.blob_sha256 == bindparam("sha"), bc.c.offset >= first, bc.c.offset < bindparam("end"))
            .order_by(bc.c.offset).limit(READ_PAGE))


_SEGMENT_ROWS = _segment_rows()
# Asked once per chunk of a file cut here (~850 per GiB): built once, as _SEGMENT_ROWS.
_HELD = select(Chunk.__table__.c.refcount).where(
    Chunk.__table__.c.id == bindparam("id"), Chunk.__table__.c.state == BlobState.PRESENT,
    Chunk.__table__.c.refcount > 0)


@dataclass
class ChunkedBytes:
    """A large file as an upload took it in: its recipe, and the chunks it wrote into its pack."""

    chunker: str
    pack_key: str | None = None
    recipe: list[RecipeEntry] = field(default_factory=list)
    new: dict[str, int] = field(default_factory=dict)  # chunk id -> offset in pack_key
    known: set[str] = field(default_factory=set)  # skipped: the store held them when they went by
    index: list[PackedBlob] = field(default_factory=list)  # the pack's own index, in write order
    pack_size: int = 0

    def sizes(self) -> dict[str, int]:
        return {e.chunk_id: e.size for e in self.recipe}


@dataclass
class ChunkRow:
    id: str
    size: int
    state: str
    refcount: int
    object_key: str
    offset: int


class Hints:
    """Fresh-enough answers while a file streams in: is this chunk held, and where.

    A hint, not a fact: the claim decides under the row lock. One read
    session, restarted every HINT_REFRESH questions so that its snapshot
    stays recent on SQLite.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self._asked = 0

    def _fresh(self) -> Session:
        self._asked += 1
        if self._asked % HINT_REFRESH == 0:
            self.session.rollback()
        return self.session

    def held(self, cid: str) -> bool:
        """'present' with references: only such a chunk may be skipped by a streaming upload."""
        return self._fresh().connection().execute(_HELD, {"id": cid}).first() is not None

    def located(self, ids: list[str]) -> dict[str, tuple[str, int, int]]:
        """Where the 'present' ones of these chunks are: id -> (object key, offset, size)."""
        table, found = Chunk.__table__, {}
        session = self._fresh()
        for i in range(0, len(ids), 500):
            for cid, key, offset, size in session.connection().execute(
                    select(table.c.id, table.c.object_key, table.c.offset, table.c.size)
                    .where(table.c.id.in_(ids[i:i + 500]), table.c.state == BlobState.PRESENT)):
                found[cid] = (key, offset, size)
        return found


class ChunkStore:
    """Chunk rows and recipes on one backend and database."""

    def __init__(self, storage: Storage, db: Database) -> None:
        self.storage = storage
        self.db = db

    @contextmanager
    def hints(self) -> Iterator[Hints]:
        with self.db.read() as session:
            yield Hints(session)

    def missing(self, session: Session, ids: list[str]) -> list[str]:
        """Which of these chunks the store cannot serve (asked of the database, fresh)."""
        present: set[str] = set()
        for i in range(0, len(ids), 500):
            present.update(session.scalars(select(Chunk.id).where(Chunk.id.in_(ids[i:i + 500]),
                                                                  Chunk.state == BlobState.PRESENT)))
        return [c for c in ids if c not in present]

    # rows under locks ---------------------------------------------------------------
    def lock_rows(self, session: Session, ids: Iterable[str]) -> dict[str, ChunkRow]:
        """Lock chunk rows in id order (after any blob rows of the same transaction)."""
        ids, rows, table = sorted(set(ids)), {}, Chunk.__table__
        for i in range(0, len(ids), 500):
            stmt = (select(table.c.id, table.c.size, table.c.state, table.c.refcount, table.c.object_key,
                           table.c.offset).where(table.c.id.in_(ids[i:i + 500])).order_by(table.c.id))
            for row in session.connection().execute(self.db.for_update(stmt)):
                rows[row.id] = ChunkRow(*row)
        return rows

    def add_refs(self, session: Session, counts: dict[str, int]) -> None:
        """Move reference counts (the rows must be locked)."""
        params = [{"c": c, "n": n} for c, n in sorted(counts.items()) if n]
        if params:
            table = Chunk.__table__
            session.connection().execute(update(table).where(table.c.id == bindparam("c"))
                                         .values(refcount=table.c.refcount + bindparam("n")), params)

    def recipe_counts(self, session: Session, blob_sha256: str) -> Counter[str]:
        table = BlobChunk.__table__
        return Counter(dict(session.connection().execute(
            select(table.c.chunk_id, func.count()).where(table.c.blob_sha256 == blob_sha256)
            .group_by(table.c.chunk_id)).all()))

    def drop_recipe(self, session: Session, blob_sha256: str) -> list[str]:
        """Remove a blob's recipe and the references it held (blob row locked by the caller).
        Returns the chunks whose count fell to zero (gc's next candidates)."""
        old = self.recipe_counts(session, blob_sha256)
        if not old:
            return []
        rows = self.lock_rows(session, old)
        table = BlobChunk.__table__
        session.connection().execute(delete(table).where(table.c.blob_sha256 == blob_sha256))
        self.add_refs(session, {c: -n for c, n in old.items()})
        return sorted(c for c, n in old.items() if c in rows and rows[c].refcount == n)

    def claim(self, session: Session, uploads: list[tuple[str, ChunkedBytes]]) -> None:
        """Record the recipes of these chunked files, whose blob rows the caller holds locked and
        records now (new, or taken back from gc or verify): every chunk 'present' under its lock.

        Chunks this upload wrote are recorded in its pack when the store lacks them (or holds
        them only 'deleting' or 'missing'); chunks it skipped must be held: a 'deleting' one
        is taken back if its pack is still there, anything else raises ChunksMissing.
        """
        if not uploads:
            return
        ours: dict[str, tuple[str, int, int]] = {}
        for _sha, c in uploads:
            if c.pack_key is not None and c.new and self._pack_trusted(c.pack_key):
                sizes = c.sizes()
                for cid, off in c.new.items():
                    ours.setdefault(cid, (c.pack_key, off, sizes[cid]))
        old = {sha: self.recipe_counts(session, sha) for sha, _ in uploads}  # revived rows may hold one
        need = sorted({e.chunk_id for _, c in uploads for e in c.recipe} | {cid for o in old.values() for cid in o})
        absent = [cid for cid in need if cid in ours]
        for _ in range(MAX_CLAIM_ROUNDS):
            self._insert(session, [cid for cid in absent if cid in ours], ours)
            rows = self.lock_rows(session, need)
            absent = [cid for cid in need if cid not in rows]
            if not any(cid in ours for cid in absent):
                break
        else:
            raise StorageError("could not hold the chunk rows against concurrent gc; retry the request")
        wanted = {e.chunk_id for _, c in uploads for e in c.recipe}
        gone = [cid for cid in absent if cid in wanted]
        relocate, revive, packs_seen = [], [], {}
        for cid in sorted(wanted - set(absent)):
            row = rows[cid]
            if row.state == BlobState.PRESENT:
                continue
            if cid in ours:
                key, off, _size = ours[cid]
                relocate.append({"c": cid, "k": key, "o": off})
            elif row.state == BlobState.DELETING and self._slice_there(row, packs_seen):
                revive.append({"c": cid, "k": row.object_key, "o": row.offset})
            else:
                gone.append(cid)
        if gone:
            raise ChunksMissing(f"{len(gone)} chunk(s) of this file are not in the store; send them and retry",
                                missing_chunks=sorted(gone)[:10_000])
        if relocate or revive:
            table = Chunk.__table__
            session.connection().execute(
                update(table).where(table.c.id == bindparam("c"))
                .values(state=BlobState.PRESENT, object_key=bindparam("k"), offset=bindparam("o")),
                relocate + revive)
        counts: Counter[str] = Counter()
        table = BlobChunk.__table__
        for sha, c in uploads:
            if old[sha]:
                session.connection().execute(delete(table).where(table.c.blob_sha256 == sha))
                counts.subtract(old[sha])
            counts.update(e.chunk_id for e in c.recipe)
            if c.recipe:
                session.connection().execute(table.insert(), [
                    {"blob_sha256": sha, "offset": e.offset, "chunk_id": e.chunk_id} for e in c.recipe])
        self.add_refs(session, counts)

    def _insert(self, session: Session, ids: list[str], ours: dict[str, tuple[str, int, int]]) -> None:
        if not ids:
            return
        now = utcnow()
        session.connection().execute(insert_for(session)(Chunk.__table__).on_conflict_do_nothing(), [
            dict(id=cid, size=ours[cid][2], refcount=0, state=BlobState.PRESENT, object_key=ours[cid][0],
                 offset=ours[cid][1], created_at=now, verified_at=None) for cid in ids])

    def _pack_trusted(self, key: str) -> bool:
        """Our own pack, completed less than PACK_TRUST ago (the sweep waits twice as long)."""
        info = self.storage.head(key)
        return info is not None and utcnow() - info.last_modified < PACK_TRUST

    def _slice_there(self, row: ChunkRow, seen: dict[str, int | None]) -> bool:
        if row.object_key not in seen:
            info = self.storage.head(row.object_key)
            seen[row.object_key] = None if info is None else info.size
        have = seen[row.object_key]
        return have is not None and have >= row.offset + row.size

    def pack_referenced(self, session: Session, key: str) -> bool:
        """Whether any chunk row still names this chunk pack."""
        table = Chunk.__table__
        return session.connection().execute(
            select(table.c.id).where(table.c.object_key == key).limit(1)).first() is not None

    # reading ---------------------------------------------------------------------------
    def read_located(self, entries: list[tuple[str, tuple[str, int, int]]],
                     lost: list[str]) -> Iterator[bytes]:
        """The bytes of these (chunk id, (object key, offset, size)) slices in order, neighbours
        in one object read with one range request. A slice whose object is gone (gc took the
        chunk after it was located) is added to ``lost`` and the rest is not read."""
        segments: list[list] = []
        for cid, (key, offset, size) in entries:
            if segments and segments[-1][0] == key and segments[-1][2] == offset:
                segments[-1][2] = offset + size
                segments[-1][3].append(cid)
            else:
                segments.append([key, offset, offset + size, [cid]])
        for key, lo, hi, ids in segments:
            if lost:
                return
            try:
                yield from self.storage.get(key, lo, hi)
            except ObjectMissing:
                lost.extend(ids)

    def read(self, blob_sha256: str, start: int, end: int) -> Iterator[bytes]:
        """Stream bytes [start, end) of a chunked file, reading only the chunks that overlap.

        Recipe rows are read READ_PAGE at a time; neighbouring chunks that lie back to
        back in one pack are read with one range request (a file's first upload writes
        its chunks in file order, so most of a file is a few long reads).
        """
        pos = start
        while pos < end:
            segments, pos = self._segments(blob_sha256, pos, end)
            for key, lo, hi in segments:
                yield from self.storage.get(key, lo, hi)

    def _segments(self, sha: str, pos: int, end: int) -> tuple[list[tuple[str, int, int]], int]:
        """The coalesced object ranges for up to READ_PAGE chunks from ``pos``; and where they stop."""
        with self.db.read() as session:  # one query (a third of the time of two, on SQLite)
            rows = session.connection().execute(_SEGMENT_ROWS, {"sha": sha, "pos": pos, "end": end}).all()
        segments: list[list] = []
        for file_off, size, key, obj_off in rows:
            if file_off > pos or file_off + size <= pos:
                raise ObjectMissing(f"the recipe of sha256:{sha} has no chunk at byte {pos}")
            lo = obj_off + (pos - file_off)
            hi = obj_off + min(size, end - file_off)
            if segments and segments[-1][0] == key and segments[-1][2] == lo:
                segments[-1][2] = hi
            else:
                segments.append([key, lo, hi])
            pos = file_off + min(size, end - file_off)
        if not rows:
            raise ObjectMissing(f"the recipe of sha256:{sha} has no chunk at byte {pos}")
        return [tuple(s) for s in segments], pos
