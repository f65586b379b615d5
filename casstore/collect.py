"""Taking bytes out of the store: gc's two-phase collect, the orphan sweep, and undoing a failed upload.

The other half of cas.py, and bound by the same rule: an object is only ever
deleted by someone holding its blob row's lock with the row in 'deleting'
(or, for a pack, when no location names it any more and it is older than
cas.PACK_SWEEP_AGE). So whoever commits a 'present' row after checking its
object under that lock can trust it (docs/design.md walks through the races).
"""

from __future__ import annotations

import logging

from sqlalchemy import delete, select, update
from sqlmodel import Session

from . import auditlog as audit
from . import layout
from .cas import PACK_SWEEP_AGE, BlobStore, StagedBlob
from .db import insert_for
from .models import Blob, BlobState, Chunk, RetiredPack, StorageLocation, utcnow

log = logging.getLogger(__name__)


def retired(session: Session, key: str) -> bool:
    """Whether repacking emptied this pack: it then goes only after its grace (repack.py)."""
    return session.get(RetiredPack, key) is not None


class BlobCollector:
    """Removes blobs, packs and stray objects that nothing live references."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self.db = blobs.db
        self.storage = blobs.storage

    def pack_referenced(self, session: Session, key: str) -> bool:
        """Whether any location (a blob pack) or chunk row (a chunk pack) still names this pack."""
        if layout.is_chunk_pack_key(key):
            return self.blobs.chunks.pack_referenced(session, key)
        table = StorageLocation.__table__
        return session.connection().execute(
            select(table.c.blob_sha256).where(table.c.object_key == key).limit(1)).first() is not None

    def collect(self, sha256: str, actor: str, *, audited: bool = True) -> int | None:
        """Remove a blob's object if no live reference holds it; returns the bytes freed, or None.

        Two transactions, so that a crash between them is safe:
        A) under the row lock, mark the row 'deleting' (inserting one for an
           object no row knows); from then on attach refuses the blob and an
           upload of the same bytes takes the row back;
        B) under the row lock again, if it is still 'deleting' with no
           references, delete the object, then the row. A crash after the
           object is gone leaves a 'deleting' row, which the next collect or
           upload settles.
        A blob in a pack gives up its slice; the pack itself is deleted with
        the last blob it holds (its bytes, so the size returned, come back then).
        """
        table = Blob.__table__
        with self.db.write() as session:
            row = self.blobs.lock_rows(session, [sha256]).get(sha256)
            if row is None:  # an object no row knows: claim it with a 'deleting' row of our own
                info = self.storage.head(layout.blob_key(sha256))
                if info is None:
                    return None
                session.connection().execute(insert_for(session)(table).on_conflict_do_nothing().values(
                    sha256=sha256, size=info.size, blake3="", refcount=0, state=BlobState.DELETING,
                    created_at=utcnow()))
                row = self.blobs.lock_rows(session, [sha256]).get(sha256)  # ours, or a writer's that won the race
            if row is None or row.refcount > 0:
                return None
            if row.state != BlobState.DELETING:
                session.connection().execute(
                    update(table).where(table.c.sha256 == sha256).values(state=BlobState.DELETING))
        with self.db.write() as session:
            row = self.blobs.lock_rows(session, [sha256]).get(sha256)
            if row is None or row.state != BlobState.DELETING or row.refcount != 0:
                return None
            size = row.size
            where = self.blobs.locate(session, sha256)
            if where is not None and where.chunked:  # its chunks lose a reference each; gc collects them next
                self.blobs.chunks.drop_recipe(session, sha256)
                size = 0  # the bytes come back when its chunks go
            session.connection().execute(delete(StorageLocation.__table__)
                                         .where(StorageLocation.__table__.c.blob_sha256 == sha256))
            self.storage.delete(layout.blob_key(sha256))  # its own object (or a stray copy of it)
            session.connection().execute(delete(table).where(table.c.sha256 == sha256))
            if audited:
                audit.record(session, actor, "blob.collected", subject=f"sha256:{sha256}", size=size)
        if where is not None and layout.is_pack_key(where.object_key):
            self.drop_emptied_pack(where.object_key)
        return size

    def drop_emptied_pack(self, key: str) -> None:
        """Delete a committed pack once no location names it (unless retired: its grace decides).

        Asked after the collect's own commit, in a transaction of its own: two
        collects of a pack's last two blobs (gc beside a writer's undo) each see
        the other's location while both are uncommitted under PostgreSQL's read
        committed; asked after the commit, the later of the two sees none. No
        transaction adds a location to a committed pack (only its writer, in the
        commit that recorded it), so an empty committed pack stays empty.
        """
        with self.db.read() as session:
            if self.pack_referenced(session, key) or retired(session, key):
                return
        self.storage.delete(key)

    def undo_place(self, loose: list[StagedBlob], pack_keys: list[str], actor: str,
                   chunk_packs: list[str] = ()) -> None:
        """After a failed commit, take back what an upload put on the backend (best effort).

        Never committed, so nothing to audit: the store is as before the request.
        A loose blob goes through collect (a concurrent upload that claimed the
        same bytes holds a reference, and then it stays); a pack goes when no
        location names it (only the failed transaction could have named it).
        """
        try:
            for staged in loose:
                self.collect(staged.sha256, actor, audited=False)
            for key in [*pack_keys, *chunk_packs]:
                self.drop_unreferenced_pack(key)
        except Exception:  # the original error matters more; gc will find the orphans
            log.warning("could not take back the objects of a failed upload", exc_info=True)

    def drop_unreferenced_pack(self, key: str) -> None:
        """Delete a pack that no location names, written by a writer whose transaction is over
        (committed or not): no other transaction ever records locations in another's pack."""
        with self.db.read() as session:
            if self.pack_referenced(session, key):
                return
        self.storage.delete(key)

    def drop_unnamed_copy(self, sha256: str, key: str) -> None:
        """Remove a loose copy a committed writer placed at ``key`` if no location names it.

        Under the row lock: when a concurrent writer's pack location won the
        claim, the loose copy is named by nothing and goes; when the location is
        this key, it stays. A digest with no row (its writer recorded nothing)
        goes through collect.
        """
        with self.db.write() as session:
            row = self.blobs.lock_rows(session, [sha256]).get(sha256)
            if row is not None:
                where = self.blobs.locate(session, sha256)
                if row.state == BlobState.PRESENT and where is not None and where.object_key != key:
                    self.storage.delete(key)
                return
        self.collect(sha256, "system", audited=False)

    def remove_orphan(self, key: str, actor: str) -> int | None:
        """Remove an object no location names (gc's sweep); returns its size, or None if kept.

        A pack goes only when no location names it and it is older than
        PACK_SWEEP_AGE (an upload may still be about to record it). A blob's own
        key goes through collect when no row knows the digest, or is dropped
        as a stray copy when the row is 'present' and located elsewhere.
        """
        made = layout.any_pack_key_time(key)
        if made is not None:
            if utcnow() - made < PACK_SWEEP_AGE:
                return None
            with self.db.write() as session:
                info = self.storage.head(key)
                if info is None or self.pack_referenced(session, key) or retired(session, key):
                    return None  # a retired pack goes after its grace (repack.py)
                self.storage.delete(key)
                audit.record(session, actor, "pack.collected", subject=key, size=info.size)
                return info.size
        digest = layout.digest_from_blob_key(key)
        if digest is None:
            return None
        with self.db.write() as session:
            row = self.blobs.lock_rows(session, [digest]).get(digest)
            if row is not None:
                where = self.blobs.locate(session, digest)
                if row.state != BlobState.PRESENT or where is None or where.object_key == key:
                    return None  # the row's own copy: only collect() removes that
                info = self.storage.head(key)
                if info is None:
                    return None
                self.storage.delete(key)
                audit.record(session, actor, "blob.stray_copy_removed", subject=f"sha256:{digest}",
                             size=info.size, kept=where.object_key)
                return info.size
        return self.collect(digest, actor)


