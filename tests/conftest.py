"""Fixtures: real databases, real filesystems, real HTTP servers.

The database is SQLite in a temporary folder unless ARTIFACT_STORE_TEST_DATABASE_URL
names a PostgreSQL server; then every test gets a database of its own on it.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, text
from werkzeug.serving import WSGIRequestHandler, make_server

from api import create_app
from casstore.config import Settings
from casstore.db import Database
from casstore.store import Store

PG_URL = os.environ.get("ARTIFACT_STORE_TEST_DATABASE_URL", "")
EXAMPLE_RUN = Path(__file__).resolve().parents[2] / "shared" / "guide-board" / "example-cmis-pilot-run"


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


class RawPathHandler(WSGIRequestHandler):
    """Werkzeug's dev server, but PATH_INFO carries the raw percent-decoded bytes as gunicorn's does.

    The dev server decodes the path as UTF-8 with replacement characters before
    the app sees it; gunicorn (what ``artifact-store serve`` runs) does not, and
    the app relies on that to refuse paths that are not UTF-8.
    """

    def make_environ(self):
        from urllib.parse import unquote_to_bytes, urlsplit

        environ = super().make_environ()
        environ["PATH_INFO"] = unquote_to_bytes(urlsplit(self.path).path).decode("latin-1")
        return environ


class LiveServer:
    """The app under a real threaded HTTP server on loopback."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.app = create_app(store=store)
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True,
                                  request_handler=RawPathHandler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        self.http = requests.Session()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.http.close()

    # small conveniences for tests
    def create(self, **body) -> dict:
        body.setdefault("producer", "test")
        response = self.http.post(f"{self.url}/v1/packages", json=body)
        assert response.status_code == 201, response.text
        return response.json()

    def file_url(self, package_id: str, path: str) -> str:
        from urllib.parse import quote

        return f"{self.url}/v1/packages/{package_id}/files/{quote(path, safe='/')}"

    def put(self, package_id: str, path: str, data: bytes, **kwargs) -> requests.Response:
        return self.http.put(self.file_url(package_id, path), data=data, **kwargs)

    def get(self, package_id: str, path: str, **kwargs) -> requests.Response:
        return self.http.get(self.file_url(package_id, path), **kwargs)


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
