"""Hostile clients: slow and idle connections, oversized and malformed input, edge values.

Everything runs against `artifact-db serve` (gunicorn with the GuardedWorker, one
worker, short timeouts so the module stays quick), through raw sockets where the
HTTP itself is the attack. Each refusal is checked for its status, its
problem+json body, that nothing changed (row counts) and that the server still
answers. The last test reports the worker's memory growth over the whole corpus.
"""

from __future__ import annotations

import json
import os
import socket
import time

import pytest
import requests
from sqlalchemy import event

from casstore.config import Settings
from casstore.store import Store
from tests.helpers import (
    PG_URL,
    PROBLEM,
    ServerProcess,
    assert_problem,
    counts,
    leave_stray_write,
    make_tar,
    pg_database,
    pg_url,
    sha,
)

HEADER_TIMEOUT = 2
IO_TIMEOUT = 3
THREADS = 4
MIB = 1 << 20


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def database(tmp_path_factory):
    if not PG_URL:
        yield f"sqlite:///{tmp_path_factory.mktemp('hostile-db')}/registry.db"
        return
    with pg_database("hostile") as name:
        yield pg_url(name)


@pytest.fixture(scope="module")
def served(tmp_path_factory, database):
    """(server process, a Store on the same database and folder, the worker's VmHWM after a warm-up)."""
    data = tmp_path_factory.mktemp("hostile-data")
    env = {"ARTIFACT_STORE_DATA_DIR": str(data), "ARTIFACT_STORE_DATABASE_URL": database}
    server = ServerProcess(env, workers=1, args=("--threads", str(THREADS), "--header-timeout", str(HEADER_TIMEOUT),
                                                 "--io-timeout", str(IO_TIMEOUT), "--keepalive", "5"))
    server.start()
    store = Store(Settings.from_env(env))
    warm_up(server.url)
    yield server, store, server.peak_rss_kib()
    store.close()
    server.stop()


@pytest.fixture
def srv(served):
    return served[0]


@pytest.fixture
def db(served):
    """A Store on the served database and folder (for row counts)."""
    return served[1]


def warm_up(url: str) -> None:
    """Ordinary use first: the memory baseline is a server that has already served every kind of request."""
    http = requests.Session()
    for i in range(3):
        pkg = http.post(f"{url}/v1/packages", json={"producer": "warm-up", "metadata": {"i": i}}).json()["id"]
        http.put(f"{url}/v1/packages/{pkg}/files/a.bin", data=os.urandom(2 * MIB))
        http.post(f"{url}/v1/packages/{pkg}/tar", data=make_tar({f"f{j}": b"x%d" % j for j in range(50)}))
        http.post(f"{url}/v1/blobs/missing", json={"digests": [sha(b"%d" % j) for j in range(1000)]})
        http.post(f"{url}/v1/packages/{pkg}/finalize")
        http.get(f"{url}/v1/audit")
        http.get(f"{url}/openapi.json")


def alive(url: str) -> None:
    """The server still answers an ordinary request, promptly (a held thread would make it wait
    for a timeout, or forever; the 1 s p99 target itself is bench/slow_clients.py's to measure)."""
    started = time.monotonic()
    response = requests.get(f"{url}/v1/retention-classes", timeout=10)
    assert response.status_code == 200 and time.monotonic() - started < 3.0


