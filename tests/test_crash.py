"""A real gunicorn server killed with SIGKILL during uploads, restarted, and checked byte for byte.

The server runs with authentication on: the uploads carry a producer token.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import random
import threading
import time
from datetime import timedelta

import pytest
import requests
from sqlalchemy import text

from artifact_store.producer import chunked
from artifact_store.producer.client import StoreClient
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


CAPTURE_BASE = random.Random(11).randbytes(12 << 20)  # large files share it: their chunks are shared


def capture(tag: str) -> bytes:
    return CAPTURE_BASE + hashlib.sha256(tag.encode()).digest() * 4096


def slow_chunked(path: str, started: threading.Event):
    """A chunked upload (recipe + every chunk) streamed slowly: the kill lands mid-body."""
    recipe = chunked.recipe_of(path)
    size, body = chunked.body_of(path, recipe, {e.chunk_id for e in recipe}, None)
    for i, part in enumerate(body):
        if i == 4:
            started.set()
        for j in range(0, len(part), 256 << 10):
            yield part[j:j + (256 << 10)]
            time.sleep(0.02)


@pytest.mark.slow
def test_kill_during_uploads_then_restart_and_verify(tmp_path, database_url):
    env = {"ARTIFACT_STORE_DATA_DIR": str(tmp_path / "data"), "ARTIFACT_STORE_DATABASE_URL": database_url,
           "ARTIFACT_STORE_AUTH": "on"}
    setup = Store(Settings.from_env(env))
    producer_token = make_token(setup, "producer", "ci-crash", producers=["crash"])
    producer = bearer(producer_token)
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
            files["capture.bin"] = capture(f"done-{i}")  # chunked: shares most chunks with the others
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
        pending_capture = capture("pending")
        capture_path = tmp_path / "capture.bin"
        capture_path.write_bytes(pending_capture)
        started = threading.Event()
        events.append(started)
        threads.append(threading.Thread(target=put_streaming, args=(
            f"{server.url}/v1/packages/{pending}/chunked/capture.bin", slow_chunked(str(capture_path), started),
            "POST", producer)))
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
        for digest in [*in_flight, hashlib.sha256(pending_capture).hexdigest()]:
            # interrupted mid-stream: no row, nothing at the final key
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
        client = StoreClient(server.url, token=producer_token)
        entry, _ = chunked.upload(client, pending, "capture.bin", str(capture_path),
                                  hashlib.sha256(pending_capture).hexdigest(), False)
        assert http.post(f"{server.url}/v1/packages/{pending}/finalize").json()["file_count"] == 6 + len(batch)
        assert http.get(f"{server.url}/v1/packages/{pending}/files/capture.bin").content == pending_capture
        for path, data in batch.items():
            assert http.get(f"{server.url}/v1/packages/{pending}/files/{path}").content == data
        removed = store.verify.repair_staging(timedelta(0))
        final = store.verify.run(deep=True)
        assert final.findings == [] and final.complete, final.findings
        assert len(removed) <= 5  # the staging or stray writes of the five uploads cut off
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


REPACK_SCRIPT = """
from datetime import timedelta
from casstore.config import Settings
from casstore.store import Store
store = Store(Settings.from_env())
print(store.gc.run(actor="gc", orphan_grace=timedelta(0), repack_min_age=timedelta(0), repack_grace=timedelta(0)))
"""


@pytest.mark.slow
def test_kill_during_repack_then_verify_and_read(tmp_path, database_url):
    """gc killed with SIGKILL at several points of a repack: each time verify --deep finds no
    damage and the kept file reads back byte for byte; a last gc finishes the job."""
    import subprocess
    import sys

    from casstore.config import Settings
    from casstore.store import Store
    from tests.helpers import LiveServer

    env = {"ARTIFACT_STORE_DATA_DIR": str(tmp_path / "data"), "ARTIFACT_STORE_DATABASE_URL": database_url}
    store = Store(Settings.from_env(env))
    server = LiveServer(store)
    base = random.Random(21).randbytes(192 << 20)
    kept_bytes = base[:64 << 20] + os.urandom(1 << 20)
    try:
        store.retention.set_class_days("transient", 0, actor="test")
        gone = server.create(retention_class="transient")["id"]
        kept = server.create()["id"]
        assert server.put(gone, "a.bin", base).status_code == 201
        assert server.put(kept, "b.bin", kept_bytes).status_code == 201
        for pkg in (gone, kept):
            assert server.http.post(f"{server.url}/v1/packages/{pkg}/finalize").status_code == 200
        assert server.http.delete(f"{server.url}/v1/packages/{gone}", params={"reason": "t"}).status_code == 200
        for delay in (0.5, 1.0, 1.5, 2.0, 3.0):
            proc = subprocess.Popen([sys.executable, "-c", REPACK_SCRIPT], env={**os.environ, **env},
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            time.sleep(delay)
            proc.kill()
            proc.wait(10)
            with store.db.engine.begin() as conn:  # the killed gc's lease would run out in 5 minutes: now
                conn.execute(text("DELETE FROM lease"))
            report = store.verify.run(deep=True)
            assert report.ok, report.findings  # at most a pack or a write in progress (-active)
            assert server.get(kept, "b.bin").content == kept_bytes
        done = subprocess.run([sys.executable, "-c", REPACK_SCRIPT], env={**os.environ, **env}, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        store.verify.repair_staging(timedelta(0))
        final = store.verify.run(deep=True)
        # clean; a pack a killed repack wrote but never recorded is listed as pack-active until the sweep's age
        assert final.ok and final.complete and {f.kind for f in final.findings} <= {"pack-active"}, final.findings
        assert server.get(kept, "b.bin").content == kept_bytes
        with store.db.engine.connect() as conn:
            named = {r[0] for r in conn.execute(text("SELECT DISTINCT object_key FROM chunk"))}
        assert sum(i.size for i in store.storage.list(layout.KeyKind.CHUNK_PACK) if i.key in named) < 74 << 20
    finally:
        server.close()
        store.close()
