"""/v1/health reports the database and the backend, and answers 503 when either is down."""

from __future__ import annotations

import os
import shutil

from casstore.config import Settings
from casstore.store import Store
from tests.helpers import LiveServer, assert_problem


def test_health_ok(server):
    response = server.http.get(f"{server.url}/v1/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"]["status"] == "ok" and body["database"]["latency_ms"] >= 0
    assert body["storage"]["status"] == "ok" and body["storage"]["backend"] == "file"
    assert list(server.store.storage.list("health/")) == []  # the probe cleans up after itself


def test_health_503_when_backend_is_down(server):
    root = server.store.storage.root
    shutil.rmtree(root)
    with open(root, "w") as f:  # a file where the storage folder was: every write fails
        f.write("not a folder")
    response = server.http.get(f"{server.url}/v1/health")
    body = assert_problem(response, 503)
    assert body["detail"] == "storage down"
    assert body["storage"]["status"] == "down" and body["storage"]["error"] == "StorageError"  # no paths
    assert body["database"]["status"] == "ok"
    os.remove(root)


def test_health_503_when_database_is_down(tmp_path):
    settings = Settings.from_env({"ARTIFACT_STORE_DATA_DIR": str(tmp_path),
                                  "ARTIFACT_STORE_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:9/none"})
    live = LiveServer(Store(settings))
    try:
        response = live.http.get(f"{live.url}/v1/health")
        body = assert_problem(response, 503)
        assert body["database"]["status"] == "down" and body["storage"]["status"] == "ok"
        assert body["database"]["error"] == "DatabaseUnavailable"  # not the driver's text with host and port
    finally:
        live.close()
