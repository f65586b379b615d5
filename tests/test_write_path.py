"""The write path never lies, and every request can be repeated (invariants 7 and 8).

Truncated and broken bodies go through ``artifact-store serve`` itself over raw
sockets: how an early end looks to the application depends on the server, and
that server is the one users run. Each case asserts the status, that nothing
was recorded, and that nothing is left on the backend.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from casstore.config import Settings
from casstore.store import Store
from tests.helpers import ServerProcess, assert_problem, counts, make_tar, remaining_keys, sha


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A real `artifact-store serve` over SQLite and a local folder, and a Store on the same files."""
    root = tmp_path_factory.mktemp("served")
    env = {"ARTIFACT_STORE_DATA_DIR": str(root)}
    server = ServerProcess(env, workers=2, log_path=str(root / "server.log")).start()
    store = Store(Settings.from_env(env))
    yield server, store
    server.stop()
    store.close()


def raw_exchange(port: int, head: str, body_parts: list[bytes], timeout: float = 20) -> tuple[int, dict, bytes]:
    """Send a request head and body parts, then end our side of the connection; read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(head.encode("latin-1"))
        for part in body_parts:
            conn.sendall(part)
        conn.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    header_block, _, body = rest.partition(b"\r\n\r\n")
    headers = {}
    for line in header_block.split(b"\r\n"):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def assert_refused_and_nothing_left(served, status: int, headers: dict, body: bytes, expected_status: int,
                                    before: dict) -> dict:
    server, store = served
    assert status == expected_status, body[:500]
    assert headers["content-type"] == "application/problem+json"
    problem = json.loads(body)
    assert problem["status"] == expected_status
    assert (counts(store), keys(store)) == before
    assert requests.get(f"{server.url}/v1/health", timeout=10).status_code == 200  # still answers
    return problem


def snapshot(store) -> tuple[dict, list[str]]:
    return counts(store), keys(store)


def keys(store) -> list[str]:
    """Every object and temporary file on the backend but the health probe's."""
    return [k for k in remaining_keys(store.storage) if not k.startswith("health/")]


def members_only(tar: bytes) -> bytes:
    """An archive without its end-of-archive marker and padding (its members end in b"x")."""
    body = tar.rstrip(b"\0")
    return body + bytes(-len(body) % 512)