class ChunkCollector:
    """Removes chunks that no recipe names, by the same two transactions as blobs.

    A) under the chunk row's lock, if refcount = 0, set 'deleting' (a writer that
       meets the row now takes it back if its pack is still there, or records its
       own copy); B) under the lock again, if still 'deleting' with refcount 0,
       delete the row, and the chunk pack once no chunk row names it. A crash
       between A and B leaves a 'deleting' row that the next collect or upload settles.
    Chunk rows are locked alone here (never a blob row after one): no lock cycle with
    writers, which lock blob rows, then chunk rows.
    """

    def __init__(self, blobs: BlobStore) -> None:
        self.chunks = blobs.chunks
        self.db = blobs.db
        self.storage = blobs.storage

    def candidates(self, limit: int | None = None) -> list[str]:
        with self.db.read() as session:
            stmt = select(Chunk.id).where(Chunk.refcount == 0).order_by(Chunk.id)
            return list(session.scalars(stmt.limit(limit) if limit else stmt))

    def collect(self, cid: str, actor: str) -> int | None:
        """Remove a chunk no recipe names; returns the pack bytes freed (0 while its pack
        holds other chunks: repacking reclaims those), or None if it was kept."""
        table = Chunk.__table__
        with self.db.write() as session:
            row = self.chunks.lock_rows(session, [cid]).get(cid)
            if row is None or row.refcount > 0:
                return None
            if row.state != BlobState.DELETING:
                session.connection().execute(update(table).where(table.c.id == cid)
                                             .values(state=BlobState.DELETING))
        with self.db.write() as session:
            row = self.chunks.lock_rows(session, [cid]).get(cid)
            if row is None or row.state != BlobState.DELETING or row.refcount != 0:
                return None
            session.connection().execute(delete(table).where(table.c.id == cid))
            freed = 0
            if not self.chunks.pack_referenced(session, row.object_key) and not retired(session, row.object_key):
                info = self.storage.head(row.object_key)
                self.storage.delete(row.object_key)
                freed = info.size if info is not None else 0
                audit.record(session, actor, "pack.collected", subject=row.object_key, size=freed)
            return freed
