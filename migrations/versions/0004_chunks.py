"""chunks: large files as ordered lists of content-defined chunks (issue 14)

A file above chunking.THRESHOLD is stored as a recipe (blob_chunk: offset ->
chunk id) over chunk rows, each a slice of a chunk pack (chunks/<ulid>);
blob.chunker pins the chunker's settings per file. retired_pack lists packs
that repacking emptied, deleted by gc after a grace.

NOTE for the merge: written against 0002; another branch adds 0003 (tokens).
Set down_revision to the last of the chain when merging.

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-01 08:00:00
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0004'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('chunk',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('refcount', sa.BigInteger(), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('object_key', sa.Text(), nullable=False),
    sa.Column('offset', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('verified_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.CheckConstraint("state IN ('present', 'deleting', 'missing')", name='ck_chunk_state'),
    sa.CheckConstraint('refcount >= 0', name='ck_chunk_refcount_nonnegative'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('chunk', schema=None) as batch_op:
        batch_op.create_index('ix_chunk_object_key', ['object_key'], unique=False)
        batch_op.create_index('ix_chunk_refcount_state', ['refcount', 'state'], unique=False)
        batch_op.create_index('ix_chunk_verified_at', ['verified_at'], unique=False)

    op.create_table('blob_chunk',
    sa.Column('offset', sa.BigInteger(), nullable=False),
    sa.Column('blob_sha256', sa.String(length=64), nullable=False),
    sa.Column('chunk_id', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['blob_sha256'], ['blob.sha256'], ),
    sa.ForeignKeyConstraint(['chunk_id'], ['chunk.id'], ),
    sa.PrimaryKeyConstraint('blob_sha256', 'offset', name='pk_blob_chunk')
    )
    with op.batch_alter_table('blob_chunk', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_blob_chunk_chunk_id'), ['chunk_id'], unique=False)

    op.create_table('retired_pack',
    sa.Column('object_key', sa.Text(), nullable=False),
    sa.Column('retired_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('object_key')
    )
    with op.batch_alter_table('blob', schema=None) as batch_op:
        batch_op.add_column(sa.Column('chunker', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('blob', schema=None) as batch_op:
        batch_op.drop_column('chunker')
    op.drop_table('retired_pack')
    with op.batch_alter_table('blob_chunk', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_blob_chunk_chunk_id'))
    op.drop_table('blob_chunk')
    with op.batch_alter_table('chunk', schema=None) as batch_op:
        batch_op.drop_index('ix_chunk_verified_at')
        batch_op.drop_index('ix_chunk_refcount_state')
        batch_op.drop_index('ix_chunk_object_key')
    op.drop_table('chunk')
