"""Fixtures: real databases, real filesystems, real HTTP servers.

The database is SQLite in a temporary folder unless ARTIFACT_STORE_TEST_DATABASE_URL
names a PostgreSQL server; then every test gets a database of its own on it.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from casstore.config import Settings
from casstore.db import Database
from casstore.store import Store
from tests.helpers import EXAMPLE_RUN, PG_URL, LiveServer


def _pg_url(name: str) -> str:
    return PG_URL.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory):
    """A database migrated once by Alembic; each test starts from a copy of it."""
    if not PG_URL:
        path = tmp_path_factory.mktemp("template") / "registry.db"
        db = Database(f"sqlite:///{path}")
        db.upgrade()
        db.dispose()
        yield path
        return
    name = f"tpl_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    db = Database(_pg_url(name))
    db.upgrade()
    db.dispose()
    yield name
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def database_url(tmp_path, migrated_template):
    """A fresh, already migrated database for one test (Alembic is still what made it)."""
    if not PG_URL:
        path = tmp_path / "registry.db"
        shutil.copyfile(migrated_template, path)
        yield f"sqlite:///{path}"
        return
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{migrated_template}"'))
    yield _pg_url(name)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def settings(tmp_path, database_url):
    return Settings.from_env({
        "ARTIFACT_STORE_DATA_DIR": str(tmp_path / "data"),
        "ARTIFACT_STORE_DATABASE_URL": database_url,
    })


@pytest.fixture
def store(settings):
    s = Store(settings)
    yield s
    s.close()


@pytest.fixture
def server(store):
    live = LiveServer(store)
    yield live
    live.close()


@pytest.fixture
def example_run() -> Path:
    if not EXAMPLE_RUN.is_dir():
        pytest.skip("the shared example run is not beside this checkout")
    return EXAMPLE_RUN
