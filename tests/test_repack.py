"""Repacking: packs whose live bytes fell below half are rewritten; the old pack goes after a grace."""

from __future__ import annotations

import hashlib
import os
import random
from datetime import timedelta

import pytest
from sqlalchemy import text

from casstore import layout
from casstore.store import Store
from tests.helpers import BACKENDS, LiveServer, make_storage, make_tar

MIB = 1 << 20
NOW = dict(repack_min_age=timedelta(0), orphan_grace=timedelta(0))


def pack_keys(store, kind) -> dict[str, int]:
    return {i.key: i.size for i in store.storage.list(kind)}


def finalize(server, pkg):
    assert server.http.post(f"{server.url}/v1/packages/{pkg}/finalize").status_code == 200


def delete(server, pkg):
    assert server.http.delete(f"{server.url}/v1/packages/{pkg}", params={"reason": "test"}).status_code == 200


def test_a_mostly_dead_chunk_pack_is_rewritten_and_the_old_one_goes_after_its_grace(server, store):
    store.retention.set_class_days("transient", 0, actor="test")
    base = random.Random(1).randbytes(32 * MIB)
    kept_bytes = base[:6 * MIB] + os.urandom(6 * MIB)
    gone = server.create(retention_class="transient")["id"]
    assert server.put(gone, "a.bin", base).status_code == 201
    [old_pack] = pack_keys(store, layout.KeyKind.CHUNK_PACK)
    kept = server.create()["id"]
    assert server.put(kept, "b.bin", kept_bytes).status_code == 201
    for pkg in (gone, kept):
        finalize(server, pkg)
    delete(server, gone)
    download = store.files.download(kept, "b.bin")  # located before the repack, read after it
    report = store.gc.run(actor="test", **NOW)
    assert report.packs_repacked == 1 and report.retired_removed == 0
    assert 5 * MIB < report.repack_bytes_copied < 7 * MIB + 4 * MIB
    packs_now = pack_keys(store, layout.KeyKind.CHUNK_PACK)
    assert old_pack in packs_now and len(packs_now) == 3  # the old one stays for its grace
    assert b"".join(download.chunks) == kept_bytes
    findings = store.verify.run(deep=True).findings
    assert [(f.kind, f.subject) for f in findings] == [("pack-retired-active", old_pack)]
    report = store.gc.run(actor="test", repack_grace=timedelta(0), **NOW)
    assert report.retired_removed == 1 and 32 * MIB < report.retired_bytes_freed < 33 * MIB
    assert old_pack not in pack_keys(store, layout.KeyKind.CHUNK_PACK)
    assert sum(pack_keys(store, layout.KeyKind.CHUNK_PACK).values()) < 14 * MIB
    assert server.get(kept, "b.bin").content == kept_bytes
    part = server.get(kept, "b.bin", headers={"Range": f"bytes={5 * MIB}-{7 * MIB}"})
    assert part.content == kept_bytes[5 * MIB:7 * MIB + 1]
    assert store.verify.run(deep=True).findings == []


def test_a_mostly_dead_blob_pack_is_rewritten(server, store):
    store.retention.set_class_days("transient", 0, actor="test")
    files = {f"logs/{i}.log": os.urandom(3000) for i in range(40)}
    gone = server.create(retention_class="transient")["id"]
    r = server.http.post(f"{server.url}/v1/packages/{gone}/tar", data=make_tar(files))
    assert r.status_code == 201
    [old_pack] = pack_keys(store, layout.KeyKind.PACK)
    kept = server.create()["id"]
    keep = {p: files[p] for p in list(files)[:5]}
    assert server.http.post(f"{server.url}/v1/packages/{kept}/attach", json={"files": [
        {"path": p, "sha256": hashlib.sha256(d).hexdigest()} for p, d in keep.items()]}).ok
    finalize(server, gone)
    finalize(server, kept)
    delete(server, gone)
    report = store.gc.run(actor="test", repack_grace=timedelta(0), **NOW)
    assert report.packs_repacked == 1 and report.retired_removed == 1
    assert old_pack not in pack_keys(store, layout.KeyKind.PACK)
    for path, data in keep.items():
        assert server.get(kept, path).content == data
    with store.db.engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM retired_pack")).scalar() == 0
    assert store.verify.run(deep=True).findings == []


def test_a_pack_mostly_alive_is_left_as_it_is(server, store):
    store.retention.set_class_days("transient", 0, actor="test")
    base = random.Random(2).randbytes(16 * MIB)
    gone = server.create(retention_class="transient")["id"]
    kept = server.create()["id"]
    assert server.put(gone, "a.bin", base).status_code == 201
    assert server.put(kept, "b.bin", base[:12 * MIB] + b"x").status_code == 201
    finalize(server, gone)
    finalize(server, kept)
    delete(server, gone)
    report = store.gc.run(actor="test", repack_grace=timedelta(0), **NOW)
    assert report.packs_repacked == 0
    assert server.get(kept, "b.bin").content == base[:12 * MIB] + b"x"


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunked_files_and_repacking_on_every_backend(backend, settings, tmp_path):
    """The whole chunk life on each backend: chunked PUT, CLI upload, ranges, gc, repack, verify."""
    from artifact_store.producer import chunked
    from artifact_store.producer.client import StoreClient

    store = Store(settings, storage=make_storage(backend, tmp_path))
    server = LiveServer(store)
    try:
        store.retention.set_class_days("transient", 0, actor="test")
        base = random.Random(9).randbytes(24 * MIB)
        kept_bytes = base[:6 * MIB] + os.urandom(3 * MIB)
        gone = server.create(retention_class="transient")["id"]
        kept = server.create()["id"]
        assert server.put(gone, "a.bin", base).status_code == 201
        path = tmp_path / "b.bin"
        path.write_bytes(kept_bytes)
        entry, sent = chunked.upload(StoreClient(server.url), kept, "b.bin", str(path),
                                     hashlib.sha256(kept_bytes).hexdigest(), False)
        assert sent < 3 * MIB + 8 * MIB
        part = server.get(kept, "b.bin", headers={"Range": f"bytes={5 * MIB}-{7 * MIB}"})
        assert part.status_code == 206 and part.content == kept_bytes[5 * MIB:7 * MIB + 1]
        for pkg in (gone, kept):
            finalize(server, pkg)
        delete(server, gone)
        report = store.gc.run(actor="test", repack_grace=timedelta(0), **NOW)
        assert report.chunks_removed > 0 and report.packs_repacked == 1 and report.retired_removed == 1
        assert server.get(kept, "b.bin").content == kept_bytes
        final = store.verify.run(deep=True)
        assert final.findings == [] and final.complete
    finally:
        server.close()
        store.close()
