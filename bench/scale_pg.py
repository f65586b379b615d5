"""Benchmark: the registry at scale on PostgreSQL - 100,000 packages, 10 million file entries.

    python bench/scale_pg.py postgresql+psycopg://postgres@127.0.0.1:55432/postgres [--packages 100000]

Creates a fresh database next to the one in the URL, migrates it with Alembic,
fills it in SQL (generate_series; 100 files a package, one package with
10,000 files, 2 million distinct blobs, 1,000 expired packages), then times
the store's own service calls (medians of 7, warm) and shows each query
plan's use of indexes. Targets: every list or lookup under 50 ms, the
missing-digests query for 5,000 digests under 200 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, text  # noqa: E402

from casstore.config import Settings  # noqa: E402
from casstore.db import Database  # noqa: E402
from casstore.services import manifest  # noqa: E402
from casstore.store import Store  # noqa: E402

FILL = """
SET synchronous_commit = off;
INSERT INTO blob (sha256, size, blake3, refcount, state, created_at)
  SELECT lpad(to_hex(i), 64, '0'), 200 + (i % 6000), lpad(to_hex(i), 64, 'b'), 0, 'present', now()
  FROM generate_series(1, :blobs) AS i;
INSERT INTO storage_location (blob_sha256, backend, object_key, "offset", length)
  SELECT sha256, 's3', 'blobs/sha256/' || substr(sha256, 1, 2) || '/' || substr(sha256, 3, 2) || '/' || sha256, 0, size
  FROM blob;
INSERT INTO package (id, producer, status, run_id, target_profile, assessment_profile, retention_class,
                     expires_at, created_at, finalized_at, file_count, total_bytes, manifest_digest, metadata)
  SELECT 'pkg_' || lpad(to_hex(p), 26, '0'), 'guide-board', 'finalized', 'run-' || p, 'target-' || (p % 20),
         'profile-' || (p % 7), 'raw-evidence',
         CASE WHEN p % 100 = 0 THEN now() - interval '1 day' ELSE now() + interval '90 days' END,
         now() - (p || ' seconds')::interval, now(), CASE WHEN p = 1 THEN 10000 ELSE 100 END, 0,
         NULL, '{"schema": "guide-board.run/v1"}'
  FROM generate_series(1, :packages) AS p;
INSERT INTO file_entry (package_id, path, blob_sha256, size, media_type, created_at)
  SELECT 'pkg_' || lpad(to_hex(p), 26, '0'), 'raw/logs/node' || (k % 12) || '/file-' || k || '.log',
         lpad(to_hex(1 + ((p::bigint * 100 + k) % :blobs)), 64, '0'), 200 + (k % 6000), 'text/plain', now()
  FROM generate_series(2, :packages) AS p, generate_series(1, 100) AS k;
INSERT INTO file_entry (package_id, path, blob_sha256, size, media_type, created_at)
  SELECT 'pkg_' || lpad(to_hex(1), 26, '0'), 'raw/logs/file-' || k || '.log',
         lpad(to_hex(1 + (k % :blobs)), 64, '0'), 200 + (k % 6000), 'text/plain', now()
  FROM generate_series(1, 10000) AS k;
UPDATE blob SET refcount = c.n FROM (SELECT blob_sha256, COUNT(*) AS n FROM file_entry GROUP BY blob_sha256) c
  WHERE blob.sha256 = c.blob_sha256;
ANALYZE;
"""


def median_ms(fn, rounds: int = 7) -> float:
    fn()  # warm
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 2)


def plan(engine, sql: str, params: dict) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(text("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) " + sql), params)
        return [r[0].strip() for r in rows if any(w in r[0] for w in ("Scan", "Join", "Sort", "Aggregate"))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("admin_url")
    parser.add_argument("--packages", type=int, default=100_000)
    parser.add_argument("--blobs", type=int, default=2_000_000)
    args = parser.parse_args()
    name = f"scale_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = args.admin_url.rsplit("/", 1)[0] + "/" + name
    try:
        Database(url).upgrade()
        engine = create_engine(url)
        started = time.perf_counter()
        with engine.begin() as conn:
            for statement in [s for s in FILL.split(";\n") if s.strip()]:
                conn.execute(text(statement), {"blobs": args.blobs, "packages": args.packages})
        fill_s = time.perf_counter() - started
        with engine.connect() as conn:
            entries = conn.execute(text("SELECT COUNT(*) FROM file_entry")).scalar()
        store = Store(Settings.from_env({"ARTIFACT_STORE_DATABASE_URL": url,
                                         "ARTIFACT_STORE_STORAGE_URL": "memory:///"}))
        some_run = f"run-{args.packages // 2}"
        big_package = "pkg_" + "1".rjust(26, "0")
        digests = [f"{i:x}".rjust(64, "0") for i in range(1, 2 * args.blobs, (2 * args.blobs) // 5000)][:5000]

        def build_manifest():
            with store.db.read() as session:
                package = store.packages.get(big_package)
                files = store.packages._manifest_files(session, big_package)
            assert len(files) == 10_000
            return manifest.build(package, files)

        timings = {
            "list_by_run_id_ms": median_ms(lambda: store.packages.list({"run_id": some_run})),
            "list_by_target_profile_ms": median_ms(lambda: store.packages.list({"target_profile": "target-3"})),
            "package_metadata_ms": median_ms(lambda: store.packages.get(big_package)),
            "list_files_first_page_ms": median_ms(lambda: store.files.list(big_package, limit=1000)),
            "manifest_10000_files_ms": median_ms(build_manifest, rounds=5),
            "eligibility_report_ms": median_ms(lambda: store.eligibility.report(), rounds=3),
            "missing_5000_digests_ms": median_ms(lambda: store.missing_blobs(digests)),
        }
        report = store.eligibility.report()
        plans = {
            "list_by_run_id": plan(engine, "SELECT * FROM package WHERE run_id = :r ORDER BY id DESC LIMIT 101",
                                   {"r": some_run}),
            "package_by_id": plan(engine, "SELECT * FROM package WHERE id = :p", {"p": big_package}),
            "manifest_files": plan(engine, "SELECT f.path, f.blob_sha256, b.blake3, f.size, f.media_type "
                                           "FROM file_entry f JOIN blob b ON b.sha256 = f.blob_sha256 "
                                           "WHERE f.package_id = :p", {"p": big_package}),
            "missing_digests": plan(engine, "SELECT sha256 FROM blob WHERE sha256 = ANY(:d) AND state = 'present'",
                                    {"d": digests[:500]}),
        }
        print(json.dumps({"packages": args.packages, "file_entries": entries, "blobs": args.blobs,
                          "fill_seconds": round(fill_s, 1), "eligible_packages": len(report.packages),
                          "timings": timings, "plans": plans}, indent=2))
        store.close()
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
