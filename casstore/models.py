"""The registry's tables (SQLModel), created only by the Alembic migrations.

Each table has a Base (its plain fields, reusable as a data shape) and the
table class itself. Times are aware UTC datetimes (SQLModel's UTCDateTime stores
them without offset on SQLite and as timestamptz on PostgreSQL).

Reference counting: ``Blob.refcount`` is the number of live file entries
(entries of packages that are not deleted) that point at the blob, plus the
packages whose manifest is that blob. It changes only in the transaction that
adds or removes such a reference, under the blob row's lock.
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import StrEnum

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Text,
    text,
)
from sqlmodel import Field, SQLModel


class PackageStatus(StrEnum):
    """A package's lifecycle: created -> uploading -> finalized (immutable) -> deleted (a tombstone);
    or failed. Stored as its value."""

    CREATED = "created"
    UPLOADING = "uploading"
    FINALIZED = "finalized"
    FAILED = "failed"
    DELETED = "deleted"

    @property
    def is_open(self) -> bool:
        """Whether the package may still receive files."""
        return self in (PackageStatus.CREATED, PackageStatus.UPLOADING)


# The states in which a package holds its run_id (a second package for the run is refused).
RUN_HOLDING = tuple(s for s in PackageStatus if s not in (PackageStatus.DELETED, PackageStatus.FAILED))


class BlobState(StrEnum):
    """A blob row's state. present: the bytes are on the backend where storage_location says;
    deleting: gc is taking them out (an upload of the same bytes takes the row back); missing:
    verify found them lost or damaged (the next upload of the same bytes repairs them)."""

    PRESENT = "present"
    DELETING = "deleting"
    MISSING = "missing"



class Role(StrEnum):
    """What a token may do (api/auth.py holds the table of which endpoint needs which)."""

    READER = "reader"  # every GET/HEAD of the API
    PRODUCER = "producer"  # reader, plus writing packages of the producer names the token carries
    OPERATOR = "operator"  # everything
    METRICS = "metrics"  # only GET /metrics: a scrape token that can read nothing else


def utcnow() -> datetime:
    """Now, in UTC (SQLModel stores aware datetimes and returns them in UTC)."""
    return datetime.now(timezone.utc)


class RetentionClassBase(SQLModel):
    name: str = Field(primary_key=True, max_length=64)
    days: int | None = Field(default=None, description="None keeps forever")
    description: str = Field(default="", sa_type=Text)


class RetentionClass(RetentionClassBase, table=True):
    __tablename__ = "retention_class"
    updated_at: datetime = Field(default_factory=utcnow)


class ProducerBase(SQLModel):
    name: str = Field(primary_key=True, max_length=128)
    default_retention_class: str = Field(
        sa_column=Column(String(64), ForeignKey("retention_class.name"), nullable=False))


class Producer(ProducerBase, table=True):
    __tablename__ = "producer"


class PackageBase(SQLModel):
    id: str = Field(primary_key=True, max_length=40)
    producer: str = Field(max_length=128)
    status: str = Field(default=PackageStatus.CREATED, max_length=16)
    run_id: str | None = Field(default=None, max_length=256, index=True)
    target_profile: str | None = Field(default=None, max_length=256, index=True)
    assessment_profile: str | None = Field(default=None, max_length=256, index=True)
    retention_class: str = Field(sa_column=Column(String(64), ForeignKey("retention_class.name"), nullable=False))
    expires_at: datetime | None = Field(default=None, index=True)
    created_at: datetime = Field(default_factory=utcnow)
    finalized_at: datetime | None = None
    deleted_at: datetime | None = None
    file_count: int = Field(default=0, sa_type=BigInteger)
    total_bytes: int = Field(default=0, sa_type=BigInteger)
    manifest_digest: str | None = Field(default=None, max_length=71)


class Package(PackageBase, table=True):
    __tablename__ = "package"
    __table_args__ = (
        Index("ix_package_status", "status"),
        CheckConstraint("status IN ('created', 'uploading', 'finalized', 'failed', 'deleted')",
                        name="ck_package_status"),
        Index("ix_package_producer", "producer"),
        # One live package per (producer, run_id): the idempotency key of ingestion.
        Index("uq_package_live_run", "producer", "run_id", unique=True,
              sqlite_where=text("run_id IS NOT NULL AND status <> 'deleted' AND status <> 'failed'"),
              postgresql_where=text("run_id IS NOT NULL AND status <> 'deleted' AND status <> 'failed'")),
    )
    producer_metadata: dict = Field(default_factory=dict, sa_column=Column("metadata", JSON, nullable=False))


class BlobBase(SQLModel):
    sha256: str = Field(primary_key=True, min_length=64, max_length=64)
    size: int = Field(sa_type=BigInteger)
    blake3: str = Field(max_length=64)


class Blob(BlobBase, table=True):
    __tablename__ = "blob"
    __table_args__ = (Index("ix_blob_refcount_state", "refcount", "state"),
                      Index("ix_blob_verified_at", "verified_at"),
                      CheckConstraint("refcount >= 0", name="ck_blob_refcount_nonnegative"),
                      CheckConstraint("state IN ('present', 'deleting', 'missing')", name="ck_blob_state"))
    refcount: int = Field(default=0, sa_type=BigInteger)
    state: str = Field(default=BlobState.PRESENT, max_length=16)
    created_at: datetime = Field(default_factory=utcnow)
    verified_at: datetime | None = None
    # Set for a file stored as its ordered list of chunks (blob_chunk rows): the chunker's name,
    # which pins its settings (chunking.CHUNKER); NULL for a blob stored whole (storage_location).
    chunker: str | None = Field(default=None, max_length=64)


class Chunk(SQLModel, table=True):
    """A content-defined chunk of large files, stored once: its bytes are a slice of a chunk pack.

    ``id`` is the BLAKE3 derive-key id of its bytes (chunking.chunk_id), never a file digest.
    ``refcount`` = the blob_chunk rows naming it (a chunk twice in one file counts twice); it
    changes only under this row's lock, like a blob's. ``state`` is a BlobState.
    """

    __tablename__ = "chunk"
    __table_args__ = (Index("ix_chunk_refcount_state", "refcount", "state"),
                      Index("ix_chunk_object_key", "object_key"),
                      Index("ix_chunk_verified_at", "verified_at"),
                      CheckConstraint("refcount >= 0", name="ck_chunk_refcount_nonnegative"),
                      CheckConstraint("state IN ('present', 'deleting', 'missing')", name="ck_chunk_state"))
    id: str = Field(primary_key=True, min_length=64, max_length=64)
    size: int = Field(sa_type=BigInteger)
    refcount: int = Field(default=0, sa_type=BigInteger)
    state: str = Field(default=BlobState.PRESENT, max_length=16)
    object_key: str = Field(sa_type=Text)
    offset: int = Field(default=0, sa_type=BigInteger)
    created_at: datetime = Field(default_factory=utcnow)
    verified_at: datetime | None = None


class BlobChunk(SQLModel, table=True):
    """A chunked file's recipe: the chunk at each offset, in file order (the key orders them)."""

    __tablename__ = "blob_chunk"
    __table_args__ = (PrimaryKeyConstraint("blob_sha256", "offset", name="pk_blob_chunk"),)
    blob_sha256: str = Field(sa_column=Column(String(64), ForeignKey("blob.sha256"), nullable=False))
    offset: int = Field(sa_type=BigInteger)
    chunk_id: str = Field(sa_column=Column(String(64), ForeignKey("chunk.id"), nullable=False, index=True))


