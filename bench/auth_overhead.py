"""Benchmark: what bearer-token authentication costs per request, against the same server without it.

    python bench/auth_overhead.py [--requests 2000] [--rounds 3]

Two `artifact-store serve` processes on one fresh store each (gunicorn, 2
workers): ARTIFACT_STORE_AUTH=off and =on. Each round sends the same small
requests to both, in alternating order, on one keep-alive connection: GET of
a package (a reader's request: one token lookup) and PUT of a small file
into it (a producer's request: the token lookup plus the package's producer).
Reported: milliseconds per request, per kind, medians of the rounds, and the
ratio on/off. Small requests are where the lookup weighs most; an ingestion
sends few, large ones (bench/ingest_api.py, bench/ingest_cli.py --auth).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_token, connection, start_server  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


def call(conn, method: str, path: str, headers: dict, body: bytes | None = None) -> bytes:
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    if response.status >= 300:
        raise RuntimeError(f"{method} {path}: {response.status} {data[:200]!r}")
    return data


def measure(url: str, headers: dict, pkg: str, n: int, tag: str) -> dict:
    conn = connection(url)
    started = time.perf_counter()
    for _ in range(n):
        call(conn, "GET", f"/v1/packages/{pkg}", headers)
    read = time.perf_counter() - started
    started = time.perf_counter()
    for i in range(n):
        call(conn, "PUT", f"/v1/packages/{pkg}/files/{tag}/{i}", headers, f"{tag}{i}".encode())
    write = time.perf_counter() - started
    conn.close()
    return {"get_ms": read / n * 1000, "put_ms": write / n * 1000}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    servers, headers, packages = {}, {}, {}
    try:
        for mode in ("off", "on"):
            servers[mode] = start_server(OUT / f"data-auth-{mode}", auth=mode == "on")
            headers[mode] = ({"Authorization": "Bearer " + bench_token(OUT / f"data-auth-{mode}", ["bench"])}
                             if mode == "on" else {})
            conn = connection(servers[mode].url)
            packages[mode] = json.loads(call(conn, "POST", "/v1/packages", {**headers[mode],
                                             "Content-Type": "application/json"}, b'{"producer": "bench"}'))["id"]
            measure(servers[mode].url, headers[mode], packages[mode], 200, "warm")
        results = {"off": [], "on": []}
        for r in range(args.rounds):
            for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
                results[mode].append(measure(servers[mode].url, headers[mode], packages[mode], args.requests,
                                             f"r{r}"))
    finally:
        for server in servers.values():
            server.stop()
    med = {mode: {k: statistics.median(x[k] for x in rows) for k in ("get_ms", "put_ms")}
           for mode, rows in results.items()}
    print(json.dumps({
        "requests_per_kind": args.requests,
        "off": {k: round(v, 3) for k, v in med["off"].items()},
        "on": {k: round(v, 3) for k, v in med["on"].items()},
        "ratio_on_off": {k: round(med["on"][k] / med["off"][k], 2) for k in ("get_ms", "put_ms")},
        "rounds": {mode: [{k: round(v, 3) for k, v in x.items()} for x in rows] for mode, rows in results.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
