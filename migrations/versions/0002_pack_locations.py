"""pack locations: index storage_location by object key

Small blobs now live in pack objects (casstore/packs.py); gc asks "does any
location still name this pack?" when it removes a blob, and the sweep asks it
of every object it lists, so that question needs an index.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 12:20:00
"""
from alembic import op


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('storage_location', schema=None) as batch_op:
        batch_op.create_index('ix_storage_location_object_key', ['object_key'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('storage_location', schema=None) as batch_op:
        batch_op.drop_index('ix_storage_location_object_key')
