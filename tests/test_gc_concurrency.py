"""gc in a tight loop while workers ingest and attach packages that share blobs with deleted ones.

The race that broke the best-known registries (a blob re-referenced while gc
removes it) must be settled in the database: afterwards `verify --deep` finds
nothing and every finalized, non-deleted package downloads byte for byte.
Authentication is on: the workers ingest with a producer token and delete
with an operator token, as CI runners and operators do.
"""

from __future__ import annotations

import os
import random
import threading
import time
from datetime import timedelta

import pytest
import requests

from tests.helpers import PackageChurn, bearer, make_token

GC_ROUNDS = 500
PACKAGES_PER_ROUND = 4
SHARED = [os.urandom(random.Random(i).randint(10, 4000)) for i in range(16)] + [os.urandom((1 << 20) + 7)]
BIG = [random.Random(100 + i).randbytes(8 << 20) for i in range(3)]  # bases of large (chunked) files


@pytest.mark.slow
def test_gc_loop_beside_ingestion_and_attach(secured_server, tmp_path):
    server, store = secured_server
    store.retention.set_class_days("transient", 0, actor="test")  # every package is eligible at once
    producer, operator = make_token(store, "producer", producers=["churn"]), make_token(store, "operator")
    anonymous = requests.post(f"{server.url}/v1/packages", json={"producer": "churn"})
    assert anonymous.status_code == 401  # the race below runs with authentication enforced
    server.http.headers.update(bearer(make_token(store, "reader")))
    stop, errors, pace = threading.Event(), [], threading.Semaphore(0)
    workers = [PackageChurn([server.url], SHARED, seed, stop, errors, pace, big=BIG, big_every=16, workdir=tmp_path,
                            producer_token=producer, operator_token=operator) for seed in range(4)]
    for w in workers:
        w.start()
    rounds, freed, chunks_freed, repacked, started = 0, 0, 0, 0, time.monotonic()
    try:
        while rounds < GC_ROUNDS and not errors:
            for _ in range(PACKAGES_PER_ROUND):
                pace.release()
            report = store.gc.run(actor="gc-loop", orphan_grace=timedelta(0), repack_min_age=timedelta(0),
                                  repack_grace=timedelta(0))  # packs repacked and retired packs deleted at once
            freed += report.blobs_removed + report.orphans_removed
            repacked += report.packs_repacked
            chunks_freed += report.chunks_removed
            rounds += 1
    finally:
        stop.set()
        for w in workers:
            w.join(60)
    assert errors == []
    packages = sum(w.done for w in workers)
    print(f"\ngc rounds {rounds}, blobs freed {freed}, packages {packages} "
          f"(deleted {sum(w.deleted for w in workers)}), attach races re-uploaded "
          f"{sum(w.reuploads for w in workers)}, large files {sum(w.big_files for w in workers)}, chunks freed "
          f"{chunks_freed}, chunk races re-sent {sum(w.chunk_races for w in workers)}, packs repacked {repacked}, "
          f"{time.monotonic() - started:.1f}s")
    assert rounds >= GC_ROUNDS and packages >= 50 and freed > 0 and chunks_freed > 0 and repacked > 0
    store.gc.run(actor="gc-loop", orphan_grace=timedelta(0), repack_grace=timedelta(0))
    report = store.verify.run(deep=True)
    assert report.findings == [] and report.complete
    for w in workers:
        for pkg, files in w.kept.items():
            for path, data in files.items():
                assert server.get(pkg, path).content == data
