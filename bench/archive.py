"""Whole-package archive against a single-file download, through the real server (gunicorn).

The package: a guide-board-shaped run (1,500 small logs + one 1 GiB capture),
ingested with the CLI. Each round downloads, in alternating order, the 1 GiB
capture alone (the peer: one object streamed) and the whole package as a tar
(and as a zip), reading every byte and throwing it away. Reported: seconds,
MB/s and the archive's throughput as a ratio of the single file's (median of
rounds and best vs best), and the server's peak RSS (VmHWM of master and
workers, over a server started after the ingest so that it holds only
downloads).

    python bench/archive.py [--rounds 5] [--work /tmp/archive-bench] [--small-files N --big-mib M]

(``--small-files 100000 --big-mib 0`` measures the memory of a package of many files instead.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BLOCK, connection, drop_dirty_pages, generate_run  # noqa: E402
from tests.helpers import ServerProcess  # noqa: E402


def fetch(url: str, path: str) -> tuple[int, float]:
    """GET path and read the whole body; (bytes, seconds)."""
    conn = connection(url)
    started = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()
    assert response.status == 200, response.status
    total = 0
    while chunk := response.read(BLOCK):
        total += len(chunk)
    elapsed = time.perf_counter() - started
    conn.close()
    assert total == int(response.headers["Content-Length"])
    return total, elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--work", default="/tmp/archive-bench")
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--small-files", type=int, default=1500)
    args = parser.parse_args()
    work = Path(args.work)
    run = generate_run(work / "run", small_files=args.small_files, big_bytes=args.big_mib << 20)
    data = work / "data"
    subprocess.run(["rm", "-rf", str(data)], check=True)
    env = {"ARTIFACT_STORE_DATA_DIR": str(data)}
    server = ServerProcess(env, workers=2, log_path=str(work / "server.log")).start()
    try:
        for _ in range(3):  # exit 1 means "run it again, it resumes" (a keep-alive connection can go stale)
            ingest = subprocess.run([sys.executable, "-m", "artifact_store.cli", "ingest", str(run), "--url",
                                     server.url, "--no-cache", "--quiet"], capture_output=True, text=True)
            if ingest.returncode != 1:
                break
    finally:
        server.stop()
    if ingest.returncode:
        sys.exit(f"ingest failed ({ingest.returncode}): {ingest.stderr.strip()}")
    package = json.loads(ingest.stdout)["package_id"]
    server = ServerProcess(env, workers=2).start()  # a fresh server: its peak RSS is the downloads'
    try:
        single = "raw/captures/capture.bin" if args.big_mib else "run.json"
        paths = {"file": f"/v1/packages/{package}/files/{single}",
                 "tar": f"/v1/packages/{package}/archive", "zip": f"/v1/packages/{package}/archive?format=zip"}
        fetch(server.url, paths["file"])  # warm the page cache: both read the same bytes from it
        results = {k: [] for k in paths}
        for i in range(args.rounds):
            order = list(paths) if i % 2 == 0 else list(reversed(paths))
            for kind in order:
                drop_dirty_pages()
                size, seconds = fetch(server.url, paths[kind])
                results[kind].append((size, seconds))
        rss_mib = server.peak_rss_kib() / 1024
    finally:
        server.stop()
    rate = {k: [s / t / 1e6 for s, t in v] for k, v in results.items()}
    print(f"package {package}: {results['tar'][0][0]:,} bytes as tar, {results['zip'][0][0]:,} as zip; "
          f"the capture alone {results['file'][0][0]:,} bytes; {args.rounds} rounds")
    for kind in paths:
        times = [t for _, t in results[kind]]
        print(f"{kind:>5}: median {statistics.median(times):.3f} s ({statistics.median(rate[kind]):.0f} MB/s), "
              f"best {min(times):.3f} s ({max(rate[kind]):.0f} MB/s)")
    for kind in ("tar", "zip"):
        per_round = [a / b for a, b in zip(rate[kind], rate["file"])]
        print(f"{kind} throughput / single file: median of rounds {statistics.median(per_round):.2f}, "
              f"best vs best {max(rate[kind]) / max(rate['file']):.2f}")
    print(f"server peak RSS (largest process, downloads only): {rss_mib:.0f} MiB")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
