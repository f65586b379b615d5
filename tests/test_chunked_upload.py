"""The producer's chunked path: ask which chunks are missing, send only those, the server assembles."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import blake3
import pytest
import requests
from sqlalchemy import text

from artifact_store.producer import chunked
from artifact_store.producer.client import ApiError, StoreClient
from casstore import chunking, layout
from tests.helpers import ROOT, assert_problem, requests_by_route, sha

MIB = 1 << 20


def write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def chunk_pack_bytes(store) -> int:
    return sum(i.size for i in store.storage.list(layout.KeyKind.CHUNK_PACK))


def test_only_missing_chunks_travel_and_the_server_hashes_the_file(server, store, tmp_path):
    client = StoreClient(server.url)
    first = random.Random(1).randbytes(30 * MIB)
    second = os.urandom(3 * MIB) + first[3 * MIB:]
    pkg = server.create()["id"]
    entry, sent = chunked.upload(client, pkg, "a.bin", write(tmp_path / "a.bin", first), sha(first), False)
    assert entry["sha256"] == sha(first) and sent == len(first)
    packed = chunk_pack_bytes(store)
    entry, sent = chunked.upload(client, pkg, "b.bin", write(tmp_path / "b.bin", second), sha(second), False)
    assert entry["sha256"] == sha(second) and 3 * MIB <= sent < 3 * MIB + 2 * chunking.MAX_SIZE
    assert chunk_pack_bytes(store) - packed < sent + 64 * 1024
    assert server.get(pkg, "b.bin").content == second
    files = server.http.post(f"{server.url}/v1/packages/{pkg}/finalize")
    manifest = server.http.get(f"{server.url}/v1/packages/{pkg}/manifest").json()["files"]
    assert {f["path"]: (f["sha256"], f["blake3"]) for f in manifest} == {
        "a.bin": (sha(first), blake3.blake3(first).hexdigest()),
        "b.bin": (sha(second), blake3.blake3(second).hexdigest())}
    assert files.status_code == 200
    assert store.verify.run(deep=True).findings == []


def test_server_refuses_a_chunk_whose_bytes_do_not_give_its_id(server, store, tmp_path):
    data = random.Random(2).randbytes(9 * MIB)
    path = write(tmp_path / "f.bin", data)
    recipe = chunked.recipe_of(path)
    wrong = b"x" * recipe[0].size
    doc = json.dumps({"chunker": chunking.CHUNKER, "chunks": [[e.chunk_id, e.size] for e in recipe]}).encode()
    from casstore.tarstream import tar_of
    body = tar_of([("recipe.json", doc), (recipe[0].chunk_id, wrong)])
    pkg = server.create()["id"]
    before = sorted(i.key for i in store.storage.list(""))
    r = server.http.post(f"{server.url}/v1/packages/{pkg}/chunked/f.bin", data=body)
    assert_problem(r, 422)
    assert sorted(i.key for i in store.storage.list("")) == before
    with store.db.engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM chunk")).scalar() == 0


def test_chunks_neither_sent_nor_held_are_listed(server, store, tmp_path):
    data = random.Random(3).randbytes(12 * MIB)
    path = write(tmp_path / "f.bin", data)
    recipe = chunked.recipe_of(path)
    client = StoreClient(server.url)
    pkg = server.create()["id"]
    size, body = chunked.body_of(path, recipe, {recipe[0].chunk_id}, None)
    try:
        client.upload_chunked(pkg, "f.bin", body, size, sha(data), False)
        raise AssertionError("accepted a file with missing chunks")
    except ApiError as exc:
        assert exc.status == 409
        assert set(exc.problem["missing_chunks"]) == {e.chunk_id for e in recipe[1:]}
    assert store.verify.run().findings == []
    entry, _ = chunked.upload(client, pkg, "f.bin", path, sha(data), False)
    assert entry["sha256"] == sha(data)
    # a wrong announced digest: 422, nothing recorded
    other = server.create()["id"]
    size, body = chunked.body_of(path, recipe, set(), None)
    try:
        client.upload_chunked(other, "f.bin", body, size, "0" * 64, False)
        raise AssertionError("accepted a file that hashes to another digest")
    except ApiError as exc:
        assert exc.status == 422
    assert server.http.get(f"{server.url}/v1/packages/{other}/files").json()["items"] == []


@pytest.mark.parametrize("kind", ["random", "zeros", "mixed", "never-meet"])
def test_a_file_cut_in_two_halves_at_once_is_cut_as_in_one_pass(tmp_path, kind):
    """recipe_of cuts a large file's halves on two threads and joins them where their cuts meet:
    the recipe is the one pass's, chunk for chunk (uniform data too, cut at the largest size),
    and the progress counts every byte once."""
    size = chunked.SPLIT_FROM + 9 * MIB + 12345
    data = {"random": lambda: random.Random(14).randbytes(size), "zeros": lambda: bytes(size),
            "mixed": lambda: os.urandom(size // 3) + bytes(size // 3) + os.urandom(size - 2 * (size // 3)),
            # zeros after a random start are cut at the largest size out of phase with the middle
            "never-meet": lambda: random.Random(15).randbytes(3 * MIB) + bytes(size - 3 * MIB)}[kind]()
    path = write(tmp_path / "f.bin", data)
    counted = []
    recipe = chunked.recipe_of(path, counted.append)
    one_pass = [chunking.RecipeEntry(chunking.chunk_id(c.data), c.offset, c.length)
                for c in chunking.new_cutter().cut_buf(data)]
    assert recipe == one_pass and len(recipe) > 2
    assert sum(counted) == size


def test_a_chunk_body_whose_file_is_gone_is_the_runs_error_not_the_networks(server, tmp_path):
    """A file removed between its cut and its send: RunDirError (exit 2), not Unreachable."""
    from artifact_store.producer.rundir import RunDirError

    path = write(tmp_path / "f.bin", random.Random(16).randbytes(12 * MIB))
    recipe = chunked.recipe_of(path)
    os.unlink(path)
    try:
        chunked.upload(StoreClient(server.url), server.create()["id"], "f.bin", path, None, False, recipe=recipe)
        raise AssertionError("the upload went on")
    except RunDirError as exc:
        assert "cannot read" in str(exc) and "No such file" in str(exc)


def test_missing_chunks_endpoint(server, tmp_path):
    data = random.Random(4).randbytes(10 * MIB)
    recipe = chunked.recipe_of(write(tmp_path / "f.bin", data))
    ids = [e.chunk_id for e in recipe]
    r = server.http.post(f"{server.url}/v1/chunks/missing", json={"chunks": ids})
    assert r.status_code == 200 and sorted(r.json()["missing"]) == sorted(set(ids))
    assert r.json()["chunker"] == chunking.CHUNKER
    pkg = server.create()["id"]
    assert server.put(pkg, "f.bin", data).status_code == 201
    assert server.http.post(f"{server.url}/v1/chunks/missing", json={"chunks": ids}).json()["missing"] == []
    assert_problem(server.http.post(f"{server.url}/v1/chunks/missing", json={"chunks": ["nothex"]}), 422)


def test_cli_sends_only_new_chunks_of_a_changed_capture(server, store, tmp_path):
    capture = random.Random(5).randbytes(40 * MIB)
    runs = []
    for i, data in enumerate([capture, os.urandom(4 * MIB) + capture[4 * MIB:]]):
        root = tmp_path / f"run{i}"
        (root / "raw").mkdir(parents=True)
        (root / "run.json").write_text(json.dumps({"schema": "guide-board.run/v1", "run_id": f"r{i}"}))
        (root / "raw" / "capture.bin").write_bytes(data)
        (root / "raw" / "log.txt").write_bytes(b"log %d" % i)
        runs.append((root, data))
    env = {**os.environ, "ARTIFACT_STORE_URL": server.url, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    results = []
    for root, _ in runs:
        proc = subprocess.run([sys.executable, "-m", "artifact_store.cli", "ingest", str(root), "--quiet"], env=env,
                              capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert proc.returncode == 0, proc.stderr
        results.append(json.loads(proc.stdout))
    assert results[0]["new_bytes"] >= 40 * MIB
    assert 4 * MIB <= results[1]["new_bytes"] < 4 * MIB + 2 * chunking.MAX_SIZE + 100
    for (root, data), result in zip(runs, results):
        got = server.get(result["package_id"], "raw/capture.bin").content
        assert hashlib.sha256(got).hexdigest() == sha(data)
    assert store.verify.run(deep=True).findings == []
    # the client never hashed the captures: the digests the server computed were cached, so an
    # unchanged run compares equal to its finalized package without reading its capture again
    proc = subprocess.run([sys.executable, "-m", "artifact_store.cli", "ingest", str(runs[1][0]), "--quiet"],
                          env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
    again = json.loads(proc.stdout)
    assert (again["package_id"], again["manifest_digest"], again["new_bytes"]) == (
        results[1]["package_id"], results[1]["manifest_digest"], 0)


def test_chunks_cut_by_another_chunker_are_refused(server, store):
    from casstore.tarstream import tar_of

    doc = json.dumps({"chunker": "fastcdc2020-min65536-avg262144-max1048576-nc1-seed0-b3dk1",
                      "chunks": [["a" * 64, 1000]]}).encode()
    pkg = server.create()["id"]
    body = assert_problem(server.http.post(f"{server.url}/v1/packages/{pkg}/chunked/f.bin",
                                           data=tar_of([("recipe.json", doc)])), 422)
    assert body["chunker"] == chunking.CHUNKER
    with store.db.engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM blob")).scalar() == 0


def test_a_finalized_run_is_compared_with_its_captures_without_the_cache(server, tmp_path):
    """Large files are hashed here only when a package must be compared path by path."""
    root = tmp_path / "run"
    (root / "raw").mkdir(parents=True)
    (root / "run.json").write_text(json.dumps({"schema": "guide-board.run/v1", "run_id": "cmp"}))
    capture = os.urandom(20 * MIB)
    (root / "raw" / "capture.bin").write_bytes(capture)

    def ingest(cache: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "ARTIFACT_STORE_URL": server.url, "XDG_CACHE_HOME": str(tmp_path / cache)}
        return subprocess.run([sys.executable, "-m", "artifact_store.cli", "ingest", str(root), "--quiet"], env=env,
                              capture_output=True, text=True, cwd=ROOT, timeout=300)

    first = json.loads(ingest("cache-1").stdout)
    same = json.loads(ingest("cache-2").stdout)  # no cache: the capture is hashed to compare
    assert (same["package_id"], same["new_bytes"]) == (first["package_id"], 0)
    (root / "raw" / "capture.bin").write_bytes(capture[:-1] + bytes([capture[-1] ^ 1]))
    changed = ingest("cache-3")
    assert changed.returncode == 2
    assert "raw/capture.bin (sha256" in changed.stderr


def test_copies_of_a_large_file_in_one_run_are_sent_once(server, tmp_path):
    root = tmp_path / "run"
    (root / "raw").mkdir(parents=True)
    (root / "run.json").write_text(json.dumps({"schema": "guide-board.run/v1", "run_id": "twins"}))
    capture = os.urandom(20 * MIB)
    for name in ("a.bin", "b.bin", "c.bin"):
        (root / "raw" / name).write_bytes(capture)
    env = {**os.environ, "ARTIFACT_STORE_URL": server.url, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "artifact_store.cli", "ingest", str(root), "--quiet", "--jobs", "3"],
                          env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["files"] == 4 and result["new_bytes"] < 21 * MIB  # one capture, not three
    manifest = requests.get(f"{server.url}/v1/packages/{result['package_id']}/manifest", timeout=10).json()
    assert {f["path"]: f["sha256"] for f in manifest["files"] if f["path"].endswith(".bin")} == {
        f"raw/{n}": sha(capture) for n in ("a.bin", "b.bin", "c.bin")}


def test_sampling_tells_a_file_new_to_the_store_from_one_it_holds_in_part(server, tmp_path):
    client = StoreClient(server.url)
    size = chunked.SAMPLE_FROM + 8 * MIB
    held = random.Random(6).randbytes(size)
    path = write(tmp_path / "held.bin", held)
    assert not chunked.sampled_chunks_held(client, path, size)  # nothing stored yet
    chunked.upload(client, server.create()["id"], "held.bin", path, sha(held), False)
    assert chunked.sampled_chunks_held(client, path, size)
    # the next run's capture: its first 10% rewritten, or only its last 30% kept
    assert chunked.sampled_chunks_held(client, write(tmp_path / "b.bin", os.urandom(size // 10) + held[size // 10:]),
                                       size)
    assert chunked.sampled_chunks_held(client, write(tmp_path / "c.bin", os.urandom(size * 7 // 10) +
                                                     held[size * 7 // 10:]), size)
    assert not chunked.sampled_chunks_held(client, write(tmp_path / "d.bin", os.urandom(size)), size)
    # zeros are cut at the maximum chunk size: no window holds a whole chunk, so no evidence: cut here
    assert chunked.sampled_chunks_held(client, write(tmp_path / "e.bin", bytes(size)), size)


def test_a_capture_new_to_the_store_is_sent_whole_and_its_next_version_as_new_chunks(server, store, tmp_path):
    """The CLI samples a large file: none of it held -> one PUT, cut by the server (no cutting
    here before the first byte travels); held in part -> cut here, only the new chunks sent."""
    size = chunked.SAMPLE_FROM + 8 * MIB
    capture = random.Random(7).randbytes(size)
    env = {**os.environ, "ARTIFACT_STORE_URL": server.url, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    put, post = ("PUT", "/v1/packages/{package_id}/files/{logical_path}"), \
        ("POST", "/v1/packages/{package_id}/chunked/{logical_path}")
    results = []
    for i, data in enumerate([capture, os.urandom(size // 10) + capture[size // 10:]]):
        root = tmp_path / f"run{i}"
        write(root / "raw" / "capture.bin", data)
        (root / "run.json").write_text(json.dumps({"schema": "guide-board.run/v1", "run_id": f"r{i}"}))
        before = requests_by_route(server)
        proc = subprocess.run([sys.executable, "-m", "artifact_store.cli", "ingest", str(root), "--quiet"], env=env,
                              capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert proc.returncode == 0, proc.stderr
        after = requests_by_route(server)
        results.append(json.loads(proc.stdout))
        sent = {k: after.get(k, 0) - before.get(k, 0) for k in (put, post)}
        assert sent == ({put: 1, post: 0} if i == 0 else {put: 0, post: 1})
        assert hashlib.sha256(server.get(results[-1]["package_id"], "raw/capture.bin").content).hexdigest() == sha(data)
    assert results[0]["new_bytes"] == size + len((tmp_path / "run0" / "run.json").read_bytes())
    assert size // 10 <= results[1]["new_bytes"] < size // 10 + 2 * chunking.MAX_SIZE + 100
    with store.db.engine.connect() as conn:  # the first capture was stored as chunks all the same
        chunks = conn.execute(text("SELECT COUNT(*), SUM(size) FROM chunk")).one()
    assert chunks[0] > size // chunking.MAX_SIZE
    assert size * 1.1 - 2 * chunking.MAX_SIZE < chunks[1] < size * 1.1 + 2 * chunking.MAX_SIZE
    assert store.verify.run(deep=True).findings == []


def test_a_large_file_that_changed_after_the_scan_is_an_error_not_a_silent_mix(server, tmp_path):
    """Sent whole or as chunks, a large file carries no digest of the client's: its stat after
    the upload must be the one scanned, or the ingest stops (exit 2) before finalizing."""
    from artifact_store.producer.hashcache import HashCache
    from artifact_store.producer.ingest import ChangedWhileReading, Ingestor
    from artifact_store.producer.rundir import load

    for size in (chunked.SAMPLE_FROM + MIB, 20 * MIB):  # sent whole; cut here
        root = tmp_path / f"run{size}"
        capture = write(root / "raw" / "capture.bin", os.urandom(size))
        (root / "run.json").write_text(json.dumps({"schema": "guide-board.run/v1", "run_id": f"c{size}"}))
        run = load(root)
        with open(capture, "r+b") as f:  # rewritten in place after the scan: same size, same inode
            f.write(os.urandom(MIB))
        scanned = next(f for f in run.files if f.path == "raw/capture.bin")
        os.utime(capture, ns=(scanned.mtime_ns + 10**9,) * 2)  # a second later, whatever the clock's grain
        try:
            Ingestor(StoreClient(server.url), run, HashCache(None)).ingest()
            raise AssertionError("the ingest went on")
        except ChangedWhileReading as exc:
            assert "raw/capture.bin changed while being ingested" in str(exc)
        found = server.http.get(f"{server.url}/v1/packages", params={"run_id": f"c{size}"}).json()["items"]
        assert [p["status"] for p in found] == ["uploading"]  # never finalized


@pytest.mark.parametrize("size,error,files", [
    (chunked.SAMPLE_FROM + MIB, "raw/capture.bin became shorter while being sent", 1),  # sent whole: run.json only
    (20 * MIB, "raw/capture.bin changed while being ingested", 2),  # cut here: what it held then, unfinalized
], ids=["sent-whole", "cut-here"])
def test_a_large_file_that_shrank_after_the_scan_stops_at_once(server, tmp_path, size, error, files):
    """Sent whole, it is read up to its scanned size: shorter is ChangedWhileReading as soon as it
    shows, not a body the server waits for until its timeout (nor a network error). Cut here,
    what was cut is sent, and the stat check stops the ingest before it finalizes."""
    from artifact_store.producer.hashcache import HashCache
    from artifact_store.producer.ingest import ChangedWhileReading, Ingestor
    from artifact_store.producer.rundir import load

    root = tmp_path / "run"
    capture = write(root / "raw" / "capture.bin", os.urandom(size))
    (root / "run.json").write_text(json.dumps({"schema": "guide-board.run/v1", "run_id": "shrank"}))
    run = load(root)
    os.truncate(capture, size // 2)
    started = time.monotonic()
    try:
        Ingestor(StoreClient(server.url, timeout=60), run, HashCache(None)).ingest()
        raise AssertionError("the ingest went on")
    except ChangedWhileReading as exc:
        assert error in str(exc)
    assert time.monotonic() - started < 20
    found = server.http.get(f"{server.url}/v1/packages", params={"run_id": "shrank"}).json()["items"]
    assert [(p["status"], p["file_count"]) for p in found] == [("uploading", files)]


def test_a_chunk_body_whose_file_shrank_while_sent_is_the_runs_error_not_the_networks(server, tmp_path):
    """body_of reads each chunk back when its turn comes: a file cut shorter meanwhile is
    ChangedWhileReading (exit 2, run again), not an OSError taken for a network failure (exit 1)."""
    from artifact_store.producer.ingest import ChangedWhileReading

    path = write(tmp_path / "f.bin", random.Random(13).randbytes(12 * MIB))
    recipe = chunked.recipe_of(path)
    os.truncate(path, 6 * MIB)
    try:
        chunked.upload(StoreClient(server.url), server.create()["id"], "f.bin", path, None, False, recipe=recipe)
        raise AssertionError("the upload went on")
    except ChangedWhileReading as exc:
        assert "became shorter while being sent" in str(exc)
