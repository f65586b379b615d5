"""Real threads through a real server: the same and different blobs into several packages at once."""

from __future__ import annotations

import hashlib
import os
import random
from concurrent.futures import ThreadPoolExecutor

import requests
from sqlalchemy import text

from casstore import layout

SHARED = [os.urandom(n) for n in (0, 1, 4096, 2 << 20)]  # the same bytes, uploaded by everyone at once


def test_concurrent_uploads_same_and_different_blobs(server, store):
    packages = [server.create(run_id=f"conc-{i}")["id"] for i in range(6)]
    plan = []
    for pkg in packages:
        for j, data in enumerate(SHARED):
            plan.append((pkg, f"shared/{j}.bin", data))
        for j in range(8):
            plan.append((pkg, f"own/{j}.bin", os.urandom(random.choice([10, 5000, 1_500_000]))))
    random.shuffle(plan)

    def upload(item):
        pkg, path, data = item
        with requests.Session() as http:
            response = http.put(server.file_url(pkg, path), data=data)
        return response.status_code, response.text

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(upload, plan))
    assert all(status == 201 for status, _ in results), [r for r in results if r[0] != 201][:3]

    def finalize(pkg):
        return server.http.post(f"{server.url}/v1/packages/{pkg}/finalize").status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        assert set(pool.map(finalize, packages)) == {200}

    distinct = {hashlib.sha256(d).hexdigest() for _, _, d in plan}
    with store.db.engine.connect() as conn:
        rows = dict(conn.execute(text("SELECT sha256, refcount FROM blob")).all())
    manifests = len(packages)
    assert len(rows) == len(distinct) + manifests
    for data in SHARED:
        assert rows[hashlib.sha256(data).hexdigest()] == len(packages)
    assert len([i for i in store.storage.list("blobs/")]) == len(rows)
    for pkg, path, data in plan:
        assert server.get(pkg, path).content == data
    report = store.verify.run(deep=True)
    assert report.findings == [] and report.complete
    assert store.storage.head(layout.blob_key(hashlib.sha256(SHARED[3]).hexdigest())).size == len(SHARED[3])


def test_concurrent_finalize_and_upload_to_one_package(server, store):
    """Finalize beside uploads to the same package: each upload either lands in the manifest or gets 409."""
    for _round in range(5):
        pkg = server.create()["id"]
        server.put(pkg, "first", b"first")

        def upload(i):
            with requests.Session() as http:
                return i, http.put(server.file_url(pkg, f"f{i}"), data=os.urandom(2000)).status_code

        with ThreadPoolExecutor(max_workers=8) as pool:
            futures = [pool.submit(upload, i) for i in range(12)]
            final = pool.submit(lambda: server.http.post(f"{server.url}/v1/packages/{pkg}/finalize"))
            statuses = dict(f.result() for f in futures)
            assert final.result().status_code == 200
        assert set(statuses.values()) <= {201, 409}
        manifest = server.http.get(f"{server.url}/v1/packages/{pkg}/manifest").json()
        in_manifest = {f["path"] for f in manifest["files"]}
        assert in_manifest == {"first"} | {f"f{i}" for i, s in statuses.items() if s == 201}
    assert store.verify.run().findings == []


def test_concurrent_creates_of_one_run_make_one_package(server):
    def create(_):
        with requests.Session() as http:
            r = http.post(f"{server.url}/v1/packages", json={"producer": "guide-board", "run_id": "race"})
            return r.status_code, r.json()

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(create, range(16)))
    created = [body["id"] for status, body in results if status == 201]
    conflicts = [body["package_id"] for status, body in results if status == 409]
    assert len(created) == 1 and len(conflicts) == 15 and set(conflicts) == set(created)