class RetiredPack(SQLModel, table=True):
    """A pack that repacking emptied: deleted by gc once retired longer than its grace
    (a read that located an entry in it just before the move still finds it)."""

    __tablename__ = "retired_pack"
    object_key: str = Field(sa_type=Text, primary_key=True)
    retired_at: datetime = Field(default_factory=utcnow)


class StorageLocation(SQLModel, table=True):
    """Where a blob's bytes are: its own object (offset 0), or a slice of a pack (packs.py)."""

    __tablename__ = "storage_location"
    __table_args__ = (Index("ix_storage_location_object_key", "object_key"),)
    blob_sha256: str = Field(sa_column=Column(String(64), ForeignKey("blob.sha256", ondelete="CASCADE"),
                                              primary_key=True))
    backend: str = Field(max_length=32)
    object_key: str = Field(sa_type=Text)
    offset: int = Field(default=0, sa_type=BigInteger)
    length: int = Field(sa_type=BigInteger)


class FileEntryBase(SQLModel):
    path: str = Field(sa_type=Text)
    size: int = Field(sa_type=BigInteger)
    media_type: str = Field(max_length=255)


class FileEntry(FileEntryBase, table=True):
    __tablename__ = "file_entry"
    # (package_id, path) so that a package's files are one index range, in path order.
    __table_args__ = (PrimaryKeyConstraint("package_id", "path", name="pk_file_entry"),)
    package_id: str = Field(sa_column=Column(String(40), ForeignKey("package.id"), nullable=False))
    blob_sha256: str = Field(sa_column=Column(String(64), ForeignKey("blob.sha256"), nullable=False, index=True))
    created_at: datetime = Field(default_factory=utcnow)


