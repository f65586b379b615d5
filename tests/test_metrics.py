"""GET /metrics (Prometheus text), the access log and the request id, in one process and under gunicorn."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import threading
import time

import requests
from prometheus_client.parser import text_string_to_metric_families

from casstore.config import Settings
from casstore.store import Store
from tests.helpers import ServerProcess, assert_problem, bearer, make_token, sha

FILE_ROUTE = "/v1/packages/{package_id}/files/{logical_path}"


def scrape(url: str, token: str) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} of one scrape."""
    response = requests.get(f"{url}/metrics", headers=bearer(token), timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def scrape_until(url: str, token: str, done) -> dict[tuple, float]:
    """Scrape until ``done(samples)``: a request is counted once its last byte is sent, after the client has it."""
    deadline = time.monotonic() + 10
    while not done(samples := scrape(url, token)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_requests_bytes_dedup_and_auth_failures_are_counted(secured_server):
    server, store = secured_server
    producer = bearer(make_token(store, "producer", "ci", producers=["p"]))
    scraper = make_token(store, "metrics", "prometheus")
    before = scrape(server.url, scraper)
    data = b"x" * 300_000
    pkg = requests.post(f"{server.url}/v1/packages", json={"producer": "p"}, headers=producer).json()["id"]
    assert requests.put(server.file_url(pkg, "a.bin"), data=data, headers=producer).status_code == 201
    attached = requests.post(f"{server.url}/v1/packages/{pkg}/attach", headers=producer,
                             json={"files": [{"path": "copy.bin", "sha256": sha(data)}]})
    assert attached.status_code == 200 and len(attached.json()["attached"]) == 1
    # the same bytes uploaded again under another name: received, not stored again
    assert requests.put(server.file_url(pkg, "again.bin"), data=data, headers=producer).status_code == 201
    assert requests.get(server.file_url(pkg, "a.bin"), headers=producer).content == data
    assert requests.get(f"{server.url}/v1/audit").status_code == 401
    after = scrape_until(server.url, scraper, lambda now: value(
        now, "artifact_store_http_requests_total", route="/v1/audit", method="GET", status="401") > value(
        before, "artifact_store_http_requests_total", route="/v1/audit", method="GET", status="401"))

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("artifact_store_http_requests_total", route=FILE_ROUTE, method="PUT", status="201") == 2
    assert delta("artifact_store_http_requests_total", route=FILE_ROUTE, method="GET", status="200") == 1
    assert delta("artifact_store_http_requests_total", route="/v1/audit", method="GET", status="401") == 1
    assert delta("artifact_store_http_request_bytes_total", route=FILE_ROUTE, method="PUT") == 2 * len(data)
    assert delta("artifact_store_http_response_bytes_total", route=FILE_ROUTE, method="GET") == len(data)
    assert delta("artifact_store_http_request_duration_seconds_count", route=FILE_ROUTE, method="PUT") == 2
    assert delta("artifact_store_deduplicated_bytes_total") == 2 * len(data)  # the attach and the upload
    assert delta("artifact_store_auth_failures_total", status="401", reason="missing") == 1
    denied = requests.get(f"{server.url}/metrics", headers=bearer(make_token(store, "reader")))
    assert_problem(denied, 403)


def test_one_access_log_line_per_request_with_its_request_id(secured_server, caplog):
    server, store = secured_server
    reader = make_token(store, "reader", "rita")
    with caplog.at_level(logging.INFO, logger="artifact_store.access"):
        missing = requests.get(f"{server.url}/v1/packages/pkg_nothing", headers=bearer(reader))
        refused = requests.get(f"{server.url}/v1/audit")
        deadline = time.monotonic() + 10  # a line is written once the server has sent the last byte
        while len([r for r in caplog.records if r.name == "artifact_store.access"]) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    body = assert_problem(missing, 404)
    assert re.fullmatch(r"[0-9A-Z]{26}", missing.headers["X-Request-Id"])
    assert body["request_id"] == missing.headers["X-Request-Id"]
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "artifact_store.access"]
    assert [(x["request_id"], x["token"], x["method"], x["route"], x["status"]) for x in lines] == [
        (missing.headers["X-Request-Id"], "rita", "GET", "/v1/packages/{package_id}", 404),
        (refused.headers["X-Request-Id"], "-", "GET", "/v1/audit", 401)]
    assert lines[0]["bytes_out"] == len(missing.content) and lines[0]["duration_ms"] > 0


def secured_env(tmp_path, database_url) -> tuple[dict, str, str]:
    """A store with tokens required, for a server of its own: its environment, a reader's token
    and a metrics scraper's."""
    env = {"ARTIFACT_STORE_DATA_DIR": str(tmp_path / "data"), "ARTIFACT_STORE_DATABASE_URL": database_url,
           "ARTIFACT_STORE_AUTH": "on"}
    setup = Store(Settings.from_env(env))
    try:
        return env, make_token(setup, "reader", "rita"), make_token(setup, "metrics", "prometheus")
    finally:
        setup.close()


def test_metrics_under_two_gunicorn_workers_count_both(tmp_path, database_url):
    """Each worker counts in its own process; one scrape shows the requests of both."""
    env, reader, scraper = secured_env(tmp_path, database_url)
    log = tmp_path / "server.log"
    server = ServerProcess(env, workers=2, log_path=str(log)).start()
    try:
        def load():
            for _ in range(40):  # a new connection each time: either worker may accept it
                assert requests.get(f"{server.url}/v1/retention-classes", headers=bearer(reader)).status_code == 200

        threads = [threading.Thread(target=load) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        samples = scrape_until(server.url, scraper, lambda now: value(
            now, "artifact_store_http_requests_total", route="/v1/retention-classes", method="GET",
            status="200") >= 240)
    finally:
        server.stop()
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    served = [x for x in lines if x["route"] == "/v1/retention-classes"]
    assert len(served) == 240 and len({x["pid"] for x in served}) == 2, "both workers answered"
    assert value(samples, "artifact_store_http_requests_total", route="/v1/retention-classes",
                 method="GET", status="200") == 240
    health = [x for x in lines if x["route"] == "/v1/health"]
    assert value(samples, "artifact_store_http_requests_total", route="/v1/health", method="GET",
                 status="200") == len(health)


def test_metrics_survive_a_worker_that_is_replaced(tmp_path, database_url):
    """A worker that exits (here: told to, as gunicorn does on a timeout or a reload) leaves through
    the server's own code: it must not take the metrics folder the other workers share with it."""
    env, reader, scraper = secured_env(tmp_path, database_url)
    server = ServerProcess(env, workers=2).start()
    try:
        def workers_until(done) -> list[int]:
            deadline = time.monotonic() + 30
            while not done(pids := server.worker_pids()) and time.monotonic() < deadline:
                time.sleep(0.05)
            return pids

        first = workers_until(lambda pids: len(pids) == 2)  # the second boots a moment after the first
        assert len(first) == 2
        os.kill(first[0], signal.SIGTERM)
        now = workers_until(lambda pids: first[0] not in pids and len(pids) == 2)
        assert first[0] not in now and len(now) == 2, "the worker was replaced"
        for _ in range(20):  # a new connection each time: either worker may accept it
            assert requests.get(f"{server.url}/v1/retention-classes", headers=bearer(reader)).status_code == 200
        samples = scrape_until(server.url, scraper, lambda now: value(
            now, "artifact_store_http_requests_total", route="/v1/retention-classes", method="GET",
            status="200") >= 20)
        assert value(samples, "artifact_store_http_requests_total", route="/v1/retention-classes",
                     method="GET", status="200") == 20
    finally:
        server.stop()