def new_package(url: str, **body) -> str:
    response = requests.post(f"{url}/v1/packages", json={"producer": "hostile", **body})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def raw(port: int, data: bytes, wait: float = 5.0) -> bytes:
    """Send bytes on a fresh connection; everything the server answers until it closes (or ``wait``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return out


def parse_problem(answer: bytes, status: int) -> dict:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith(f"HTTP/1.1 {status} "), answer[:300]
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    assert headers["content-type"] == PROBLEM
    problem = json.loads(body)
    assert problem["status"] == status and problem["title"] and problem["detail"]
    return problem


def refused(srv, db, status: int, method: str, path: str, **kwargs) -> dict:
    """The request is answered ``status`` as problem+json, changes nothing, and the server still answers."""
    before = counts(db)
    body = assert_problem(requests.request(method, srv.url + path, timeout=30, **kwargs), status)
    assert counts(db) == before
    alive(srv.url)
    return body


# ---------------------------------------------------------------- slow and idle clients

def test_slow_header_and_idle_connections_hold_no_thread(srv):
    """Many more slow-header and idle connections than threads: others are still answered at once,
    and a head not complete within the header timeout is answered 408 (problem+json) and closed."""
    slow, idle = [], []
    for i in range(10 * THREADS):
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")
        slow.append(s)
        idle.append(socket.create_connection(("127.0.0.1", srv.port)))
    try:
        for _ in range(5):
            for s in slow:
                s.sendall(b"X-Slow: 1\r\n")
            alive(srv.url)
            time.sleep(0.2)
        time.sleep(HEADER_TIMEOUT + 1.5)
        for s in slow:
            s.settimeout(3)
            answer = s.recv(4096)
            problem = parse_problem(answer, 408)
            assert "did not arrive within" in problem["detail"]
        for s in idle:  # closed without an answer: they never asked anything
            s.settimeout(3)
            assert s.recv(4096) == b""
        alive(srv.url)
    finally:
        for s in slow + idle:
            s.close()


def test_stalled_upload_is_closed_and_records_nothing(srv, db):
    pkg = new_package(srv.url)
    before = counts(db)
    stalled = []
    for i in range(2 * THREADS):  # every thread stalls on a body...
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.sendall(f"PUT /v1/packages/{pkg}/files/stall-{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n"
                  "\r\n".encode() + b"x" * 1000)
        stalled.append(s)
    try:
        started = time.monotonic()
        for s in stalled:  # ...until the io timeout closes it
            s.settimeout(IO_TIMEOUT * 4)
            while s.recv(65536):
                pass
        assert time.monotonic() - started < IO_TIMEOUT * 3
        alive(srv.url)
        assert counts(db) == before
        assert requests.get(f"{srv.url}/v1/packages/{pkg}/files").json()["items"] == []
    finally:
        for s in stalled:
            s.close()


def test_download_nobody_reads_frees_its_thread(srv):
    pkg = new_package(srv.url)
    assert requests.put(f"{srv.url}/v1/packages/{pkg}/files/big.bin", data=os.urandom(32 * MIB)).status_code == 201
    readers = []
    for _ in range(2 * THREADS):
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(f"GET /v1/packages/{pkg}/files/big.bin HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        readers.append(s)
    try:
        time.sleep(2 * IO_TIMEOUT + 1.5)  # two rounds of THREADS stalled writes have timed out by now
        for _ in range(THREADS):
            alive(srv.url)
    finally:
        for s in readers:
            s.close()


# ---------------------------------------------------------------- the server's own answers

@pytest.mark.parametrize("request_bytes, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nBad Header Name: x\r\n\r\n", 400),
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(150)) + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nX: " + b"y" * 70000 + b"\r\n\r\n", 431),
    (b"GET /v1/health HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    (b"POST /v1/packages HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", 400),
], ids=["request-line", "header-name", "414", "431-fields", "431-head", "transfer-coding", "two-lengths"])
def test_pre_application_errors_are_problem_json(srv, db, request_bytes, status):
    before = counts(db)
    parse_problem(raw(srv.port, request_bytes), status)
    assert counts(db) == before
    alive(srv.url)


# ---------------------------------------------------------------- bodies: capped before parsing

def test_json_body_over_the_cap_is_413_unread(srv, db):
    body = b'{"producer": "p", "metadata": {"x": "' + b"a" * (100 * MIB) + b'"}}'
    problem = refused(srv, db, 413, "POST", "/v1/packages", data=body,
                      headers={"Content-Type": "application/json"})
    assert problem["title"] == "Request Entity Too Large"


def test_chunked_json_body_over_the_cap_is_413(srv, db):
    def chunks():
        yield b'{"producer": "p", "metadata": {"x": "'
        for _ in range(8):
            yield b"a" * MIB
        yield b'"}}'
    refused(srv, db, 413, "POST", "/v1/packages", data=chunks(), headers={"Content-Type": "application/json"})


def test_a_million_digests_is_413_and_ten_thousand_and_one_is_422(srv, db):
    digests = [sha(b"%d" % i) for i in range(1_000_000)]
    refused(srv, db, 413, "POST", "/v1/blobs/missing", json={"digests": digests})
    problem = refused(srv, db, 422, "POST", "/v1/blobs/missing", json={"digests": digests[:10_001]})
    assert "more than 10000 items" in problem["detail"]


def test_attach_list_is_capped(srv, db):
    pkg = new_package(srv.url)
    files = [{"path": f"f{i}", "sha256": sha(b"%d" % i)} for i in range(10_001)]
    refused(srv, db, 422, "POST", f"/v1/packages/{pkg}/attach", json={"files": files})


# ---------------------------------------------------------------- JSON that is not JSON

@pytest.mark.parametrize("metadata_text, words", [
    ('{"a": "\\ud800"}', "lone surrogate"),
    ('{"\\udfff": 1}', "lone surrogate"),
    ('{"a": NaN}', "NaN"),
    ('{"a": [1, Infinity]}', "Infinity"),
    ('{"a": -Infinity}', "-Infinity"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"a": ' + "[" * 40 + "]" * 40 + "}", "nested deeper than 32"),
    ("{" + ", ".join(f'"k{i}": {i}' for i in range(20_000)) + "}", "more than 10000 items"),
    ("{" + ", ".join(f'"k{i}": [{i}]' for i in range(6_000)) + "}", "more than 10000 members"),
], ids=["surrogate-value", "surrogate-key", "nan", "infinity", "-infinity", "depth-100000", "depth-40",
        "20000-keys", "12000-members"])
def test_metadata_that_is_not_portable_json_is_422(srv, db, metadata_text, words):
    body = '{"producer": "p", "metadata": ' + metadata_text + "}"
    problem = refused(srv, db, 422, "POST", "/v1/packages", data=body.encode(),
                      headers={"Content-Type": "application/json"})
    assert words in problem["detail"]


def test_a_million_members_are_refused_before_parsing(srv, db):
    """1.9 million one-digit items fit under the size cap; counted on the raw bytes, never parsed."""
    problem = refused(srv, db, 422, "POST", "/v1/blobs/missing", data=b'{"digests": [' + b"0," * 900_000 + b"0]}",
                      headers={"Content-Type": "application/json"})
    assert "more than 100000 members" in problem["detail"]


def test_two_million_keys_are_413_before_parsing(srv, db):
    body = "{" + ",".join(f'"{i}":0' for i in range(2_000_000)) + "}"
    refused(srv, db, 413, "POST", "/v1/packages", data=('{"producer":"p","metadata":' + body + "}").encode(),
            headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("body", [
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",  # a chunk size that is not hex
    b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n",  # a chunk without its CRLF
    b'Content-Length: 100\r\n\r\n{"producer": "cut"}',  # valid JSON, but shorter than announced
], ids=["chunk-size", "chunk-terminator", "short-body"])
def test_malformed_or_truncated_json_bodies_are_400(srv, db, body):
    before = counts(db)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"POST /v1/packages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + body)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    problem = parse_problem(answer, 400)
    assert "nothing was recorded" in problem["detail"] or "malformed" in problem["detail"]
    assert counts(db) == before
    alive(srv.url)


def test_malformed_json_is_400(srv, db):
    refused(srv, db, 400, "POST", "/v1/packages", data=b'{"producer": ', headers={"Content-Type": "application/json"})


def test_accepted_metadata_finalizes(srv):
    """The checks leave real metadata alone: unicode, nesting to 32, and a finalize that works."""
    metadata = {"日本": "ünïcødé ✓", "deep": json.loads("[" * 31 + "]" * 31), "n": 1.5e300}
    pkg = new_package(srv.url, metadata=metadata)
    done = requests.post(f"{srv.url}/v1/packages/{pkg}/finalize")
    assert done.status_code == 200 and done.json()["metadata"] == metadata


# ---------------------------------------------------------------- names

@pytest.mark.parametrize("field, value", [
    ("producer", "evil\x1b[31m"), ("producer", "a\u202eb"), ("run_id", "run\x00"), ("run_id", "r\u2066x"),
    ("target_profile", "t\x85"), ("assessment_profile", "a\u200fb"),
])
def test_control_and_bidi_characters_in_names_are_422(srv, db, field, value):
    body = {"producer": "p", field: value}
    problem = refused(srv, db, 422, "POST", "/v1/packages", json=body)
    assert field in problem["errors"]["json"]


@pytest.mark.parametrize("field", ["producer", "run_id", "target_profile"])
def test_lone_surrogates_in_names_are_422(srv, db, field):
    problem = refused(srv, db, 422, "POST", "/v1/packages", json={"producer": "p", field: "x\ud800"})
    assert "lone surrogate" in problem["detail"]


def test_control_characters_in_reasons_are_422(srv, db):
    pkg = new_package(srv.url)
    refused(srv, db, 422, "POST", f"/v1/packages/{pkg}/holds", json={"reason": "legal\u202e"})
    refused(srv, db, 422, "POST", f"/v1/packages/{pkg}/holds", json={"reason": "lone \udc00"})
    refused(srv, db, 422, "POST", f"/v1/packages/{pkg}/retention/extend", json={"days": 1, "reason": "x\x07"})
    refused(srv, db, 422, "DELETE", f"/v1/packages/{pkg}", params={"reason": "x\x1b"})
    refused(srv, db, 422, "POST", "/v1/packages", json={"producer": "p"},
            headers={"X-Actor": "me\u202e".encode().decode("latin-1")})  # U+202E's UTF-8 bytes


# ---------------------------------------------------------------- edge values

@pytest.mark.parametrize("path", [
    "/v1/audit?cursor=9223372036854775808",
    "/v1/audit?cursor=-1",
    "/v1/audit?cursor=abc",
    "/v1/audit?cursor=2147483648",  # past the id column (int4 on PostgreSQL)
    "/v1/audit?cursor=2147483647",  # well-formed, no such event
    "/v1/audit?since=0001-01-01T00:00:00%2B14:00",
    "/v1/audit?until=9999-12-31T23:59:59-14:00",
    "/v1/eligibility?as_of=9999-12-31T23:59:59-14:00",
    "/v1/packages?cursor=pkg_00000000000000000000000000",  # well-formed, no such package
    "/v1/packages?cursor=nope",
    "/v1/packages?limit=99999999999999999999999",
])
def test_out_of_range_values_and_unknown_cursors_are_422(srv, db, path):
    refused(srv, db, 422, "GET", path)


def test_extensions_past_year_9999_are_422(srv, db):
    pkg = new_package(srv.url)
    refused(srv, db, 422, "POST", f"/v1/packages/{pkg}/retention/extend",
            json={"expires_at": "9999-12-31T23:59:59-14:00", "reason": "r"})
    near = requests.post(f"{srv.url}/v1/packages/{pkg}/retention/extend",
                         json={"expires_at": "9999-12-01T00:00:00Z", "reason": "r"})
    assert near.status_code == 200, near.text
    problem = refused(srv, db, 422, "POST", f"/v1/packages/{pkg}/retention/extend", json={"days": 60, "reason": "r"})
    assert "past the year 9999" in problem["detail"]


def test_range_with_another_unit_is_ignored(srv):
    pkg = new_package(srv.url)
    requests.put(f"{srv.url}/v1/packages/{pkg}/files/r.txt", data=b"0123456789")
    answer = requests.get(f"{srv.url}/v1/packages/{pkg}/files/r.txt", headers={"Range": "items=0-1"})
    assert answer.status_code == 200 and answer.content == b"0123456789"
    assert "Content-Range" not in answer.headers


# ---------------------------------------------------------------- tar streams

def _headers(name: str, pax: dict[str, str], size: int = 4) -> bytes:
    """The header blocks tarfile writes for one member: a pax header (if any), then the ustar header."""
    import tarfile

    info = tarfile.TarInfo(name)
    info.size, info.pax_headers = size, pax
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _pax_member(name: str, pax: dict[str, str]) -> bytes:
    return _headers(name, pax) + b"data" + b"\0" * 508


def test_tar_extended_headers_are_capped_per_member(srv, db):
    pkg = new_package(srv.url)
    # two pax headers of 600 KiB each before one member: 1.2 MiB of extended headers for it
    one = _headers("a", {"comment": "x" * (600 << 10)})
    body = one[:-512] + one + b"data" + b"\0" * 508 + b"\0" * 1024
    problem = refused(srv, db, 422, "POST", f"/v1/packages/{pkg}/tar", data=body)
    assert "extended headers" in problem["detail"]


def test_tar_extended_headers_are_capped_per_batch(srv, db):
    pkg = new_package(srv.url)
    body = b"".join(_pax_member(f"m{i}", {"comment": "x" * (900 << 10)}) for i in range(20)) + b"\0" * 1024
    problem = refused(srv, db, 422, "POST", f"/v1/packages/{pkg}/tar", data=body)
    assert "extended headers of a tar stream" in problem["detail"]


def test_tar_folders_count_toward_the_header_limit(srv, db):
    import io
    import tarfile

    pkg = new_package(srv.url)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(60_000):
            info = tarfile.TarInfo(f"d{i}")
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
    problem = refused(srv, db, 422, "POST", f"/v1/packages/{pkg}/tar", data=buf.getvalue())
    assert "headers" in problem["detail"]


# ---------------------------------------------------------------- memory, last: over everything above

def test_memory_growth_over_the_hostile_corpus(served):
    """No request of this module raised the worker's peak RSS by more than 64 MiB over the warmed-up server."""
    server, _store, warm_kib = served
    alive(server.url)
    grown = (server.peak_rss_kib() - warm_kib) / 1024
    print(f"\nworker peak RSS: {warm_kib / 1024:.1f} MiB warmed up, "
          f"{server.peak_rss_kib() / 1024:.1f} MiB after the hostile corpus (+{grown:.1f} MiB)")
    assert grown < 64