class HoldBase(SQLModel):
    id: str = Field(primary_key=True, max_length=40)
    reason: str = Field(sa_type=Text)
    placed_by: str = Field(max_length=256)
    placed_at: datetime = Field(default_factory=utcnow)
    released_at: datetime | None = None
    released_by: str | None = Field(default=None, max_length=256)
    release_reason: str | None = Field(default=None, sa_type=Text)


class Hold(HoldBase, table=True):
    __tablename__ = "hold"
    package_id: str = Field(sa_column=Column(String(40), ForeignKey("package.id"), nullable=False, index=True))


class RetentionEvent(SQLModel, table=True):
    """Append-only: every change of a package's retention (class, expiry, holds)."""

    __tablename__ = "retention_event"
    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    package_id: str = Field(sa_column=Column(String(40), ForeignKey("package.id"), nullable=False, index=True))
    at: datetime = Field(default_factory=utcnow)
    actor: str = Field(max_length=256)
    kind: str = Field(max_length=32)
    before: dict | None = Field(default=None, sa_column=Column(JSON))
    after: dict | None = Field(default=None, sa_column=Column(JSON))
    reason: str = Field(default="", sa_type=Text)


class AuditEvent(SQLModel, table=True):
    """Append-only: every state change, written in the transaction that made it."""

    __tablename__ = "audit_event"
    __table_args__ = (Index("ix_audit_event_package_id", "package_id"),
                      Index("ix_audit_event_at", "at"),
                      Index("ix_audit_event_actor", "actor"),
                      Index("ix_audit_event_action", "action"))
    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    at: datetime = Field(default_factory=utcnow)
    actor: str = Field(max_length=256)
    action: str = Field(max_length=64)
    package_id: str | None = Field(default=None, max_length=40)
    subject: str | None = Field(default=None, sa_type=Text)
    details: dict | None = Field(default=None, sa_column=Column(JSON))


class Lease(SQLModel, table=True):
    """A named lock for background work (gc, verify) that expires if its holder dies."""

    __tablename__ = "lease"
    name: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=128)
    expires_at: datetime


class Token(SQLModel, table=True):
    """An API bearer token. Only the SHA-256 of its secret is kept: the secret itself is shown once.

    A fast hash is right here: the secret is 256 random bits, so there is
    nothing for a slow hash to protect against; the hash is the lookup key.
    """

    __tablename__ = "api_token"
    __table_args__ = (Index("uq_api_token_secret_sha256", "secret_sha256", unique=True),
                      Index("ix_api_token_name", "name"),
                      CheckConstraint("role IN ('reader', 'producer', 'operator', 'metrics')",
                                      name="ck_api_token_role"))
    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=64)
    role: str = Field(max_length=16)
    producers: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    secret_sha256: str = Field(min_length=64, max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    created_by: str = Field(max_length=256)
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    revoked_by: str | None = Field(default=None, max_length=256)
