"""Search by checksum: what the store knows about some bytes, and which packages hold them.

The answer comes from the database: the blob row (size, BLAKE3, state) and
the file entries that point at it (indexed by blob), newest package first,
paged by a cursor (package id and path of the last entry given).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import and_, or_, select

from ..db import Database
from ..digests import parse_sha256
from ..errors import InvalidInput, NotFound
from ..models import Blob, FileEntry, Package, PackageStatus


@dataclass
class Holder:
    package_id: str
    path: str
    package_status: str
    run_id: str | None
    media_type: str


@dataclass
class BlobInfo:
    sha256: str
    size: int
    blake3: str
    state: str
    refcount: int
    holders: list[Holder] = field(default_factory=list)
    next_cursor: str | None = None


class BlobInfoService:
    def __init__(self, db: Database) -> None:
        self.db = db

    def lookup(self, sha256: str, *, cursor: str | None = None, limit: int = 100,
               include_deleted: bool = False) -> BlobInfo:
        """The blob with this SHA-256 and up to ``limit`` (package, path) pairs holding it; NotFound if unknown."""
        digest = parse_sha256(sha256)
        with self.db.read() as session:
            blob = session.get(Blob, digest)
            if blob is None:
                raise NotFound(f"the store holds no bytes with sha256:{digest}", sha256=digest)
            stmt = (select(FileEntry.package_id, FileEntry.path, Package.status, Package.run_id, FileEntry.media_type)
                    .join(Package, Package.id == FileEntry.package_id)
                    .where(FileEntry.blob_sha256 == digest))
            if not include_deleted:
                stmt = stmt.where(Package.status != PackageStatus.DELETED)
            if cursor:
                after_package, after_path = _split_cursor(cursor)
                stmt = stmt.where(or_(FileEntry.package_id < after_package,
                                      and_(FileEntry.package_id == after_package, FileEntry.path > after_path)))
            rows = session.execute(stmt.order_by(FileEntry.package_id.desc(), FileEntry.path).limit(limit + 1)).all()
        holders = [Holder(*row) for row in rows[:limit]]
        more = len(rows) > limit
        return BlobInfo(blob.sha256, blob.size, blob.blake3, blob.state, blob.refcount, holders,
                        f"{holders[-1].package_id}/{holders[-1].path}" if more else None)


def _split_cursor(cursor: str) -> tuple[str, str]:
    """A cursor is '<package id>/<path>' (package ids hold no '/')."""
    package_id, sep, path = cursor.partition("/")
    if not sep or not package_id:
        raise InvalidInput("not a cursor this endpoint gave out")
    return package_id, path
