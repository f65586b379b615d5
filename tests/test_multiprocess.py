"""Several API processes over one PostgreSQL and one S3 bucket, with gc running from a third process.

Needs the real servers .ci/run starts: ARTIFACT_STORE_TEST_DATABASE_URL (PostgreSQL)
and ARTIFACT_STORE_TEST_S3_ENDPOINT (SeaweedFS).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import PG_URL
from tests.serverproc import ServerProcess
from tests.storage_backends import S3_ENDPOINT, s3_url

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (PG_URL and S3_ENDPOINT),
                                reason="needs PostgreSQL and an S3-compatible server (.ci/run starts both)")
SHARED = [os.urandom(random.Random(i).randint(100, 5000)) for i in range(12)] + [os.urandom(6 << 20)]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def environment(database_url: str, tmp_path: Path) -> dict:
    return {"ARTIFACT_STORE_DATA_DIR": str(tmp_path / "data"), "ARTIFACT_STORE_DATABASE_URL": database_url,
            "ARTIFACT_STORE_STORAGE_URL": s3_url(), "ARTIFACT_STORE_S3_ENDPOINT": S3_ENDPOINT,
            "ARTIFACT_STORE_S3_REGION": "us-east-1", "ARTIFACT_STORE_S3_ACCESS_KEY_ID": "testkey",
            "ARTIFACT_STORE_S3_SECRET_ACCESS_KEY": "testsecret", "ARTIFACT_STORE_S3_ALLOW_HTTP": "true",
            "ARTIFACT_STORE_S3_PART_SIZE_MIB": "5"}


def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "casstore.cli", *args], env={**os.environ, **env},
                          capture_output=True, text=True, cwd=ROOT, timeout=600)


class Client(threading.Thread):
    """Creates on one process, uploads and attaches through either, finalizes and deletes on the other."""

    def __init__(self, urls: list[str], seed: int, stop: threading.Event, errors: list) -> None:
        super().__init__(daemon=True)
        self.urls, self.rng, self.stop, self.errors = urls, random.Random(seed), stop, errors
        self.kept: dict[str, dict[str, bytes]] = {}
        self.done = 0

    def url(self) -> str:
        return self.rng.choice(self.urls)

    def run(self) -> None:
        http = requests.Session()
        try:
            while not self.stop.is_set():
                self.one(http)
        except Exception as exc:
            self.errors.append(repr(exc))

    def one(self, http) -> None:
        pkg = http.post(f"{self.url()}/v1/packages", json={"producer": "mp", "retention_class": "transient"}).json()["id"]
        files = {f"shared/{i}": d for i, d in enumerate(self.rng.sample(SHARED, 4))}
        files.update({f"own/{i}": os.urandom(self.rng.randint(1, 4000)) for i in range(2)})
        missing = set(http.post(f"{self.url()}/v1/blobs/missing",
                                json={"digests": [sha(d) for d in files.values()]}).json()["missing"])
        known = [{"path": p, "sha256": sha(d)} for p, d in files.items() if sha(d) not in missing]
        upload = [p for p, d in files.items() if sha(d) in missing]
        if known:
            answer = http.post(f"{self.url()}/v1/packages/{pkg}/attach", json={"files": known})
            assert answer.status_code == 200, answer.text
            lost = set(answer.json()["missing"])
            upload += [i["path"] for i in known if i["sha256"] in lost]
        for path in upload:
            r = http.put(f"{self.url()}/v1/packages/{pkg}/files/{path}", data=files[path],
                         headers={"X-Checksum-Sha256": sha(files[path])})
            assert r.status_code == 201, r.text
        done = http.post(f"{self.url()}/v1/packages/{pkg}/finalize")
        assert done.status_code == 200 and done.json()["file_count"] == 6, done.text
        self.kept[pkg] = files
        while len(self.kept) > 2:
            oldest = next(iter(self.kept))
            r = http.delete(f"{self.url()}/v1/packages/{oldest}", params={"reason": "multi-process test"})
            assert r.status_code == 200, r.text
            del self.kept[oldest]
        self.done += 1


@pytest.mark.slow
def test_two_api_processes_and_a_gc_process(tmp_path, database_url):
    env = environment(database_url, tmp_path)
    assert cli(env, "db", "upgrade").returncode == 0
    assert cli(env, "retention-classes", "set", "transient", "--days", "0").returncode == 0
    servers = [ServerProcess(env, workers=2, log_path=str(tmp_path / f"server{i}.log")).start() for i in range(2)]
    health = requests.get(f"{servers[0].url}/v1/health").json()
    assert health["storage"]["backend"] == "s3"
    assert health["storage"]["capabilities"] == {"conditional_create": True, "copy_if_not_exists": True}
    stop_file = tmp_path / "stop-gc"
    gc = subprocess.Popen([sys.executable, "-m", "tests.gc_loop", str(stop_file)], env={**os.environ, **env},
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop, errors = threading.Event(), []
    clients = [Client([s.url for s in servers], seed, stop, errors) for seed in range(6)]
    try:
        for c in clients:
            c.start()
        time.sleep(25)
    finally:
        stop.set()
        for c in clients:
            c.join(60)
        stop_file.write_text("stop")
        out, err = gc.communicate(timeout=120)
    assert errors == [], errors
    assert gc.returncode == 0, err
    gc_report = json.loads(out.strip().splitlines()[-1])
    packages = sum(c.done for c in clients)
    print(f"\npackages {packages}, gc rounds {gc_report['rounds']}, gc freed {gc_report['freed']}")
    assert packages >= 20 and gc_report["rounds"] >= 5
    try:
        final_gc = cli(env, "gc", "--orphan-grace", "0s")
        assert final_gc.returncode == 0, final_gc.stderr
        verify = cli(env, "verify", "--deep")
        assert verify.returncode == 0, verify.stdout + verify.stderr
        for c in clients:
            for pkg, files in c.kept.items():
                for server in servers:
                    for path, data in files.items():
                        got = requests.get(f"{server.url}/v1/packages/{pkg}/files/{path}")
                        assert got.status_code == 200 and got.content == data
    finally:
        for s in servers:
            s.stop()


def test_background_work_runs_one_at_a_time_and_a_dead_holders_lease_expires(tmp_path, database_url):
    env = environment(database_url, tmp_path)
    assert cli(env, "db", "upgrade").returncode == 0
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    with engine.begin() as conn:  # another host is running gc right now
        conn.execute(text("INSERT INTO lease (name, holder, expires_at) VALUES ('gc', 'other-host:42:x', "
                          "now() + interval '5 minutes')"))
    busy = cli(env, "gc")
    assert busy.returncode == 2 and "already running" in busy.stderr
    with engine.begin() as conn:  # that host died: its lease ran out and was never renewed
        conn.execute(text("UPDATE lease SET expires_at = now() - interval '1 second' WHERE name = 'gc'"))
    assert cli(env, "gc").returncode == 0
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM lease")).scalar() == 0
    engine.dispose()
