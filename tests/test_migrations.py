"""The schema exists only through Alembic, and the migrated schema equals the models."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlmodel import SQLModel

from casstore import models  # noqa: F401
from casstore.db import Database


@pytest.fixture
def empty_database_url(tmp_path):
    """A database no migration has touched yet (SQLite; the PostgreSQL run uses its own fresh one)."""
    from tests.helpers import PG_URL, pg_database, pg_url

    if PG_URL:
        with pg_database("m") as name:
            yield pg_url(name)
        return
    yield f"sqlite:///{tmp_path / 'fresh.db'}"


def test_migrated_schema_equals_models(empty_database_url):
    database_url = empty_database_url
    db = Database(database_url)
    db.upgrade()
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    db.dispose()
    assert diff == []


def test_upgrade_is_idempotent_and_seeds_retention_classes(empty_database_url):
    database_url = empty_database_url
    db = Database(database_url)
    db.upgrade()
    db.upgrade()
    with db.engine.connect() as conn:
        classes = dict(conn.execute(text("SELECT name, days FROM retention_class")).all())
        producer = conn.execute(text("SELECT default_retention_class FROM producer WHERE name='guide-board'")).scalar()
    assert classes == {"transient": 7, "raw-evidence": 90, "summary-evidence": 365,
                       "release-evidence": 2555, "permanent-record": None}
    assert producer == "raw-evidence"
    assert set(inspect(db.engine).get_table_names()) >= {
        "package", "file_entry", "blob", "storage_location", "retention_class", "retention_event",
        "audit_event", "hold", "lease", "alembic_version"}
    db.dispose()
