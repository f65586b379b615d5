"""An upload to an S3 backend (SeaweedFS, Ceph RGW) killed mid-stream: the multipart upload it
leaves is found and aborted."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import requests

from casstore.config import Settings
from casstore.store import Store
from tests.helpers import S3_PARAMS, ServerProcess, environment


def slow_body(started: threading.Event):
    for i in range(200):
        if i == 30:  # past one 5 MiB part: the multipart upload has begun
            started.set()
        yield bytes([i % 256]) * (256 << 10)
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("backend", S3_PARAMS)
def test_killed_s3_upload_leaves_nothing_verify_cannot_clean(tmp_path, database_url, backend):
    env = environment(database_url, tmp_path, backend)
    server = ServerProcess(env, workers=1, log_path=str(tmp_path / "server.log")).start()
    store = Store(Settings.from_env(env))
    try:
        pkg = requests.post(f"{server.url}/v1/packages", json={"producer": "s3-crash"}).json()["id"]
        started = threading.Event()

        def upload():
            try:
                requests.put(f"{server.url}/v1/packages/{pkg}/files/big.bin", data=slow_body(started), timeout=60)
            except requests.RequestException:
                pass

        thread = threading.Thread(target=upload)
        thread.start()
        assert started.wait(30)
        time.sleep(1.5)  # the chunk pack's multipart upload begins once 5 MiB of new chunks are cut
        server.kill()
        thread.join(30)
        report = store.verify.run()
        active = [f for f in report.findings if f.kind == "upload-active"]
        # a body of unknown length is cut into chunks as it streams: the killed write is its chunk pack
        assert len(active) == 1 and active[0].subject.startswith("chunks/")
        assert report.ok  # a young incomplete upload is not a discrepancy yet...
        assert not [f for f in report.findings if f.kind.startswith("blob") or f.kind == "refcount"]
        removed = store.verify.repair_staging(timedelta(0))  # ...and the sweep aborts it
        assert len(removed) == 1
        assert store.storage.stray_writes() == []
        assert store.verify.run().findings == []
    finally:
        server.stop()
        store.close()
