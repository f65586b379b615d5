"""Benchmark: ingest a generated run through the HTTP API, against a lower bound measured in the same run.

    python bench/ingest_api.py [--small 1500] [--big-mib 1024] [--stream-gib 2] [--rounds 3] [--auth]

The run: ~1,500 small files of 0.2-6 KB plus one big capture. The lower bound
is a plain Python walk that SHA-256-hashes and copies the same files into a
folder. The ingestion: create a package, send the small files as tar batches
(one request and one transaction per batch), stream the big file with one
PUT (both at once, on two connections), finalize - against `artifact-store
serve` (gunicorn) on loopback, after a warm-up ingestion.
Reported: medians of the rounds, the ratio, and the server's peak RSS; then
the server's peak RSS while a 2 GiB body streams in. With --auth the server
requires tokens and every request carries a producer token.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    BLOCK,
    bench_token,
    connection,
    drop_dirty_pages,
    files_of,
    generate_run,
    lower_bound,
    start_server,
)

OUT = Path(__file__).resolve().parent / "out"
BATCH_BYTES = 8 << 20
SMALL_LIMIT = 1 << 20
AUTH: dict[str, str] = {}  # the Authorization header of every request, with --auth


def request_json(conn, method, path, body=None, headers=None):
    conn.request(method, path, body=body, headers={**AUTH, **(headers or {})})
    response = conn.getresponse()
    data = response.read()
    if response.status >= 300:
        raise RuntimeError(f"{method} {path}: {response.status} {data[:300]!r}")
    return json.loads(data) if data else None


def tar_batches(root: Path, paths: list[Path]):
    batch, size = [], 0
    for path in paths:
        batch.append(path)
        size += path.stat().st_size
        if size >= BATCH_BYTES or len(batch) >= 1000:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def tar_of(root: Path, paths: list[Path]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path in paths:
            info = tarfile.TarInfo(path.relative_to(root).as_posix())
            info.size = path.stat().st_size
            with open(path, "rb") as f:
                tar.addfile(info, f)
    return buf.getvalue()


def send_small(url: str, pkg: str, root: Path, small: list[Path]) -> None:
    conn = connection(url)
    for batch in tar_batches(root, small):
        request_json(conn, "POST", f"/v1/packages/{pkg}/tar", tar_of(root, batch),
                     {"Content-Type": "application/x-tar"})


def send_big(url: str, pkg: str, root: Path, big: list[Path]) -> None:
    conn = connection(url)
    for path in big:
        with open(path, "rb") as f:
            request_json(conn, "PUT", f"/v1/packages/{pkg}/files/{quote(path.relative_to(root).as_posix())}", f,
                         {"Content-Length": str(path.stat().st_size), "Content-Type": "application/octet-stream"})


def warm_up(url: str, root: Path) -> None:
    """A few small ingestions first: the timed one measures a running service, not its imports."""
    conn = connection(url)
    sample = files_of(root)[:20]
    for _ in range(4):
        pkg = request_json(conn, "POST", "/v1/packages", json.dumps({"producer": "warm-up"}),
                           {"Content-Type": "application/json"})["id"]
        request_json(conn, "POST", f"/v1/packages/{pkg}/tar", tar_of(root, sample),
                     {"Content-Type": "application/x-tar"})
        request_json(conn, "PUT", f"/v1/packages/{pkg}/files/warm.bin", b"w" * (2 << 20), {})
        request_json(conn, "POST", f"/v1/packages/{pkg}/finalize")


def ingest(url: str, root: Path) -> dict:
    """Small files as tar batches on one connection while the big files stream on another."""
    conn = connection(url)
    files = files_of(root)
    small = [p for p in files if p.stat().st_size <= SMALL_LIMIT]
    big = [p for p in files if p.stat().st_size > SMALL_LIMIT]
    started = time.perf_counter()
    pkg = request_json(conn, "POST", "/v1/packages", json.dumps({"producer": "bench", "run_id": root.name}),
                       {"Content-Type": "application/json"})["id"]
    with ThreadPoolExecutor(2) as pool:
        for job in [pool.submit(send_big, url, pkg, root, big), pool.submit(send_small, url, pkg, root, small)]:
            job.result()
    done = request_json(conn, "POST", f"/v1/packages/{pkg}/finalize")
    elapsed = time.perf_counter() - started
    assert done["file_count"] == len(files), done
    return {"seconds": elapsed, "package": pkg}


def stream_rss(data_dir: Path, gib: int, auth: bool) -> dict:
    server = start_server(data_dir, auth=auth)
    try:
        if auth:
            AUTH["Authorization"] = "Bearer " + bench_token(data_dir, ["bench"])
        conn = connection(server.url)
        pkg = request_json(conn, "POST", "/v1/packages", json.dumps({"producer": "bench"}),
                           {"Content-Type": "application/json"})["id"]
        block = bytes(range(256)) * (BLOCK // 256)

        def body():
            for i in range(gib * 1024):
                yield i.to_bytes(8, "big") + block[8:]

        started = time.perf_counter()
        conn.putrequest("PUT", f"/v1/packages/{pkg}/files/stream.bin")
        conn.putheader("Content-Length", str(gib << 30))
        for name, value in AUTH.items():
            conn.putheader(name, value)
        conn.endheaders()
        for chunk in body():
            conn.send(chunk)
        response = conn.getresponse()
        entry = json.loads(response.read())
        assert response.status == 201 and entry["size"] == gib << 30, entry
        return {"gib": gib, "seconds": round(time.perf_counter() - started, 2),
                "server_peak_rss_mib": round(server.peak_rss_kib() / 1024, 1)}
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=1500)
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--stream-gib", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--auth", action="store_true", help="tokens required; requests carry a producer token")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    root = generate_run(OUT / "run-api", args.small, args.big_mib << 20)
    total = sum(p.stat().st_size for p in files_of(root))
    bounds, ingests, rss = [], [], []
    for _ in range(args.rounds):
        bounds.append(lower_bound(root, OUT / "lower-bound-copy"))  # it waits for a quiet disk itself
        drop_dirty_pages()
        server = start_server(OUT / "data-api", auth=args.auth)
        try:
            if args.auth:
                AUTH["Authorization"] = "Bearer " + bench_token(OUT / "data-api", ["bench", "warm-up"])
            warm_up(server.url, root)
            drop_dirty_pages()
            ingests.append(ingest(server.url, root)["seconds"])
            rss.append(server.peak_rss_kib() / 1024)
        finally:
            server.stop()
    lb, ing = statistics.median(bounds), statistics.median(ingests)
    result = {
        "auth": args.auth, "files": len(files_of(root)), "bytes": total,
        "lower_bound_s": round(lb, 3), "ingest_s": round(ing, 3), "ratio": round(ing / lb, 2),
        "rounds": {"lower_bound_s": [round(b, 3) for b in bounds], "ingest_s": [round(i, 3) for i in ingests]},
        "server_peak_rss_mib": round(max(rss), 1),
    }
    if args.stream_gib:
        drop_dirty_pages()
        result["stream"] = stream_rss(OUT / "data-stream", args.stream_gib, args.auth)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
