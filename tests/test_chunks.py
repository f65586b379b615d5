"""Chunked large files: stored once per chunk, served whole and by range, collected, verified, repaired."""

from __future__ import annotations

import hashlib
import os
import random
from datetime import timedelta

import blake3
import pytest
from sqlalchemy import text

from casstore import chunking, layout
from tests.helpers import sha

MIB = 1 << 20


def capture(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def chunk_pack_bytes(store) -> int:
    return sum(i.size for i in store.storage.list(layout.KeyKind.CHUNK_PACK))


def rows(store, sql: str):
    with store.db.engine.connect() as conn:
        return conn.execute(text(sql)).all()


def test_compiled_chunker_and_domain_separated_ids():
    import pyfastcdc

    assert pyfastcdc.FastCDC.__module__.startswith("pyfastcdc.cy")
    assert type(chunking.new_cutter()).__module__.startswith("pyfastcdc.cy")
    data = b"evidence" * 1000
    assert chunking.chunk_id(data) != blake3.blake3(data).hexdigest() != hashlib.sha256(data).hexdigest()
    assert chunking.CHUNKER == "fastcdc2020-min262144-avg1048576-max4194304-nc1-seed0-b3dk1"


def test_large_put_is_stored_as_chunks_and_reads_back_whole_and_by_range(server, store):
    pkg = server.create()["id"]
    data = capture(1, 20 * MIB + 12345)
    r = server.put(pkg, "raw/capture.bin", data, headers={"X-Checksum-Sha256": sha(data)})
    assert r.status_code == 201, r.text
    assert r.json()["sha256"] == sha(data)
    [(chunker, size)] = rows(store, "SELECT chunker, size FROM blob WHERE chunker IS NOT NULL")
    assert chunker == chunking.CHUNKER and size == len(data)
    assert rows(store, "SELECT COUNT(*) FROM storage_location")[0][0] == 0
    recipe = rows(store, "SELECT bc.\"offset\", c.size FROM blob_chunk bc JOIN chunk c ON c.id = bc.chunk_id "
                         "ORDER BY bc.\"offset\"")
    assert len(recipe) >= 10 and sum(n for _, n in recipe) == len(data)
    got = server.get(pkg, "raw/capture.bin")
    assert got.content == data and got.headers["X-Checksum-Blake3"] == blake3.blake3(data).hexdigest()
    boundary = recipe[5][0]
    for first, last in [(0, 0), (boundary - 10, boundary + 10), (boundary, boundary), (7 * MIB, 15 * MIB),
                        (len(data) - 1, len(data) - 1)]:
        part = server.get(pkg, "raw/capture.bin", headers={"Range": f"bytes={first}-{last}"})
        assert part.status_code == 206 and part.content == data[first:last + 1]
    suffix = server.get(pkg, "raw/capture.bin", headers={"Range": "bytes=-5000"})
    assert suffix.content == data[-5000:]
    manifest = server.http.post(f"{server.url}/v1/packages/{pkg}/finalize")
    assert manifest.status_code == 200
    files = server.http.get(f"{server.url}/v1/packages/{pkg}/manifest").json()["files"]
    assert files == [{"path": "raw/capture.bin", "sha256": sha(data), "blake3": blake3.blake3(data).hexdigest(),
                      "size": len(data), "media_type": "application/octet-stream"}]
    report = store.verify.run(deep=True)
    assert report.findings == [] and report.complete


def test_second_run_stores_only_the_chunks_that_changed(server, store):
    first = capture(2, 40 * MIB)
    second = os.urandom(4 * MIB) + first[4 * MIB:]  # the first 10% rewritten
    third = first[:25 * MIB] + os.urandom(MIB) + first[25 * MIB:]  # 1 MiB inserted
    pkg = server.create()["id"]
    assert server.put(pkg, "a.bin", first).status_code == 201
    stored = chunk_pack_bytes(store)
    assert len(first) <= stored < len(first) + 64 * 1024  # the chunks, plus the pack's index
    assert server.put(pkg, "b.bin", second).status_code == 201
    grown = chunk_pack_bytes(store) - stored
    assert 4 * MIB <= grown < 4 * MIB + 2 * chunking.MAX_SIZE
    stored = chunk_pack_bytes(store)
    assert server.put(pkg, "c.bin", third).status_code == 201
    assert chunk_pack_bytes(store) - stored < MIB + 2 * chunking.MAX_SIZE
    # the same file again, at another path: a whole-file hit, nothing written, no pack left over
    before = sorted(i.key for i in store.storage.list(""))
    assert server.put(pkg, "copy/a.bin", first).status_code == 201
    assert sorted(i.key for i in store.storage.list("")) == before
    for path, data in (("a.bin", first), ("b.bin", second), ("c.bin", third), ("copy/a.bin", first)):
        assert server.get(pkg, path).content == data
    assert store.verify.run(deep=True).findings == []


def test_a_range_reads_only_the_chunks_it_overlaps(server, store):
    base = capture(3, 24 * MIB)
    changed = base[:12 * MIB] + os.urandom(12 * MIB)
    pkg = server.create()["id"]
    assert server.put(pkg, "base.bin", base).status_code == 201
    [old_pack] = [i.key for i in store.storage.list(layout.KeyKind.CHUNK_PACK)]
    assert server.put(pkg, "changed.bin", changed).status_code == 201
    store.storage.delete(old_pack)  # whatever lies only there can no longer be read
    tail = server.get(pkg, "changed.bin", headers={"Range": f"bytes={18 * MIB}-{20 * MIB - 1}"})
    assert tail.status_code == 206 and tail.content == changed[18 * MIB:20 * MIB]


def test_retried_put_answers_as_first_and_leaves_no_pack(server, store):
    pkg = server.create()["id"]
    data = capture(4, 10 * MIB)
    assert server.put(pkg, "f.bin", data).status_code == 201
    keys = sorted(i.key for i in store.storage.list(""))
    again = server.put(pkg, "f.bin", data)
    assert again.status_code == 200 and again.json()["sha256"] == sha(data)
    assert sorted(i.key for i in store.storage.list("")) == keys


def test_gc_collects_chunks_no_file_holds_and_keeps_shared_ones(server, store):
    store.retention.set_class_days("transient", 0, actor="test")
    shared = capture(5, 16 * MIB)
    own = os.urandom(12 * MIB)
    gone = server.create(retention_class="transient")["id"]
    kept = server.create()["id"]
    assert server.put(gone, "x.bin", shared + own).status_code == 201
    assert server.put(kept, "y.bin", shared + b"tail" * 1000).status_code == 201
    for pkg in (gone, kept):
        assert server.http.post(f"{server.url}/v1/packages/{pkg}/finalize").status_code == 200
    eligible = store.eligibility.report()
    [entry] = [p for p in eligible.packages if p.package_id == gone]
    own_chunks = rows(store, "SELECT SUM(c.size) FROM chunk c WHERE c.refcount = 1 AND c.id IN "
                             "(SELECT chunk_id FROM blob_chunk bc JOIN file_entry f ON f.blob_sha256 = bc.blob_sha256 "
                             f"WHERE f.package_id = '{gone}')")[0][0]
    assert 10 * MIB < own_chunks < 16 * MIB  # the tail, and the chunk where it meets the shared part
    assert entry.reclaimable_bytes == own_chunks and eligible.reclaimable_bytes == own_chunks
    assert server.http.delete(f"{server.url}/v1/packages/{gone}", params={"reason": "test"}).status_code == 200
    before = rows(store, "SELECT COUNT(*) FROM chunk")[0][0]
    report = store.gc.run(actor="test", orphan_grace=timedelta(0))
    assert report.chunks_removed == before - rows(store, "SELECT COUNT(*) FROM chunk")[0][0] > 0
    assert rows(store, "SELECT COUNT(*) FROM chunk WHERE refcount = 0")[0][0] == 0
    assert server.get(kept, "y.bin").content == shared + b"tail" * 1000
    assert store.verify.run(deep=True).findings == []


def test_verify_deep_reports_a_damaged_chunk_and_the_next_upload_repairs_it(server, store, tmp_path):
    pkg = server.create()["id"]
    data = capture(6, 12 * MIB)
    assert server.put(pkg, "f.bin", data).status_code == 201
    [(cid, key, offset)] = rows(store, "SELECT id, object_key, \"offset\" FROM chunk ORDER BY \"offset\" LIMIT 1 "
                                       "OFFSET 3")
    path = os.path.join(store.storage.root, key)
    with open(path, "r+b") as f:
        f.seek(offset + 100)
        byte = f.read(1)
        f.seek(offset + 100)
        f.write(bytes([byte[0] ^ 0xFF]))
    report = store.verify.run(deep=True)
    kinds = {(f.kind, f.subject) for f in report.findings}
    assert ("chunk-corrupt", cid) in kinds
    assert rows(store, f"SELECT state FROM chunk WHERE id = '{cid}'") == [("missing",)]
    assert server.http.post(f"{server.url}/v1/blobs/missing", json={"digests": [sha(data)]}).json()["missing"] \
        == [sha(data)]
    other = server.create()["id"]
    assert server.put(other, "again.bin", data).status_code == 201  # carries the chunk again
    assert rows(store, f"SELECT state FROM chunk WHERE id = '{cid}'") == [("present",)]
    assert server.get(pkg, "f.bin").content == data
    assert store.verify.run(deep=True).findings == []


@pytest.mark.parametrize("size", [chunking.THRESHOLD, chunking.THRESHOLD + 1])
def test_threshold(server, store, size):
    pkg = server.create()["id"]
    data = capture(7, size)
    assert server.put(pkg, "f.bin", data).status_code == 201
    chunked = rows(store, "SELECT COUNT(*) FROM blob WHERE chunker IS NOT NULL")[0][0]
    assert chunked == (1 if size > chunking.THRESHOLD else 0)
    assert server.get(pkg, "f.bin").content == data