def new_package(server) -> str:
    response = requests.post(f"{server.url}/v1/packages", json={"producer": "test"}, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.mark.parametrize("announced,sent", [(1000, 10), (100, 0), (20 << 20, 5 << 20)],
                         ids=["10-of-1000", "none-of-100", "5MiB-of-20MiB"])
def test_a_put_shorter_than_its_content_length_is_refused(served, announced, sent):
    server, store = served
    pkg = new_package(server)
    before = snapshot(store)
    head = (f"PUT /v1/packages/{pkg}/files/raw/capture.bin HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {announced}\r\nConnection: close\r\n\r\n")
    status, headers, body = raw_exchange(server.port, head, [os.urandom(sent)] if sent else [])
    problem = assert_refused_and_nothing_left(served, status, headers, body, 400, before)
    assert problem["title"] == "Incomplete body"
    assert requests.get(f"{server.url}/v1/packages/{pkg}/files/raw/capture.bin", timeout=10).status_code == 404


@pytest.mark.parametrize("chunks", [
    [b"5\r\nhello\r\n"],                               # cut before the last chunk
    [b"5\r\nhello\r\n", b"400000\r\n", bytes(1000)],   # cut inside a large chunk
    [b"zz\r\nhello\r\n0\r\n\r\n"],                     # a chunk size that is not hex
    [b"100000\r\n" + bytes(1 << 20) + b"\r\n"] * 12,   # 12 MiB of a large file, then nothing: cut as it came
], ids=["no-last-chunk", "cut-inside-a-chunk", "bad-chunk-size", "large-file-cut-after-12MiB"])
def test_a_broken_chunked_put_is_refused(served, chunks):
    server, store = served
    pkg = new_package(server)
    before = snapshot(store)
    head = (f"PUT /v1/packages/{pkg}/files/log.txt HTTP/1.1\r\nHost: x\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    status, headers, body = raw_exchange(server.port, head, chunks)
    assert_refused_and_nothing_left(served, status, headers, body, 400, before)


@pytest.mark.parametrize("pieces", [[b"hello", b" world"], [os.urandom(1 << 20) for _ in range(12)]],
                         ids=["small", "large-cut-as-it-comes"])
def test_a_whole_chunked_put_is_recorded(served, pieces):
    server, _ = served
    pkg = new_package(server)
    head = (f"PUT /v1/packages/{pkg}/files/log.txt HTTP/1.1\r\nHost: x\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    framed = [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces] + [b"0\r\n\r\n"]
    status, _, body = raw_exchange(server.port, head, framed)
    assert status == 201, body
    assert json.loads(body)["sha256"] == sha(b"".join(pieces))
    got = requests.get(f"{server.url}/v1/packages/{pkg}/files/log.txt", timeout=30)
    assert got.content == b"".join(pieces)


def test_a_tar_batch_cut_between_members_is_refused(served):
    server, store = served
    pkg = new_package(server)
    members = {f"logs/{i}.log": b"x" * 3000 for i in range(3)}
    tar = make_tar(members)
    cut = members_only(make_tar(dict(list(members.items())[:2])))  # the first two members, byte for byte
    assert tar.startswith(cut)
    before = snapshot(store)
    head = (f"POST /v1/packages/{pkg}/tar HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-tar\r\n"
            f"Content-Length: {len(tar)}\r\nConnection: close\r\n\r\n")
    status, headers, body = raw_exchange(server.port, head, [cut])
    assert_refused_and_nothing_left(served, status, headers, body, 400, before)


def test_a_whole_body_that_is_not_a_whole_archive_is_refused(served):
    server, store = served
    pkg = new_package(server)
    tar = make_tar({f"logs/{i}.log": b"x" * 3000 for i in range(3)})
    without_marker = members_only(tar)
    with_trailer = tar + b"trailing bytes"
    for body_bytes in (without_marker, with_trailer):
        before = snapshot(store)
        response = requests.post(f"{server.url}/v1/packages/{pkg}/tar", data=body_bytes, timeout=30,
                                 headers={"Content-Type": "application/x-tar"})
        assert_problem(response, 422)
        assert snapshot(store) == before


def test_the_same_put_sent_again_answers_200_with_the_entry(server, store):
    pkg = server.create()["id"]
    data = os.urandom(5000)
    first = server.put(pkg, "reports/a b#?.json", data)
    assert first.status_code == 201, first.text
    before = counts(store)
    again = server.put(pkg, "reports/a b#?.json", data)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert counts(store) == before  # a retry records nothing, not even an audit event
    other = server.put(pkg, "reports/a b#?.json", b"other bytes")
    assert_problem(other, 409)
    assert server.put(pkg, "reports/a b#?.json", b"other bytes", params={"replace": "true"}).status_code == 201
    assert server.get(pkg, "reports/a b#?.json").content == b"other bytes"


def test_a_large_put_sent_again_is_a_retry_too(server, store):
    pkg = server.create()["id"]
    data = os.urandom((1 << 20) + 100)  # staged, not in memory
    assert server.put(pkg, "capture.bin", data).status_code == 201
    assert server.put(pkg, "capture.bin", data).status_code == 200
    assert [k for k in remaining_keys(store.storage) if k.startswith("staging/")] == []


def test_the_same_tar_batch_and_attach_sent_again_answer_as_on_success(server, store):
    pkg = server.create()["id"]
    files = {f"logs/{i}.log": os.urandom(100 + i) for i in range(20)}
    tar = make_tar(files)
    first = server.http.post(f"{server.url}/v1/packages/{pkg}/tar", data=tar)
    assert first.status_code == 201, first.text
    before = counts(store)
    again = server.http.post(f"{server.url}/v1/packages/{pkg}/tar", data=tar)
    assert again.status_code == 201, again.text
    assert again.json() == first.json()
    assert counts(store) == before
    changed = make_tar({**files, "logs/0.log": b"changed"})
    assert_problem(server.http.post(f"{server.url}/v1/packages/{pkg}/tar", data=changed), 409)
    assert counts(store) == before

    attach = {"files": [{"path": f"copy/{p}", "sha256": sha(d)} for p, d in files.items()]}
    first = server.http.post(f"{server.url}/v1/packages/{pkg}/attach", json=attach)
    assert first.status_code == 200 and first.json()["missing"] == []
    before = counts(store)
    again = server.http.post(f"{server.url}/v1/packages/{pkg}/attach", json=attach)
    assert again.status_code == 200 and again.json() == first.json()
    assert counts(store) == before


def test_concurrent_finalizes_all_answer_200_with_one_manifest_digest(server, store):
    pkg = server.create()["id"]
    for i in range(30):
        assert server.put(pkg, f"f{i}.log", os.urandom(50)).status_code == 201
    start = threading.Barrier(10)

    def finalize(_):
        start.wait()
        with requests.Session() as http:
            response = http.post(f"{server.url}/v1/packages/{pkg}/finalize")
        return response.status_code, response.json().get("manifest_digest")

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(finalize, range(10)))
    assert {status for status, _ in results} == {200}
    digests = {d for _, d in results}
    assert len(digests) == 1 and None not in digests
    manifest = server.http.get(f"{server.url}/v1/packages/{pkg}/manifest").content
    assert f"sha256:{sha(manifest)}" == digests.pop()
    report = store.verify.run(deep=True)
    assert report.ok, [f.line() for f in report.findings]


@pytest.mark.parametrize("where", ["threads", "processes"])
def test_same_new_bytes_by_put_and_tar_at_once_leave_verify_clean(request, where):
    """A PUT and a tar batch (and two tar batches) racing with the same new small bytes, on one
    process's threads (the in-process server) or across two gunicorn workers."""
    if where == "threads":
        url, store = request.getfixturevalue("server").url, request.getfixturevalue("store")
    else:
        served = request.getfixturevalue("served")
        url, store = served[0].url, served[1]

    def create(run_id):
        response = requests.post(f"{url}/v1/packages", json={"producer": "test", "run_id": run_id}, timeout=30)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def put(pkg, files):
        with requests.Session() as http:
            for path, data in files.items():
                r = http.put(f"{url}/v1/packages/{pkg}/files/{path}", data=data)
                assert r.status_code == 201, r.text

    def tar(pkg, files):
        with requests.Session() as http:
            r = http.post(f"{url}/v1/packages/{pkg}/tar", data=make_tar(files))
            assert r.status_code == 201, r.text

    with ThreadPoolExecutor(6) as pool:
        for i in range(40):
            shared = {f"s/{j}.log": os.urandom(200 + j) for j in range(6)}
            pkgs = [create(f"race-{where}-{i}-{k}") for k in range(3)]
            for f in [pool.submit(put, pkgs[0], shared), pool.submit(tar, pkgs[1], shared),
                      pool.submit(tar, pkgs[2], shared)]:
                f.result()
    report = store.verify.run(deep=True)
    assert report.ok, [f.line() for f in report.findings][:20]
    assert not [k for k in remaining_keys(store.storage) if k.startswith("staging/")]


def chunk_upload(tmp_path, name: str, mib: int, damage: bool = False) -> tuple[bytes, bytes]:
    """(the file's bytes, the body of its chunk upload sending every chunk); ``damage`` flips a byte
    of the last chunk, whose id then does not match."""
    from artifact_store.producer import chunked

    data = os.urandom(mib << 20)
    path = tmp_path / name
    path.write_bytes(data)
    recipe = chunked.recipe_of(str(path))
    _, stream = chunked.body_of(str(path), recipe, {e.chunk_id for e in recipe}, None)
    body = b"".join(stream)
    if damage:
        body = body[:-2000] + bytes([body[-2000] ^ 1]) + body[-1999:]
    return data, body


def chunk_head(pkg: str, path: str, body: bytes, close: bool = False) -> bytes:
    return (f"POST /v1/packages/{pkg}/chunked/{path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            + ("Connection: close\r\n" if close else "") + "\r\n").encode()


def test_a_chunk_upload_cut_short_is_refused(served, tmp_path):
    server, store = served
    pkg = new_package(server)
    _, body = chunk_upload(tmp_path, "capture.bin", 12)
    before = snapshot(store)
    status, headers, answer = raw_exchange(server.port, chunk_head(pkg, "capture.bin", body, close=True).decode(),
                                           [body[:len(body) * 6 // 10]])
    problem = assert_refused_and_nothing_left(served, status, headers, answer, 400, before)
    assert problem["title"] == "Incomplete body"


def test_chunk_uploads_keep_a_kept_alive_connection_in_step(served, tmp_path):
    """Chunk bodies are read from the socket past gunicorn's reader (artifact_store/server.py,
    DirectBody): the bytes that came with the head come first, and a body the application
    stops reading (a damaged chunk: 422) is drained to its end, so the next request on the
    same connection is read from its first byte."""
    server, _ = served
    pkg = new_package(server)
    good, good_body = chunk_upload(tmp_path, "good.bin", 12)
    _, bad_body = chunk_upload(tmp_path, "bad.bin", 12, damage=True)
    first = chunk_head(pkg, "good.bin", good_body) + good_body[:100_000]  # part of the body with the head
    rest = [good_body[100_000:5 << 20], good_body[5 << 20:]]
    then = [chunk_head(pkg, "bad.bin", bad_body) + bad_body,
            b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"]
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
        def send() -> None:
            conn.sendall(first)
            for part in rest + then:
                time.sleep(0.05)
                conn.sendall(part)

        sender = threading.Thread(target=send)
        sender.start()
        answers = read_answers(conn, 3)
        sender.join()
    assert [status for status, _ in answers] == [201, 422, 200], answers
    assert json.loads(answers[0][1])["sha256"] == sha(good)
    assert json.loads(answers[1][1])["title"] == "Digest mismatch"
    assert json.loads(answers[2][1])["status"] == "ok"
    download = requests.get(f"{server.url}/v1/packages/{pkg}/files/good.bin", timeout=30)
    assert download.content == good
    assert requests.get(f"{server.url}/v1/packages/{pkg}/files/bad.bin", timeout=10).status_code == 404


def read_answers(conn: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """``count`` HTTP answers read in turn from one connection: (status, body)."""
    import http.client

    class Shared:  # every answer reads from the same buffered stream (none swallows the next) and
        def __init__(self, stream) -> None:  # none closes it
            self.stream = stream

        def __getattr__(self, name):
            return getattr(self.stream, name)

        def close(self) -> None:
            pass

    stream = Shared(conn.makefile("rb"))

    class OneReader:
        def makefile(self, *_args, **_kwargs):
            return stream

    answers = []
    for _ in range(count):
        response = http.client.HTTPResponse(OneReader())
        response.begin()
        answers.append((response.status, response.read()))
    return answers
