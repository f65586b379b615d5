"""Benchmark: how much one hostile (or merely large) JSON request raises a worker's peak memory.

    python bench/request_memory.py

Against `artifact-store serve --workers 1` on loopback, after a warm-up, each
request below is sent once, in order, and the worker's VmHWM (peak RSS) is read
after it: the growth over the warmed-up peak is what the request cost, at most
(a later request only shows if it went higher). The goal is under 64 MiB for
any request; tests/test_hostile.py asserts it over its whole corpus.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers import ServerProcess  # noqa: E402


def corpus(package: str) -> list[tuple[str, str, str]]:
    """(name, path, body) - from refused-unread to the largest that is accepted."""
    def metadata(items: str) -> str:
        return '{"producer": "p", "metadata": {' + items + "}}"

    return [
        ("100 MB metadata (413 unread)", "/v1/packages", metadata('"x": "' + "a" * 100_000_000 + '"')),
        ("2 million keys (413 unread)", "/v1/packages", metadata(",".join(f'"{i}":0' for i in range(2_000_000)))),
        ("900,000 items in 1.8 MB (422, counted unparsed)", "/v1/blobs/missing",
         '{"digests": [' + "0," * 900_000 + "0]}"),
        ("99,000 two-char strings (422)", "/v1/blobs/missing", '{"digests": [' + ",".join(['"ab"'] * 99_000) + "]}"),
        ("metadata nested 100,000 deep (422)", "/v1/packages", metadata('"d": ' + "[" * 100_000 + "]" * 100_000)),
        ("1 MiB metadata, 9,900 keys (201)", "/v1/packages",
         metadata(",".join(f'"k{i:06d}":"' + "v" * 90 + '"' for i in range(9_900)))),
        ("10,000 digests (200)", "/v1/blobs/missing", json.dumps({"digests": ["%064x" % i for i in range(10_000)]})),
        ("10,000 attach items, 1.9 MB (200)", f"/v1/packages/{package}/attach",
         json.dumps({"files": [{"path": "p/" + "x" * 100 + str(i), "sha256": "%064x" % i} for i in range(10_000)]})),
    ]


def main() -> None:
    data_dir = tempfile.mkdtemp(prefix="request-memory-")
    server = ServerProcess({"ARTIFACT_STORE_DATA_DIR": data_dir}, workers=1).start()
    try:
        http = requests.Session()
        for i in range(3):  # warm-up: every kind of JSON request once
            package = http.post(f"{server.url}/v1/packages", json={"producer": "w", "metadata": {"i": i}}).json()["id"]
            http.post(f"{server.url}/v1/blobs/missing", json={"digests": ["%064x" % j for j in range(1000)]})
            http.post(f"{server.url}/v1/packages/{package}/attach", json={"files": [{"path": "a", "sha256": "0" * 64}]})
        warm = server.peak_rss_kib() / 1024
        rows = []
        for name, path, body in corpus(package):
            started = time.perf_counter()
            answer = http.post(server.url + path, data=body.encode(), headers={"Content-Type": "application/json"})
            rows.append({"request": name, "status": answer.status_code, "body_kib": len(body) >> 10,
                         "seconds": round(time.perf_counter() - started, 3),
                         "peak_growth_mib": round(server.peak_rss_kib() / 1024 - warm, 1)})
        print(json.dumps({"warm_peak_rss_mib": round(warm, 1), "requests": rows}, indent=2))
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
