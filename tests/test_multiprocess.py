"""Several API processes over one PostgreSQL and one S3 bucket, with gc running from a third process.

Needs the real servers scripts/test starts: ARTIFACT_STORE_TEST_DATABASE_URL (PostgreSQL)
and ARTIFACT_STORE_TEST_S3_ENDPOINT (SeaweedFS) and/or ARTIFACT_STORE_TEST_RGW_ENDPOINT
(Ceph RGW 16, which lacks copy-if-not-exists: its large blobs are placed by look, then copy).
Authentication is on: the clients hold tokens made with `artifact-store token create`,
and each server's /metrics (scraped with a metrics token) counts the requests of both
its workers.
"""

from __future__ import annotations

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
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import (
    PG_URL,
    S3_ENDPOINT,
    S3_PARAMS,
    S3_SERVERS,
    PackageChurn,
    ServerProcess,
    bearer,
    cli,
    environment,
)

ROOT = Path(__file__).resolve().parents[1]
needs_pg = pytest.mark.skipif(not PG_URL, reason="needs PostgreSQL (scripts/test starts one)")
# a blob larger than one 5 MiB part: staged in parts, then copied to its final key
SHARED = [os.urandom(random.Random(i).randint(100, 5000)) for i in range(12)] + [os.urandom(6 << 20)]


@pytest.mark.slow
@needs_pg
@pytest.mark.parametrize("backend", S3_PARAMS)
def test_two_api_processes_and_a_gc_process(tmp_path, database_url, backend):
    env = {**environment(database_url, tmp_path, backend), "ARTIFACT_STORE_AUTH": "on"}
    assert cli(env, "db", "upgrade").returncode == 0
    assert cli(env, "retention-classes", "set", "transient", "--days", "0").returncode == 0
    servers: list[ServerProcess] = []
    try:  # every server started is stopped, whatever fails
        for i in range(2):
            servers.append(ServerProcess(env, workers=2, log_path=str(tmp_path / f"server{i}.log")).start())
        _churn_with_gc_then_check(env, tmp_path, backend, servers)
    finally:
        for s in servers:
            s.stop()


def _churn_with_gc_then_check(env: dict, tmp_path, backend: str, servers: list[ServerProcess]) -> None:
    tokens = {role: token(env, role, *extra) for role, extra in (
        ("producer", ("--producer", "churn")), ("operator", ()), ("reader", ()), ("metrics", ()))}
    assert requests.get(f"{servers[0].url}/v1/health").json() == {"status": "ok"}  # anonymous: status only
    reader = bearer(tokens["reader"])
    health = requests.get(f"{servers[0].url}/v1/health", headers=reader).json()
    assert health["storage"]["backend"] == "s3"
    copy = S3_SERVERS[backend].copy_if_not_exists
    capabilities = health["storage"]["capabilities"]
    capabilities.pop("notes", None)
    assert capabilities == {"conditional_create": True, "copy_if_not_exists": copy, "put_if_absent": "conditional",
                            "copy_if_absent": "conditional" if copy else "head-then-write"}
    stop_file = tmp_path / "stop-gc"
    gc = subprocess.Popen([sys.executable, "-m", "tests.gc_loop", str(stop_file)], env={**os.environ, **env},
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop, errors = threading.Event(), []
    clients = [PackageChurn([s.url for s in servers], SHARED, seed, stop, errors,
                            producer_token=tokens["producer"], operator_token=tokens["operator"])
               for seed in range(6)]
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
    final_gc = cli(env, "gc", "--orphan-grace", "0s")
    assert final_gc.returncode == 0, final_gc.stderr
    verify = cli(env, "verify", "--deep")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    for c in clients:
        for pkg, files in c.kept.items():
            for server in servers:
                for path, data in files.items():
                    got = requests.get(f"{server.url}/v1/packages/{pkg}/files/{path}", headers=reader)
                    assert got.status_code == 200 and got.content == data
    for i, server in enumerate(servers):
        assert_metrics_count_both_workers(server, tokens["metrics"], tmp_path / f"server{i}.log")


def token(env: dict, role: str, *extra: str) -> str:
    made = cli(env, "token", "create", "--role", role, "--name", f"mp-{role}", *extra)
    assert made.returncode == 0, made.stderr
    return json.loads(made.stdout)["token"]


def assert_metrics_count_both_workers(server: ServerProcess, scrape_token: str, log: Path) -> None:
    """One scrape equals the access-log lines of both workers (counted in two processes, merged)."""
    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
        lines = [x for x in lines if x["route"] != "/metrics"]
        text = requests.get(f"{server.url}/metrics", headers=bearer(scrape_token)).text
        counted = sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                      if s.name == "artifact_store_http_requests_total" and s.labels["route"] != "/metrics")
        if counted == len(lines) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len({x["pid"] for x in lines}) == 2 and counted == len(lines) > 100


@needs_pg
@pytest.mark.skipif(not S3_ENDPOINT, reason="needs an S3-compatible server (scripts/test starts SeaweedFS)")
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
