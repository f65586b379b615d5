"""Fixtures: real databases, real filesystems, real HTTP servers.

The database is SQLite in a temporary folder unless ARTIFACT_STORE_TEST_DATABASE_URL
names a PostgreSQL server; then every test gets a database of its own on it.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from casstore.config import Settings
from casstore.db import Database
from casstore.store import Store
from tests.helpers import EXAMPLE_RUN, PG_URL, LiveServer, pg_database, pg_url


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
    with pg_database("tpl") as name:
        db = Database(pg_url(name))
        db.upgrade()
        db.dispose()
        yield name


@pytest.fixture
def database_url(tmp_path, migrated_template):
    """A fresh, already migrated database for one test (Alembic is still what made it)."""
    if not PG_URL:
        path = tmp_path / "registry.db"
        shutil.copyfile(migrated_template, path)
        yield f"sqlite:///{path}"
        return
    with pg_database("t", template=migrated_template) as name:
        yield pg_url(name)


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
def secured_server(settings):
    """A server that requires tokens (authentication on), and its store: (server, store)."""
    store = Store(dataclasses.replace(settings, auth="on"))
    server = LiveServer(store)
    yield server, store
    server.close()
    store.close()


@pytest.fixture
def example_run() -> Path:
    if not EXAMPLE_RUN.is_dir():
        pytest.skip("the shared example run is not beside this checkout")
    return EXAMPLE_RUN