# ---------------------------------------------------------------- failures inside: 503/507, no internals

def test_database_full_is_507(server, store):
    if store.db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's max_page_count is how a full database is made here")

    @event.listens_for(store.db.engine, "connect")
    def _full(dbapi_conn, _record):
        pages = dbapi_conn.execute("PRAGMA page_count").fetchone()[0]
        dbapi_conn.execute(f"PRAGMA max_page_count = {pages}")

    store.db.engine.dispose()
    before = counts(store)
    blob = "x" * 200_000  # more than the free pages left in the file
    problem = assert_problem(server.http.post(f"{server.url}/v1/packages",
                                              json={"producer": "p", "metadata": {"blob": blob}}), 507)
    assert "sqlite" not in problem["detail"].lower()
    event.remove(store.db.engine, "connect", _full)
    store.db.engine.dispose()
    assert counts(store) == before
    assert server.http.get(f"{server.url}/v1/retention-classes").status_code == 200


def test_storage_failure_is_503_without_keys_or_os_errors(server, store, tmp_path):
    root = store.storage.root
    pkg = server.create()["id"]
    for folder in ("staging", "blobs"):
        path = os.path.join(root, folder)
        if os.path.isdir(path):
            import shutil

            shutil.rmtree(path)
        with open(path, "w") as f:
            f.write("not a folder")
    before = counts(store)
    problem = assert_problem(server.put(pkg, "a.bin", os.urandom(3 * MIB)), 503)
    assert problem["detail"] == "the storage backend failed; try again later (the server log has the details)"
    assert set(problem) == {"type", "status", "title", "detail", "request_id"}  # no key, no OS error text
    assert counts(store) == before


# ---------------------------------------------------------------- leftovers of killed uploads

def test_gc_sweeps_leftovers_of_killed_uploads_after_the_grace(store):
    old, new = "blobs/aa/old-upload", "blobs/bb/new-upload"
    assert leave_stray_write(store.storage, old) and leave_stray_write(store.storage, new)
    stale = time.time() - 2 * 86400  # past the staging grace (a day)
    os.utime(os.path.join(store.storage.root, old + "#1"), (stale, stale))
    report = store.gc.run(actor="test")
    assert report.stray_writes_removed == 1
    assert [s.key for s in store.storage.stray_writes()] == [new]
