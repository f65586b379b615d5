"""Shared pieces of the benchmarks: run-directory generation, lower bound, server, HTTP client."""

from __future__ import annotations

import hashlib
import http.client
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lower_bound import hash_and_copy  # noqa: E402
from tests.helpers import ServerProcess  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIG = 1 << 30
BLOCK = 1 << 20


def generate_run(root: Path, small_files: int = 1500, big_bytes: int = BIG, seed: int = 7) -> Path:
    """A guide-board-shaped run: small logs/reports of 0.2-6 KB, plus one big capture."""
    rng = random.Random(seed)
    if root.exists():
        shutil.rmtree(root)
    (root / "raw" / "captures").mkdir(parents=True)
    (root / "run.json").write_text('{"schema": "guide-board.run/v1", "run_id": "%s"}' % root.name)
    for i in range(small_files):
        folder = root / "raw" / "logs" / f"node{i % 12:02d}" / f"day{i % 5}"
        folder.mkdir(parents=True, exist_ok=True)
        size = rng.randint(200, 6000)
        (folder / f"log-{i:05d}.log").write_bytes(rng.randbytes(size))
    if big_bytes:
        with open(root / "raw" / "captures" / "capture.bin", "wb") as f:
            left = big_bytes
            block = rng.randbytes(BLOCK)
            n = 0
            while left:
                # distinct content per MiB without paying for 1 GiB of random numbers
                chunk = hashlib.sha256(n.to_bytes(8, "big")).digest() + block[32:]
                f.write(chunk[:min(BLOCK, left)])
                left -= min(BLOCK, left)
                n += 1
    return root


def files_of(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def lower_bound(root: Path, dest: Path) -> float:
    """Plain Python: walk, SHA-256 and copy every file into a folder, inside this process. Seconds."""
    shutil.rmtree(dest, ignore_errors=True)
    drop_dirty_pages()  # deleting the last copy's gigabyte is not part of the measurement
    return hash_and_copy(root, dest)


def lower_bound_command(root: Path, dest: Path) -> float:
    """The same work as a command of its own (bench/lower_bound.py), timed from outside like the CLI:
    interpreter start included on both sides. Seconds."""
    script = [sys.executable, str(Path(__file__).with_name("lower_bound.py")), str(root), str(dest)]
    subprocess.run(script + ["--prepare"], check=True)
    drop_dirty_pages()
    started = time.perf_counter()
    subprocess.run(script, check=True)
    return time.perf_counter() - started


def run_measured(command: list[str], env: dict | None = None) -> tuple[float, float, bytes]:
    """Run ``command`` from the repository root with ``env`` added: (seconds, peak RSS MiB, stdout),
    the RSS from wait4's rusage (a child forked from a large process counts its pages too)."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    if status != 0:
        raise RuntimeError(f"{command[:4]} failed: {err.decode()[-2000:]}")
    return elapsed, usage.ru_maxrss / 1024, out


def drop_dirty_pages(quiet_mib: int = 8, wait: float = 15.0) -> None:
    """Flush, then wait until the kernel has (almost) nothing left to write back.

    This machine's disk writeback is the largest source of noise: a copy of
    1 GiB keeps the disk busy for seconds after it returns, and whatever is
    timed next (the lower bound or the ingest) pays for it. Each measurement
    starts from the same quiet state instead.
    """
    os.sync()
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        busy_kib = sum(int(fields[k].split()[0]) for k in ("Dirty", "Writeback") if k in fields)
        if busy_kib < quiet_mib << 10:
            break
        time.sleep(0.05)
    time.sleep(0.2)


def start_server(data_dir: Path, workers: int = 2, auth: bool = False) -> ServerProcess:
    """A fresh store under ``data_dir``; with ``auth``, tokens are required (``bench_token`` makes one)."""
    if data_dir.exists():
        shutil.rmtree(data_dir)
    env = {"ARTIFACT_STORE_DATA_DIR": str(data_dir), "ARTIFACT_STORE_AUTH": "on" if auth else "off"}
    return ServerProcess(env, workers=workers).start()


def bench_token(data_dir: Path, producers: list[str]) -> str:
    """A producer token for the store under ``data_dir`` (made through the service, as the CLI does)."""
    from casstore.config import Settings
    from casstore.store import Store

    store = Store(Settings.from_env({"ARTIFACT_STORE_DATA_DIR": str(data_dir)}))
    try:
        return store.tokens.create(name="bench", role="producer", producers=producers, actor="bench")[1]
    finally:
        store.close()


def connection(url: str) -> http.client.HTTPConnection:
    host, port = url.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), blocksize=BLOCK)
