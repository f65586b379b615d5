"""Packs: a tar batch's small blobs are one object; reads, gc, verify and failures all hold with them."""

from __future__ import annotations

import base64
import hashlib
import os
from datetime import timedelta

from sqlalchemy import text
from ulid import ULID

from casstore import layout, packs
from tests.helpers import assert_problem, cli, make_tar, sha


def pack_keys(store) -> list[str]:
    return sorted(i.key for i in store.storage.list(layout.PACK_PREFIX))


def loose_keys(store) -> list[str]:
    return sorted(i.key for i in store.storage.list(layout.BLOB_PREFIX))


def locations(store) -> dict[str, tuple[str, int, int]]:
    with store.db.engine.connect() as conn:
        rows = conn.execute(text('SELECT blob_sha256, object_key, "offset", length FROM storage_location')).all()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def upload_tar(server, pkg: str, files: dict[str, bytes], **headers):
    return server.http.post(f"{server.url}/v1/packages/{pkg}/tar", data=make_tar(files),
                            headers={"Content-Type": "application/x-tar", **headers})


def test_a_batch_of_small_files_is_one_pack_that_reads_back_exactly(server, store):
    pkg = server.create()["id"]
    files = {f"logs/node{i % 3}/{i:03d} #{i}.log": os.urandom(100 + i * 13) for i in range(60)}
    files["copy-of-7.log"] = files["logs/node1/007 #7.log"]  # same bytes twice: stored once
    files["empty"] = b""
    assert upload_tar(server, pkg, files).status_code == 201
    [key] = pack_keys(store)
    assert loose_keys(store) == []  # no object per small file
    where = locations(store)
    index = {b.sha256: b for b in packs.read_index(store.storage, key)}
    assert set(index) == {sha(d) for d in files.values()}  # each distinct blob once, the pack says so itself
    for digest, (object_key, offset, length) in where.items():
        assert object_key == key and (index[digest].offset, index[digest].length) == (offset, length)
    for path, data in files.items():
        assert server.get(pkg, path).content == data
    target = files["logs/node2/050 #50.log"]
    part = server.get(pkg, "logs/node2/050 #50.log", headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == target[10:20]
    tail = server.get(pkg, "logs/node2/050 #50.log", headers={"Range": "bytes=-5"})
    assert tail.content == target[-5:]
    assert store.verify.run(deep=True).ok


def test_blobs_the_store_holds_are_not_packed_again(server, store):
    first = server.create()["id"]
    known = {f"k{i}": os.urandom(500) for i in range(5)}
    assert upload_tar(server, first, known).status_code == 201
    second = server.create()["id"]
    fresh = {f"f{i}": os.urandom(700) for i in range(4)}
    assert upload_tar(server, second, {**known, **fresh}).status_code == 201
    newest = pack_keys(store)[-1]
    assert {b.sha256 for b in packs.read_index(store.storage, newest)} == {sha(d) for d in fresh.values()}
    for path, data in {**known, **fresh}.items():
        assert server.get(second, path).content == data


def test_a_pack_goes_with_its_last_blob(server, store, settings):
    cli(settings, "retention-classes", "set", "transient", "--days", "0")
    a = server.create(retention_class="transient")["id"]
    files = {f"a{i}": os.urandom(300 + i) for i in range(6)}
    assert upload_tar(server, a, files).status_code == 201
    server.http.post(f"{server.url}/v1/packages/{a}/finalize")
    [key] = pack_keys(store)
    b = server.create(retention_class="transient")["id"]  # holds one blob of a's pack
    attached = server.http.post(f"{server.url}/v1/packages/{b}/attach",
                                json={"files": [{"path": "kept", "sha256": sha(files["a0"])}]})
    assert attached.status_code == 200 and attached.json()["missing"] == []
    server.http.post(f"{server.url}/v1/packages/{b}/finalize")
    assert server.http.delete(f"{server.url}/v1/packages/{a}", params={"reason": "expired"}).status_code == 200
    report = store.gc.run(actor="test", orphan_grace=timedelta(0))
    assert report.blobs_removed == 5  # a1..a5 (a tombstone keeps its manifest as the record)
    assert pack_keys(store) == [key]  # a0 still lives in it
    assert server.get(b, "kept").content == files["a0"]
    assert store.verify.run(deep=True).ok
    assert server.http.delete(f"{server.url}/v1/packages/{b}", params={"reason": "expired"}).status_code == 200
    store.gc.run(actor="test", orphan_grace=timedelta(0))
    assert pack_keys(store) == []
    manifests = {server.http.get(f"{server.url}/v1/packages/{p}").json()["manifest_digest"][7:] for p in (a, b)}
    assert set(locations(store)) == manifests  # all that is left: the tombstones' records
    assert loose_keys(store) == sorted(layout.blob_key(d) for d in manifests)
    assert store.verify.run().ok


def test_corrupt_or_lost_pack_is_found_and_the_next_upload_repairs(server, store, settings):
    pkg = server.create()["id"]
    files = {f"f{i}": os.urandom(2000) for i in range(8)}
    assert upload_tar(server, pkg, files).status_code == 201
    [key] = pack_keys(store)
    victim = sha(files["f3"])
    _, offset, _ = locations(store)[victim]
    with open(os.path.join(store.storage.root, key), "r+b") as f:
        f.seek(offset + 100)
        f.write(b"\0\0\0\0")  # inside f3's slice only
    assert store.verify.run().ok  # sizes still agree: only a re-hash can tell
    deep = cli(settings, "verify", "--deep")
    assert deep.returncode == 1
    assert [line.split("\t")[:2] for line in deep.stdout.splitlines() if line.startswith("corrupt")] \
        == [["corrupt", victim]]
    assert store.missing_blobs(sorted(map(sha, files.values()))) == [victim]
    again = server.create()["id"]
    assert upload_tar(server, again, {"fix": files["f3"], "other": b"other bytes"}).status_code == 201
    assert server.get(pkg, "f3").content == files["f3"]  # now read from the new pack
    assert cli(settings, "verify", "--deep").returncode == 0
    os.remove(os.path.join(store.storage.root, key))  # a disk loses the first pack
    lost = store.verify.run()
    assert {f.subject for f in lost.findings if f.kind == "blob-missing"} \
        == {sha(d) for p, d in files.items() if p != "f3"}


def test_deep_verify_checks_each_pack_index_against_the_database(server, store):
    pkg = server.create()["id"]
    assert upload_tar(server, pkg, {f"f{i}": os.urandom(300) for i in range(5)}).status_code == 201
    [key] = pack_keys(store)
    assert store.verify.run(deep=True).ok
    path = os.path.join(store.storage.root, key)
    with open(path, "rb") as f:
        body = f.read()
    first = packs.read_index(store.storage, key)[0]
    assert first.offset == 0  # so "0" becomes "1": the index keeps its length
    with open(path, "wb") as f:  # the index now puts the first blob one byte further
        f.write(body.replace(f'"{first.sha256}",0,'.encode(), f'"{first.sha256}",1,'.encode()))
    report = store.verify.run(deep=True)
    assert [(f.kind, f.subject) for f in report.findings] == [("pack-index", key)]


def test_unreferenced_packs_are_swept_only_when_old(server, store):
    young = layout.new_pack_key()
    old = f"{layout.PACK_PREFIX}{ULID.from_timestamp(1_000_000_000)}"  # made in 2001
    for key in (young, old):
        store.storage.put_stream(key, [b"left by an upload that died before its commit"])
    report = store.gc.run(actor="test", orphan_grace=timedelta(0))
    assert report.orphans_removed == 1 and pack_keys(store) == [young]  # a young pack may be about to be recorded
    report = store.verify.run()
    assert [(f.kind, f.subject) for f in report.findings] == [("pack-active", young)] and report.ok


def test_a_failed_batch_leaves_no_pack(server, store):
    pkg = server.create()["id"]
    server.put(pkg, "a", b"a")
    refused = upload_tar(server, pkg, {"a": b"new", "b": os.urandom(50), "c": os.urandom(60)})
    assert_problem(refused, 409)  # known only after the pack was written: the commit refuses, the pack goes
    assert pack_keys(store) == []
    body = make_tar({"x": os.urandom(10), "y": os.urandom(20)})
    wrong = "sha-256=:" + base64.b64encode(hashlib.sha256(body + b"!").digest()).decode() + ":"
    mismatch = server.http.post(f"{server.url}/v1/packages/{pkg}/tar", data=body,
                                headers={"Content-Type": "application/x-tar", "Content-Digest": wrong})
    assert_problem(mismatch, 422)
    assert pack_keys(store) == [] and [e["path"] for e in server.http.get(
        f"{server.url}/v1/packages/{pkg}/files").json()["items"]] == ["a"]
    right = "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
    ok = server.http.post(f"{server.url}/v1/packages/{pkg}/tar", data=body,
                          headers={"Content-Type": "application/x-tar", "Content-Digest": right})
    assert ok.status_code == 201
