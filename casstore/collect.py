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
from .cas import PACK_SWEEP_AGE, BlobStore, StagedBlob, insert_for
from .models import Blob, BlobState, StorageLocation, utcnow

log = logging.getLogger(__name__)


class BlobCollector:
    """Removes blobs, packs and stray objects that nothing live references."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self.db = blobs.db
        self.storage = blobs.storage

    def pack_referenced(self, session: Session, key: str) -> bool:
        """Whether any location still names this pack."""
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
            session.connection().execute(delete(StorageLocation.__table__)
                                         .where(StorageLocation.__table__.c.blob_sha256 == sha256))
            self.storage.delete(layout.blob_key(sha256))  # its own object (or a stray copy of it)
            if where is not None and layout.is_pack_key(where.object_key) \
                    and not self.pack_referenced(session, where.object_key):
                self.storage.delete(where.object_key)
            session.connection().execute(delete(table).where(table.c.sha256 == sha256))
            if audited:
                audit.record(session, actor, "blob.collected", subject=f"sha256:{sha256}", size=size)
            return size

    def undo_place(self, loose: list[StagedBlob], pack_keys: list[str], actor: str) -> None:
        """After a failed commit, take back what an upload put on the backend (best effort).

        Never committed, so nothing to audit: the store is as before the request.
        A loose blob goes through collect (a concurrent upload that claimed the
        same bytes holds a reference, and then it stays); a pack goes when no
        location names it (only the failed transaction could have named it).
        """
        try:
            for staged in loose:
                self.collect(staged.sha256, actor, audited=False)
            for key in pack_keys:
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
        made = layout.pack_key_time(key)
        if made is not None:
            if utcnow() - made < PACK_SWEEP_AGE:
                return None
            with self.db.write() as session:
                info = self.storage.head(key)
                if info is None or self.pack_referenced(session, key):
                    return None
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
