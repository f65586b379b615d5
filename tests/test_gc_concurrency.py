"""gc in a tight loop while workers ingest and attach packages that share blobs with deleted ones.

The race that broke the best-known registries (a blob re-referenced while gc
removes it) must be settled in the database: afterwards `verify --deep` finds
nothing and every finalized, non-deleted package downloads byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from datetime import timedelta

import pytest
import requests

GC_ROUNDS = 500
PACKAGES_PER_ROUND = 4
SHARED = [os.urandom(random.Random(i).randint(10, 4000)) for i in range(16)] + [os.urandom((1 << 20) + 7)]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Worker(threading.Thread):
    def __init__(self, server, seed: int, stop: threading.Event, errors: list, pace: threading.Semaphore) -> None:
        super().__init__(daemon=True)
        self.server, self.rng, self.stop, self.errors, self.pace = server, random.Random(seed), stop, errors, pace
        self.kept: dict[str, dict[str, bytes]] = {}
        self.deleted = 0
        self.reuploads = 0

    def run(self) -> None:
        http = requests.Session()
        try:
            while not self.stop.is_set():
                if self.pace.acquire(timeout=0.1):  # the gc loop hands out packages, so both keep pace
                    self.one_package(http)
        except Exception as exc:  # surfaced by the test
            self.errors.append(repr(exc))

    def one_package(self, http) -> None:
        url = self.server.url
        pkg = http.post(f"{url}/v1/packages", json={"producer": "race", "retention_class": "transient"}).json()["id"]
        files = {f"shared/{i}": data for i, data in enumerate(self.rng.sample(SHARED, 4))}
        files.update({f"own/{i}": os.urandom(self.rng.randint(1, 3000)) for i in range(2)})
        missing = set(http.post(f"{url}/v1/blobs/missing",
                                json={"digests": [sha(d) for d in files.values()]}).json()["missing"])
        known = [{"path": p, "sha256": sha(d)} for p, d in files.items() if sha(d) not in missing]
        to_upload = [p for p, d in files.items() if sha(d) in missing]
        if known:
            answer = http.post(f"{url}/v1/packages/{pkg}/attach", json={"files": known})
            assert answer.status_code == 200, answer.text
            lost = set(answer.json()["missing"])  # gc took it between our question and the attach
            raced = [i["path"] for i in known if i["sha256"] in lost]
            self.reuploads += len(raced)
            to_upload += raced
        for path in to_upload:
            r = http.put(self.server.file_url(pkg, path), data=files[path], headers={"X-Checksum-Sha256":
                                                                                    sha(files[path])})
            assert r.status_code == 201, r.text
        done = http.post(f"{url}/v1/packages/{pkg}/finalize")
        assert done.status_code == 200 and done.json()["file_count"] == len(files), done.text
        # Keep the newest two packages, delete the older ones: shared blobs keep dropping to
        # no references and coming back, which is exactly when gc and writers race.
        self.kept[pkg] = files
        while len(self.kept) > 2:
            oldest = next(iter(self.kept))
            r = http.delete(f"{url}/v1/packages/{oldest}", params={"reason": "race test"})
            assert r.status_code == 200, r.text
            del self.kept[oldest]
            self.deleted += 1


@pytest.mark.slow
def test_gc_loop_beside_ingestion_and_attach(server, store):
    store.retention.set_class_days("transient", 0, actor="test")  # every package is eligible at once
    stop, errors, pace = threading.Event(), [], threading.Semaphore(0)
    workers = [Worker(server, seed, stop, errors, pace) for seed in range(4)]
    for w in workers:
        w.start()
    rounds, freed, started = 0, 0, time.monotonic()
    try:
        while rounds < GC_ROUNDS and not errors:
            for _ in range(PACKAGES_PER_ROUND):
                pace.release()
            report = store.gc.run(actor="gc-loop", orphan_grace=timedelta(0))
            freed += report.blobs_removed + report.orphans_removed
            rounds += 1
    finally:
        stop.set()
        for w in workers:
            w.join(60)
    assert errors == []
    packages = sum(len(w.kept) + w.deleted for w in workers)
    print(f"\ngc rounds {rounds}, blobs freed {freed}, packages {packages} "
          f"(deleted {sum(w.deleted for w in workers)}), attach races re-uploaded "
          f"{sum(w.reuploads for w in workers)}, {time.monotonic() - started:.1f}s")
    assert rounds >= GC_ROUNDS and packages >= 50 and freed > 0
    store.gc.run(actor="gc-loop", orphan_grace=timedelta(0))
    report = store.verify.run(deep=True)
    assert report.findings == [] and report.complete
    for w in workers:
        for pkg, files in w.kept.items():
            for path, data in files.items():
                assert server.get(pkg, path).content == data
