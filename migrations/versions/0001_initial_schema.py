"""initial schema: packages, file entries, blobs, retention, audit

Besides the tables: the five retention classes and guide-board's default
class are seeded; triggers make expires_at extend-only and the event tables
append-only, so those rules hold even for SQL typed by hand.

Revision ID: 0001
Revises: 
Create Date: 2026-11-25 09:23:24.815141
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
from datetime import datetime, timezone


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_event',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('actor', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('package_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
    sa.Column('subject', sa.Text(), nullable=True),
    sa.Column('details', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.create_index('ix_audit_event_action', ['action'], unique=False)
        batch_op.create_index('ix_audit_event_actor', ['actor'], unique=False)
        batch_op.create_index('ix_audit_event_at', ['at'], unique=False)
        batch_op.create_index('ix_audit_event_package_id', ['package_id'], unique=False)

    op.create_table('blob',
    sa.Column('sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('blake3', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('refcount', sa.BigInteger(), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('verified_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.CheckConstraint("state IN ('present', 'deleting', 'missing')", name='ck_blob_state'),
    sa.CheckConstraint('refcount >= 0', name='ck_blob_refcount_nonnegative'),
    sa.PrimaryKeyConstraint('sha256')
    )
    with op.batch_alter_table('blob', schema=None) as batch_op:
        batch_op.create_index('ix_blob_refcount_state', ['refcount', 'state'], unique=False)
        batch_op.create_index('ix_blob_verified_at', ['verified_at'], unique=False)

    op.create_table('lease',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('holder', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('retention_class',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('days', sa.Integer(), nullable=True),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('package',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('producer', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('run_id', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=True),
    sa.Column('target_profile', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=True),
    sa.Column('assessment_profile', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=True),
    sa.Column('retention_class', sa.String(length=64), nullable=False),
    sa.Column('expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('finalized_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('deleted_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('file_count', sa.BigInteger(), nullable=False),
    sa.Column('total_bytes', sa.BigInteger(), nullable=False),
    sa.Column('manifest_digest', sqlmodel.sql.sqltypes.AutoString(length=71), nullable=True),
    sa.Column('metadata', sa.JSON(), nullable=False),
    sa.CheckConstraint("status IN ('created', 'uploading', 'finalized', 'failed', 'deleted')", name='ck_package_status'),
    sa.ForeignKeyConstraint(['retention_class'], ['retention_class.name'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('package', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_package_assessment_profile'), ['assessment_profile'], unique=False)
        batch_op.create_index(batch_op.f('ix_package_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index('ix_package_producer', ['producer'], unique=False)
        batch_op.create_index(batch_op.f('ix_package_run_id'), ['run_id'], unique=False)
        batch_op.create_index('ix_package_status', ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_package_target_profile'), ['target_profile'], unique=False)
        batch_op.create_index('uq_package_live_run', ['producer', 'run_id'], unique=True, sqlite_where=sa.text("run_id IS NOT NULL AND status <> 'deleted' AND status <> 'failed'"), postgresql_where=sa.text("run_id IS NOT NULL AND status <> 'deleted' AND status <> 'failed'"))

    op.create_table('producer',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('default_retention_class', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['default_retention_class'], ['retention_class.name'], ),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('storage_location',
    sa.Column('blob_sha256', sa.String(length=64), nullable=False),
    sa.Column('backend', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('object_key', sa.Text(), nullable=False),
    sa.Column('offset', sa.BigInteger(), nullable=False),
    sa.Column('length', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['blob_sha256'], ['blob.sha256'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('blob_sha256')
    )
    op.create_table('file_entry',
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('media_type', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('package_id', sa.String(length=40), nullable=False),
    sa.Column('blob_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['blob_sha256'], ['blob.sha256'], ),
    sa.ForeignKeyConstraint(['package_id'], ['package.id'], ),
    sa.PrimaryKeyConstraint('package_id', 'path', name='pk_file_entry')
    )
    with op.batch_alter_table('file_entry', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_file_entry_blob_sha256'), ['blob_sha256'], unique=False)

    op.create_table('hold',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('placed_by', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
    sa.Column('placed_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('released_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('released_by', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=True),
    sa.Column('release_reason', sa.Text(), nullable=True),
    sa.Column('package_id', sa.String(length=40), nullable=False),
    sa.ForeignKeyConstraint(['package_id'], ['package.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('hold', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_hold_package_id'), ['package_id'], unique=False)

    op.create_table('retention_event',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('package_id', sa.String(length=40), nullable=False),
    sa.Column('at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('actor', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('before', sa.JSON(), nullable=True),
    sa.Column('after', sa.JSON(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['package_id'], ['package.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('retention_event', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_retention_event_package_id'), ['package_id'], unique=False)

    _seed()
    _triggers()


RETENTION_CLASSES = [
    ("transient", 7, "Scratch output; kept a week."),
    ("raw-evidence", 90, "Raw logs and captures of a run; kept for review."),
    ("summary-evidence", 365, "Scorecards and reviews; kept a year."),
    ("release-evidence", 7 * 365, "Evidence behind a release decision; kept seven years."),
    ("permanent-record", None, "Never expires."),
]


def _seed() -> None:
    now = datetime.now(timezone.utc)
    classes = sa.table("retention_class", sa.column("name"), sa.column("days"),
                       sa.column("description"), sa.column("updated_at", sa.DateTime(timezone=True)))
    op.bulk_insert(classes, [{"name": n, "days": d, "description": t, "updated_at": now}
                             for n, d, t in RETENTION_CLASSES])
    producers = sa.table("producer", sa.column("name"), sa.column("default_retention_class"))
    op.bulk_insert(producers, [{"name": "guide-board", "default_retention_class": "raw-evidence"}])


def _triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("""
            CREATE FUNCTION package_expiry_extend_only() RETURNS trigger AS $$
            BEGIN
              IF (OLD.expires_at IS NULL AND NEW.expires_at IS NOT NULL)
                 OR NEW.expires_at < OLD.expires_at THEN
                RAISE EXCEPTION 'expires_at can only be extended' USING ERRCODE = 'check_violation';
              END IF;
              RETURN NEW;
            END $$ LANGUAGE plpgsql""")
        op.execute("""CREATE TRIGGER package_expiry_extend_only BEFORE UPDATE OF expires_at ON package
                      FOR EACH ROW EXECUTE FUNCTION package_expiry_extend_only()""")
        op.execute("""
            CREATE FUNCTION append_only() RETURNS trigger AS $$
            BEGIN
              RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'check_violation';
            END $$ LANGUAGE plpgsql""")
        for table in APPEND_ONLY:
            op.execute(f"""CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}
                           FOR EACH ROW EXECUTE FUNCTION append_only()""")
    else:
        op.execute("""
            CREATE TRIGGER package_expiry_extend_only BEFORE UPDATE OF expires_at ON package
            WHEN (OLD.expires_at IS NULL AND NEW.expires_at IS NOT NULL) OR NEW.expires_at < OLD.expires_at
            BEGIN SELECT RAISE(ABORT, 'expires_at can only be extended'); END""")
        for table in APPEND_ONLY:
            for verb in ("UPDATE", "DELETE"):
                op.execute(f"""CREATE TRIGGER {table}_append_only_{verb.lower()} BEFORE {verb} ON {table}
                               BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END""")


APPEND_ONLY = ("audit_event", "retention_event")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS package_expiry_extend_only ON package")
        op.execute("DROP FUNCTION IF EXISTS package_expiry_extend_only()")
        for table in APPEND_ONLY:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
        op.execute("DROP FUNCTION IF EXISTS append_only()")
    with op.batch_alter_table('retention_event', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_retention_event_package_id'))

    op.drop_table('retention_event')
    with op.batch_alter_table('hold', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_hold_package_id'))

    op.drop_table('hold')
    with op.batch_alter_table('file_entry', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_file_entry_blob_sha256'))

    op.drop_table('file_entry')
    op.drop_table('storage_location')
    op.drop_table('producer')
    with op.batch_alter_table('package', schema=None) as batch_op:
        batch_op.drop_index('uq_package_live_run', sqlite_where=sa.text("run_id IS NOT NULL AND status <> 'deleted' AND status <> 'failed'"), postgresql_where=sa.text("run_id IS NOT NULL AND status <> 'deleted' AND status <> 'failed'"))
        batch_op.drop_index(batch_op.f('ix_package_target_profile'))
        batch_op.drop_index('ix_package_status')
        batch_op.drop_index(batch_op.f('ix_package_run_id'))
        batch_op.drop_index('ix_package_producer')
        batch_op.drop_index(batch_op.f('ix_package_expires_at'))
        batch_op.drop_index(batch_op.f('ix_package_assessment_profile'))

    op.drop_table('package')
    op.drop_table('retention_class')
    op.drop_table('lease')
    with op.batch_alter_table('blob', schema=None) as batch_op:
        batch_op.drop_index('ix_blob_verified_at')
        batch_op.drop_index('ix_blob_refcount_state')

    op.drop_table('blob')
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_event_package_id')
        batch_op.drop_index('ix_audit_event_at')
        batch_op.drop_index('ix_audit_event_actor')
        batch_op.drop_index('ix_audit_event_action')

    op.drop_table('audit_event')
