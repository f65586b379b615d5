"""The content-addressed blob store: blob rows, their locations, and the claim under row locks.

Bytes enter the store through one object, the blob writer (writer.py), which
stages, checks, places and then calls ``claim`` here inside the caller's
write transaction; bytes leave through collect.py. This module is the part
both share: placing one blob at its final key, locking blob rows, recording
where the bytes are, counting references, and reading them back.

``claim``: in the caller's write transaction, under the blob row's lock, make
the row 'present' (inserting it if new) after checking that the object really
is where the row will say, and placing it again if not (gc may have removed it
meanwhile, or a disk may have lost it: the next upload of the same bytes
repairs it). The row, and its storage_location, are recorded last.

Why the check under the lock: gc deletes an object only while holding the
same row lock with the row in state 'deleting' and refcount 0. So whoever
commits a 'present' row after looking at the object under that lock knows
the object is there, whatever ran concurrently (the GitLab registry's
online-gc design; see design/LESSONS.md). A pack is trusted by a claim only
while it is younger than PACK_TRUST (20 min); the orphan sweep removes an
unreferenced pack only once older than PACK_SWEEP_AGE (40 min) and its grace
period: a claim's transaction would have to last 20 minutes for the two to meet.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from sqlalchemy import bindparam, delete, select, update
from sqlmodel import Session

from . import layout
from .chunks import ChunkedBytes, ChunkStore
from .db import Database, insert_for
from .digests import Digests
from .errors import ObjectMissing, StorageError
from .models import Blob, BlobState, StorageLocation, utcnow
from .packs import PACK_SWEEP_AGE, PACK_TRUST  # noqa: F401 (re-exported: the trust windows live with packs)
from .storage import Storage

SMALL_BLOB = 1 << 20  # bodies up to this size stay in memory and go into packs
MAX_CLAIM_ROUNDS = 10


@dataclass
class BlobRow:
    """A locked blob row, as the write path needs it (plain tuple-like, no ORM)."""

    sha256: str
    size: int
    state: str
    refcount: int
    inserted: bool = False  # this transaction made the row (with the references it was given)
    located: bool = False  # this transaction recorded the blob's location (the staged bytes are where it says)


@dataclass
class StagedBlob:
    """Bytes whose digests are known, waiting to be claimed."""

    digests: Digests
    staging_key: str | None = None  # large blobs: where the bytes wait
    data: bytes | None = None  # small blobs: the bytes themselves
    object_key: str | None = None  # once placed: its own key, or a pack's
    offset: int = 0  # where in that object it starts
    chunked: ChunkedBytes | None = None  # a large file taken in as chunks (chunks.py): its recipe
    held_bytes: int = 0  # once claimed: how many of its bytes the store already held (deduplicated)

    @property
    def sha256(self) -> str:
        return self.digests.sha256

    @property
    def size(self) -> int:
        return self.digests.size


@dataclass(frozen=True)
class Location:
    """Where a blob's bytes are: a whole object, a slice of a pack, or (``chunked``) the
    chunks its recipe lists (``sha256`` then names the blob; ``object_key`` is empty)."""

    object_key: str
    offset: int
    length: int
    chunked: bool = False
    sha256: str = ""

    @classmethod
    def of_recipe(cls, sha256: str, size: int) -> "Location":
        return cls("", 0, size, chunked=True, sha256=sha256)


class BlobStore:
    """Blobs on a storage backend, and their rows in the registry."""

    def __init__(self, storage: Storage, db: Database) -> None:
        self.storage = storage
        self.db = db
        self.chunks = ChunkStore(storage, db)

    # placing one blob -----------------------------------------------------------
    def place(self, staged: StagedBlob) -> bool:
        """Put the bytes at their final key unless something is there already; True if we put them."""
        final = layout.blob_key(staged.sha256)
        staged.object_key, staged.offset = final, 0
        if staged.data is not None:
            return self.storage.put_if_absent(final, staged.data)
        return self.storage.copy_if_absent(staged.staging_key, final)

    def present(self, digests: Iterable[str]) -> set[str]:
        """Which of these digests have a 'present' row (a hint: only a lock makes it a fact)."""
        with self.db.read() as session:
            wanted = sorted(digests)
            return set(wanted) - set(self.missing(session, wanted))

    def _ensure_placed(self, staged: StagedBlob, packs_seen: dict[str, bool]) -> None:
        """Under the row lock: make sure the bytes are where the row will say they are."""
        key = staged.object_key
        if key is not None and layout.is_pack_key(key):
            trusted = packs_seen.get(key)
            if trusted is None:
                made = layout.pack_key_time(key)
                trusted = packs_seen[key] = (made is not None and utcnow() - made < PACK_TRUST
                                             and self.storage.head(key) is not None)
            if trusted:
                return
        final = layout.blob_key(staged.sha256)
        staged.object_key, staged.offset = final, 0
        info = self.storage.head(final)
        if info is not None and info.size == staged.size:
            return
        if info is not None:
            # Wrong size at a content key: damaged. Replace it with the bytes we hold.
            self.storage.delete(final)
        self.place(staged)
        info = self.storage.head(final)
        if info is None or info.size != staged.size:
            raise ObjectMissing(f"could not place blob sha256:{staged.sha256}")

    # claim (inside the caller's write transaction) ------------------------------
    def claim(self, session: Session, staged: list[StagedBlob], also_lock: Iterable[str] = (),
              refs: dict[str, int] | None = None) -> dict[str, BlobRow]:
        """Record every staged blob as 'present', under row locks, after checking its object.

        ``also_lock`` names other blob rows the caller will change (for example
        the old blobs of replaced entries): all rows are locked in one pass in
        digest order, so two transactions can never wait on each other.
        Only rows that were not 'present' (new, or claimed by gc) need their
        object checked: a 'present' row's object was checked under this same
        lock by whoever made it present, and gc cannot remove it without first
        taking the row to 'deleting'. A row this transaction inserts starts
        with ``refs[digest]`` references (saving an UPDATE per new blob; such
        rows come back with ``inserted``). Returns every locked row by digest.
        """
        by_digest = {s.sha256: s for s in staged}
        wanted = sorted(set(by_digest) | set(also_lock))
        new: set[str] = set()
        absent = sorted(by_digest)
        for _ in range(MAX_CLAIM_ROUNDS):
            # Between our insert (which found a row) and our lock, a concurrent gc may have removed
            # that row (PostgreSQL, read committed): insert what is absent again until all are held.
            new |= self._insert_missing_rows(session, [by_digest[d] for d in absent], refs or {})
            rows = self.lock_rows(session, wanted)
            absent = [d for d in sorted(by_digest) if d not in rows]
            if not absent:
                break
        else:
            raise StorageError("could not hold the blob rows against concurrent gc; retry the request")
        for d in new:
            rows[d].inserted = True
        revived, placed, chunked, packs_seen = [], [], [], {}
        for row in rows.values():
            blob = by_digest.get(row.sha256)
            if blob is None or (row.state == BlobState.PRESENT and row.sha256 not in new):
                continue
            if row.state != BlobState.PRESENT and row.sha256 not in new:
                self._forget_old_bytes(session, blob, row.state)
            if blob.chunked is not None:
                chunked.append((blob.sha256, blob.chunked))
            else:
                self._ensure_placed(blob, packs_seen)
                placed.append(blob)
            rows[row.sha256].located = True
            if row.state != BlobState.PRESENT:  # taken back from gc, or repaired after verify
                revived.append({"d": blob.sha256, "size": blob.size, "b3": blob.digests.blake3,
                                "ck": blob.chunked.chunker if blob.chunked else None})
                rows[row.sha256] = BlobRow(row.sha256, blob.size, BlobState.PRESENT, row.refcount,
                                           row.inserted, located=True)
        if revived:
            table = Blob.__table__
            session.connection().execute(
                update(table).where(table.c.sha256 == bindparam("d"))
                .values(state=BlobState.PRESENT, size=bindparam("size"), blake3=bindparam("b3"),
                        chunker=bindparam("ck"), created_at=utcnow()),
                revived)
        self._record_locations(session, placed)
        self.chunks.claim(session, chunked)
        return rows

    def _forget_old_bytes(self, session: Session, blob: StagedBlob, state: str) -> None:
        """A row taken back from gc or verify, about to be recorded anew from these bytes: drop
        what it said before (row locked, not 'present': nobody relies on it). A recipe goes with
        its references; a whole object at the blob's key is replaced (it may be damaged)."""
        if blob.chunked is not None:
            table = StorageLocation.__table__
            session.connection().execute(delete(table).where(table.c.blob_sha256 == blob.sha256))
            self.storage.delete(layout.blob_key(blob.sha256))
        else:
            self.chunks.drop_recipe(session, blob.sha256)
            if state == BlobState.MISSING:  # verify found it lost or damaged: these bytes replace it
                self.storage.delete(layout.blob_key(blob.sha256))

    def _insert_missing_rows(self, session: Session, staged: list[StagedBlob], refs: dict[str, int]) -> set[str]:
        """Insert rows for blobs the registry has never seen; returns the digests inserted."""
        if not staged:
            return set()
        insert = insert_for(session)
        now = utcnow()
        conn = session.connection()
        inserted = conn.execute(
            insert(Blob.__table__).on_conflict_do_nothing().returning(Blob.__table__.c.sha256),
            [dict(sha256=s.sha256, size=s.size, blake3=s.digests.blake3, refcount=refs.get(s.sha256, 0),
                  state=BlobState.PRESENT, chunker=s.chunked.chunker if s.chunked else None,
                  created_at=now, verified_at=None) for s in staged]).scalars().all()
        return set(inserted)

    def _record_locations(self, session: Session, staged: list[StagedBlob]) -> None:
        """Where each blob's bytes now are (replacing what a lost or collected copy said);
        the blob rows must be held (locked) already."""
        if not staged:
            return
        table = StorageLocation.__table__
        stmt = insert_for(session)(table)
        stmt = stmt.on_conflict_do_update(index_elements=[table.c.blob_sha256], set_={
            "backend": stmt.excluded.backend, "object_key": stmt.excluded.object_key,
            "offset": stmt.excluded.offset, "length": stmt.excluded.length})
        session.connection().execute(stmt, [
            dict(blob_sha256=s.sha256, backend=self.storage.backend, object_key=s.object_key,
                 offset=s.offset, length=s.size) for s in staged])

    def locate(self, session: Session, sha256: str) -> Location | None:
        """Where a blob's bytes are recorded to be (a chunked blob: its recipe)."""
        table = StorageLocation.__table__
        row = session.connection().execute(select(table.c.object_key, table.c.offset, table.c.length)
                                           .where(table.c.blob_sha256 == sha256)).first()
        if row:
            return Location(*row)
        blob = Blob.__table__
        chunked = session.connection().execute(select(blob.c.size).where(
            blob.c.sha256 == sha256, blob.c.chunker.is_not(None))).first()
        return Location.of_recipe(sha256, chunked[0]) if chunked else None

    def lock_rows(self, session: Session, digests: list[str]) -> dict[str, BlobRow]:
        """Lock blob rows in digest order (a fixed order: no deadlocks between batches)."""
        rows: dict[str, BlobRow] = {}
        table = Blob.__table__
        for i in range(0, len(digests), 500):
            stmt = (select(table.c.sha256, table.c.size, table.c.state, table.c.refcount)
                    .where(table.c.sha256.in_(digests[i:i + 500])).order_by(table.c.sha256))
            for row in session.connection().execute(self.db.for_update(stmt)):
                rows[row.sha256] = BlobRow(*row)
        return rows

    def add_refs(self, session: Session, counts: dict[str, int]) -> None:
        """Change reference counts by the given amounts (rows must already be locked)."""
        params = [{"d": d, "n": n} for d, n in sorted(counts.items()) if n]
        if params:
            stmt = (update(Blob.__table__).where(Blob.__table__.c.sha256 == bindparam("d"))
                    .values(refcount=Blob.__table__.c.refcount + bindparam("n")))
            session.connection().execute(stmt, params)

    # reading -----------------------------------------------------------------------
    def missing(self, session: Session, digests: list[str]) -> list[str]:
        """Which of these digests the store cannot serve: asked of the database, fresh, every time."""
        present: set[str] = set()
        for i in range(0, len(digests), 500):
            chunk = digests[i:i + 500]
            present.update(session.scalars(
                select(Blob.sha256).where(Blob.sha256.in_(chunk), Blob.state == BlobState.PRESENT)))
        return [d for d in digests if d not in present]

    def open(self, sha256: str, start: int | None = None, end: int | None = None) -> Iterator[bytes]:
        """Stream a blob's bytes, or the range [start, end)."""
        with self.db.read() as session:
            where = self.locate(session, sha256)
        if where is None:
            raise ObjectMissing(f"no location recorded for sha256:{sha256}")
        return self.read(where, start, end)

    def read(self, where: Location, start: int | None = None, end: int | None = None) -> Iterator[bytes]:
        """Stream the bytes at a location, or its range [start, end)."""
        start = start or 0
        end = where.length if end is None else min(end, where.length)
        if where.chunked:
            return self.chunks.read(where.sha256, start, end)
        if where.offset == 0 and start == 0 and not layout.is_pack_key(where.object_key):
            return self.storage.get(where.object_key, None, None if end == where.length else end)
        return self.storage.get(where.object_key, where.offset + start, where.offset + end)
