"""A real gunicorn server killed with SIGKILL during uploads, restarted, and checked byte for byte.

The server runs with authentication on: the uploads carry a producer token.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import threading
import time
from datetime import timedelta

import pytest
import requests
from sqlalchemy import text

from casstore import layout
from casstore.config import Settings
from casstore.store import Store
from casstore.tarstream import tar_of
from tests.helpers import ServerProcess, bearer, make_token


def slow_body(seed: bytes, chunks: int, started: threading.Event):
    """A deterministic body streamed slowly, so the kill lands mid-upload."""
    for i in range(chunks):
        if i == 2:
            started.set()
        yield hashlib.sha256(seed + i.to_bytes(4, "big")).digest() * 8192  # 256 KiB
        time.sleep(0.05)


def body_digest(seed: bytes, chunks: int) -> str:
    digest = hashlib.sha256()
    for i in range(chunks):
        digest.update(hashlib.sha256(seed + i.to_bytes(4, "big")).digest() * 8192)
    return digest.hexdigest()


def put_streaming(url: str, body, method: str = "PUT", headers: dict | None = None) -> None:
    try:
        requests.request(method, url, data=body, timeout=60, headers=headers)
    except requests.RequestException:
        pass  # the server died under us: expected


def small_files(tag: str, n: int = 120) -> dict[str, bytes]:
    return {f"logs/{tag}/{i:03d}.log": hashlib.sha256(f"{tag}{i}".encode()).digest() * (i % 50 + 1)
            for i in range(n)}


def slow_tar(files: dict[str, bytes], started: threading.Event):
    """A tar batch streamed slowly: the kill lands before its pack can be written."""
    body = tar_of(sorted(files.items()))
    for i in range(0, len(body), 16 << 10):
        if i == 32 << 10:
            started.set()
        yield body[i:i + (16 << 10)]
        time.sleep(0.05)


@pytest.mark.slow
def test_kill_during_uploads_then_restart_and_verify(tmp_path, database_url):
    env = {"ARTIFACT_STORE_DATA_DIR": str(tmp_path / "data"), "ARTIFACT_STORE_DATABASE_URL": database_url,
           "ARTIFACT_STORE_AUTH": "on"}
    setup = Store(Settings.from_env(env))
    producer = bearer(make_token(setup, "producer", "ci-crash", producers=["crash"]))
    setup.close()
    server = ServerProcess(env, workers=2, log_path=str(tmp_path / "server.log")).start()
    http = requests.Session()
    http.headers.update(producer)
    assert http.get(f"{server.url}/v1/packages", headers={"Authorization": ""}).status_code == 401
    try:
        finished: dict[str, dict[str, bytes]] = {}
        for i in range(3):
            pkg = http.post(f"{server.url}/v1/packages", json={"producer": "crash", "run_id": f"done-{i}"}).json()["id"]
            files = {f"f{j}.bin": os.urandom(size) for j, size in enumerate([0, 100, 70_000, 3 << 20])}
            files["shared.bin"] = b"shared between finished and interrupted packages" * 100
            for path, data in files.items():
                assert http.put(f"{server.url}/v1/packages/{pkg}/files/{path}", data=data).status_code == 201
            batch = small_files(f"done-{i}")  # stored as one pack
            assert http.post(f"{server.url}/v1/packages/{pkg}/tar", data=tar_of(sorted(batch.items()))).ok
            assert http.post(f"{server.url}/v1/packages/{pkg}/finalize").status_code == 200
            finished[pkg] = {**files, **batch}

        pending = http.post(f"{server.url}/v1/packages", json={"producer": "crash", "run_id": "pending"}).json()["id"]
        http.put(f"{server.url}/v1/packages/{pending}/files/shared.bin",
                 data=b"shared between finished and interrupted packages" * 100)
        in_flight, threads, events = [], [], []
        for k in range(4):
            seed, started = f"in-flight-{k}".encode(), threading.Event()
            in_flight.append(body_digest(seed, 40))
            events.append(started)
            t = threading.Thread(target=put_streaming, args=(
                f"{server.url}/v1/packages/{pending}/files/big{k}.bin", slow_body(seed, 40, started), "PUT",
                producer))
            t.start()
            threads.append(t)
        started = threading.Event()
        events.append(started)
        threads.append(threading.Thread(target=put_streaming, args=(
            f"{server.url}/v1/packages/{pending}/tar", slow_tar(small_files("pending"), started), "POST",
            producer)))
        threads[-1].start()
        for started in events:
            assert started.wait(20)
        server.kill()
        for t in threads:
            t.join(30)

        # After the crash, before any restart: the store's invariants hold as they are on disk.
        store = Store(Settings.from_env(env))
        report = store.verify.run(deep=True)
        assert [f for f in report.findings if not f.kind.endswith("-active")] == []
        with store.db.engine.connect() as conn:
            rows = {r[0] for r in conn.execute(text("SELECT sha256 FROM blob"))}
        for digest in in_flight:  # interrupted mid-stream: no row, nothing at the final key
            assert digest not in rows
            assert store.storage.head(layout.blob_key(digest)) is None
        with store.db.engine.connect() as conn:  # the interrupted batch: not one of its files
            assert conn.execute(text("SELECT COUNT(*) FROM file_entry WHERE path LIKE 'logs/pending/%'")).scalar() == 0

        server.start()
        for pkg, files in finished.items():
            manifest = http.get(f"{server.url}/v1/packages/{pkg}/manifest")
            package = http.get(f"{server.url}/v1/packages/{pkg}").json()
            assert package["manifest_digest"] == "sha256:" + hashlib.sha256(manifest.content).hexdigest()
            for entry in manifest.json()["files"]:
                got = http.get(f"{server.url}/v1/packages/{pkg}/files/{entry['path']}").content
                assert got == files[entry["path"]]
                assert hashlib.sha256(got).hexdigest() == entry["sha256"]

        # The interrupted package resumes: same id, the missing files again, then finalize.
        for k in range(4):
            body = b"".join(slow_body(f"in-flight-{k}".encode(), 40, threading.Event()))
            assert http.put(f"{server.url}/v1/packages/{pending}/files/big{k}.bin", data=body).status_code == 201
        batch = small_files("pending")
        assert http.post(f"{server.url}/v1/packages/{pending}/tar", data=tar_of(sorted(batch.items()))).ok
        assert http.post(f"{server.url}/v1/packages/{pending}/finalize").json()["file_count"] == 5 + len(batch)
        for path, data in batch.items():
            assert http.get(f"{server.url}/v1/packages/{pending}/files/{path}").content == data
        removed = store.verify.repair_staging(timedelta(0))
        final = store.verify.run(deep=True)
        assert final.findings == [] and final.complete, final.findings
        assert len(removed) <= 4
        store.close()
    finally:
        server.stop()


def test_gunicorn_refuses_paths_that_are_not_utf8(tmp_path, database_url):
    env = {"ARTIFACT_STORE_DATA_DIR": str(tmp_path / "data"), "ARTIFACT_STORE_DATABASE_URL": database_url}
    server = ServerProcess(env, workers=1).start()
    try:
        pkg = requests.post(f"{server.url}/v1/packages", json={"producer": "x"}).json()["id"]
        conn = http.client.HTTPConnection("127.0.0.1", server.port)
        conn.request("PUT", f"/v1/packages/{pkg}/files/bad%FF%FEname", body=b"x")
        response = conn.getresponse()
        assert response.status == 422 and response.getheader("Content-Type") == "application/problem+json"
        conn.close()
        ok = requests.put(f"{server.url}/v1/packages/{pkg}/files/%C3%BC%F0%9F%8E%89", data=b"x")
        assert ok.status_code == 201 and ok.json()["path"] == "ü🎉"
    finally:
        server.stop()
