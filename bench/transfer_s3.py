"""Benchmark: a 1 GiB file into and out of an S3 backend through the API, against obstore alone.

    python bench/transfer_s3.py [--mib 1024] [--rounds 3] [--backends rgw,s3]

For each backend (Ceph RGW 16 as "rgw", SeaweedFS as "s3"), in the same run,
order alternated between rounds, the disk synced and quiet before each step:

- API upload: ``PUT /v1/packages/{id}/files/big.bin`` of the file to
  ``artifact-store serve`` (gunicorn, a real process over SQLite), until its 201:
  the server hashes while it streams to a staging key, copies it to its final
  content key, records it, deletes the staging object;
- plain upload: ``obstore.put`` of the same file (multipart, the same part size
  and concurrency as the server's) from this process: the lower bound;
- API download: ``GET`` of the file through the server, read to the end;
- plain download: ``obstore.get(...).stream()`` of the plain object.

Each round changes the file's first bytes, so every upload is new content (no
deduplication). Also reported: a bare server-side copy of the object
(CopyObject, what placing a large blob costs on a backend without
copy-if-not-exists, and on SeaweedFS its conditional multipart copy), and the
server's peak RSS (largest VmHWM among master and workers).

Servers: those named by ARTIFACT_STORE_TEST_RGW_ENDPOINT / ARTIFACT_STORE_TEST_S3_ENDPOINT
(as for the tests); otherwise this starts them: Ceph RGW with scripts/ceph-rgw (bluestore),
SeaweedFS with ``weed mini`` on free ports.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BLOCK, connection, drop_dirty_pages  # noqa: E402
from tests.helpers import S3_SERVERS, ServerProcess  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PART = 8 << 20  # the server's default part size and concurrency, used by the plain transfer too
CONCURRENCY = 4


def free_port() -> int:
    for _ in range(200):
        port = 10000 + int.from_bytes(os.urandom(2), "big") % 20000
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port")


class Backends:
    """The S3 servers to measure: given by the environment, or started here (and stopped)."""

    def __init__(self, names: list[str], work: Path) -> None:
        self.work, self.started, self.endpoints = work, [], {}
        for name in names:
            server = S3_SERVERS[name]
            self.endpoints[name] = server.endpoint or (self._start_rgw() if name == "rgw" else self._start_weed())

    def _start_rgw(self) -> str:
        folder = self.work / "rgw"
        subprocess.run([str(ROOT / "scripts" / "ceph-rgw"), "up", str(folder)], check=True,
                       stdout=subprocess.DEVNULL)
        self.started.append(("rgw", folder))
        env = dict(line.split("=", 1) for line in (folder / "s3.env").read_text().splitlines() if "=" in line)
        return env["S3_ENDPOINT"]

    def _start_weed(self) -> str:
        folder = self.work / "seaweedfs"
        folder.mkdir()
        (folder / "s3.json").write_text(json.dumps({"identities": [{"name": "ci", "credentials": [
            {"accessKey": "testkey", "secretKey": "testsecret"}], "actions": ["Admin", "Read", "Write", "List"]}]}))
        s3 = free_port()
        ports = {f"-{flag}": free_port() for flag in ("filer.port", "master.port", "volume.port", "admin.port",
                                                       "s3.port.iceberg", "metricsPort")}
        args = [str(Path(sys.executable).with_name("weed")), "mini", f"-dir={folder / 'data'}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", "-master.telemetry=false", f"-s3.config={folder / 's3.json'}", "-bucket=test",
                "-admin.ui=false", "-webdav=false", f"-s3.port={s3}", *(f"{k}={v}" for k, v in ports.items())]
        proc = subprocess.Popen(args, stdout=open(folder / "log", "wb"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.started.append(("weed", proc))
        endpoint = f"http://127.0.0.1:{s3}"
        from casstore.storage import open_storage

        deadline = time.monotonic() + 60
        while True:
            try:
                storage = open_storage("s3://test/ready", s3=S3_SERVERS["s3"].options(endpoint=endpoint))
                storage.put_stream("x", [b"1"])
                storage.delete("x")
                return endpoint
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def stop(self) -> None:
        for kind, what in reversed(self.started):
            if kind == "rgw":
                subprocess.run([str(ROOT / "scripts" / "ceph-rgw"), "down", str(what)], check=False)
            else:
                what.terminate()
                try:
                    what.wait(20)
                except subprocess.TimeoutExpired:
                    what.kill()


def plain_store(name: str, endpoint: str, prefix: str):
    from obstore.store import S3Store

    access, secret = S3_SERVERS[name].keys
    return S3Store(S3_SERVERS[name].bucket, prefix=prefix, endpoint=endpoint, access_key_id=access,
                   secret_access_key=secret, region="us-east-1", virtual_hosted_style_request=False,
                   client_options={"allow_http": True, "timeout": "600s"})


def request_json(conn, method: str, path: str, body=None, headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    if response.status >= 300:
        raise RuntimeError(f"{method} {path}: {response.status} {data[:300]!r}")
    return json.loads(data) if data else None


def api_upload(url: str, path: Path) -> tuple[float, str]:
    conn = connection(url)
    pkg = request_json(conn, "POST", "/v1/packages", json.dumps({"producer": "bench"}),
                       {"Content-Type": "application/json"})["id"]
    started = time.perf_counter()
    with open(path, "rb") as f:
        entry = request_json(conn, "PUT", f"/v1/packages/{pkg}/files/big.bin", f,
                             {"Content-Length": str(path.stat().st_size), "Content-Type": "application/octet-stream"})
    elapsed = time.perf_counter() - started
    assert entry["size"] == path.stat().st_size, entry
    return elapsed, pkg


def api_download(url: str, pkg: str, size: int) -> float:
    conn = connection(url)
    started = time.perf_counter()
    conn.request("GET", f"/v1/packages/{pkg}/files/big.bin")
    response = conn.getresponse()
    got = 0
    while chunk := response.read(BLOCK):
        got += len(chunk)
    elapsed = time.perf_counter() - started
    assert response.status == 200 and got == size, (response.status, got)
    return elapsed


def plain_upload(store, key: str, path: Path) -> float:
    import obstore

    started = time.perf_counter()
    with open(path, "rb") as f:
        obstore.put(store, key, f, chunk_size=PART, max_concurrency=CONCURRENCY)
    return time.perf_counter() - started


def plain_download(store, key: str, size: int) -> float:
    import obstore

    started = time.perf_counter()
    got = sum(len(chunk) for chunk in obstore.get(store, key).stream(min_chunk_size=BLOCK))
    assert got == size
    return time.perf_counter() - started


def server_copy(store, key: str) -> float:
    import obstore

    started = time.perf_counter()
    obstore.copy(store, key, key + ".copy")
    elapsed = time.perf_counter() - started
    obstore.delete(store, key + ".copy")
    return elapsed


def new_content(path: Path, round_no: int) -> None:
    """Change the first bytes so that each upload is content the store has never seen."""
    with open(path, "r+b") as f:
        f.write(os.urandom(32) + round_no.to_bytes(8, "big"))


def measure(name: str, endpoint: str, path: Path, rounds: int, work: Path) -> dict:
    import obstore

    size = path.stat().st_size
    access, secret = S3_SERVERS[name].keys
    prefix = f"bench-{os.urandom(4).hex()}"
    env = {"ARTIFACT_STORE_DATA_DIR": str(work / f"data-{name}"),
           "ARTIFACT_STORE_STORAGE_URL": f"s3://{S3_SERVERS[name].bucket}/{prefix}/api",
           "ARTIFACT_STORE_S3_ENDPOINT": endpoint, "ARTIFACT_STORE_S3_REGION": "us-east-1",
           "ARTIFACT_STORE_S3_ACCESS_KEY_ID": access, "ARTIFACT_STORE_S3_SECRET_ACCESS_KEY": secret,
           "ARTIFACT_STORE_S3_ALLOW_HTTP": "true", "ARTIFACT_STORE_S3_PART_SIZE_MIB": str(PART >> 20),
           "ARTIFACT_STORE_S3_CONCURRENCY": str(CONCURRENCY), "ARTIFACT_STORE_S3_TIMEOUT": "600"}
    server = ServerProcess(env, workers=2, log_path=str(work / f"server-{name}.log")).start(timeout=120)
    store = plain_store(name, endpoint, f"{prefix}/plain")
    rows = {k: [] for k in ("api_up", "plain_up", "api_down", "plain_down", "copy")}
    try:
        health = request_json(connection(server.url), "GET", "/v1/health")
        for r in range(rounds):
            new_content(path, r)
            key = f"round-{r}"
            steps = [("api_up", lambda: api_upload(server.url, path)),
                     ("plain_up", lambda: plain_upload(store, key, path))]
            if r % 2:
                steps.reverse()
            pkg = None
            for label, step in steps:
                drop_dirty_pages()
                out = step()
                if label == "api_up":
                    out, pkg = out
                rows[label].append(out)
            downs = [("api_down", lambda: api_download(server.url, pkg, size)),
                     ("plain_down", lambda: plain_download(store, key, size))]
            if r % 2:
                downs.reverse()
            for label, step in downs:
                drop_dirty_pages()
                rows[label].append(step())
            drop_dirty_pages()
            rows["copy"].append(server_copy(store, key))
            obstore.delete(store, key)
            print(f"  {name} round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in rows.items()),
                  file=sys.stderr)
        peak = server.peak_rss_kib() / 1024
    finally:
        server.stop()
    med = {k: statistics.median(v) for k, v in rows.items()}
    return {
        "backend": name, "capabilities": health["storage"].get("capabilities"),
        "upload_s": {"api": round(med["api_up"], 2), "plain_obstore": round(med["plain_up"], 2),
                     "ratio": round(med["api_up"] / med["plain_up"], 2)},
        "download_s": {"api": round(med["api_down"], 2), "plain_obstore": round(med["plain_down"], 2),
                       "ratio": round(med["api_down"] / med["plain_down"], 2)},
        "server_side_copy_s": round(med["copy"], 2),
        "server_peak_rss_mib": round(peak, 1),
        "rounds_s": {k: [round(x, 2) for x in v] for k, v in rows.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default="rgw,s3", help="comma-separated: rgw (Ceph RGW), s3 (SeaweedFS)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    names = [n for n in args.backends.split(",") if n]
    backends = Backends(names, work)
    try:
        path = work / "big.bin"
        with open(path, "wb") as f:
            block = os.urandom(BLOCK)
            for i in range(args.mib):
                f.write(i.to_bytes(8, "big") + block[8:])
        results = [measure(name, backends.endpoints[name], path, args.rounds, work) for name in names]
        print(json.dumps({"mib": args.mib, "rounds": args.rounds, "part_mib": PART >> 20,
                          "concurrency": CONCURRENCY, "results": results}, indent=2))
    finally:
        backends.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
