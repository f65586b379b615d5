"""Benchmark: are other clients still served while slow and idle connections are held open?

    python bench/slow_clients.py [--slow 500] [--idle 500] [--seconds 30] [--clients 4]

Against `artifact-store serve` (default options) on loopback, this holds open:
- ``--slow`` connections that send a request head one header line every 2 s and
  never finish it (slowloris); when the server closes one, another replaces it;
- ``--idle`` sockets that connect and never send a byte (replaced likewise);
then, for ``--seconds``, ``--clients`` concurrent clients each send requests one
after another, each on a new connection (GET /v1/packages?limit=1, a package
create, GET /v1/health in turn), with a 5 s timeout each. Reported: their
latency (p50, p99, max), how many failed or timed out, and what the server did
with the hostile connections (closed them, with a 408 or silently).

The same script measured against another checkout (run it from that checkout's
directory: `cd OTHER && python /path/to/bench/slow_clients.py`, the server is
imported from the current directory) gives the before/after comparison.
Bounded in time: about --seconds + 15 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers import ServerProcess  # noqa: E402

REQUEST_TIMEOUT = 5.0
LINE_EVERY = 2.0


class Hostile:
    def __init__(self, port: int) -> None:
        self.port = port
        self.opened = self.closed_by_server = self.answered_408 = self.refused = 0
        self.stop = asyncio.Event()

    async def connect(self):
        """A new connection (counted), or None after a refusal (counted, then a short wait)."""
        try:
            opened = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            self.refused += 1
            await asyncio.sleep(0.5)
            return None
        self.opened += 1
        return opened

    async def slow(self) -> None:
        """One slowloris connection after another: a header line every 2 s, never the blank line."""
        while not self.stop.is_set():
            if (opened := await self.connect()) is None:
                continue
            reader, writer = opened
            try:
                writer.write(b"GET /v1/health HTTP/1.1\r\nHost: bench\r\n")
                i = 0
                while not self.stop.is_set():
                    await writer.drain()
                    try:
                        data = await asyncio.wait_for(reader.read(4096), LINE_EVERY)
                    except asyncio.TimeoutError:
                        writer.write(b"X-Slow-%d: %d\r\n" % (i, i))
                        i += 1
                        continue
                    self.closed_by_server += 1
                    if data.startswith(b"HTTP/1.1 408"):
                        self.answered_408 += 1
                    break
            except OSError:
                self.closed_by_server += 1
            finally:
                writer.close()

    async def idle(self) -> None:
        """Sockets that connect and never send a byte."""
        while not self.stop.is_set():
            if (opened := await self.connect()) is None:
                continue
            reader, writer = opened
            try:
                stop = asyncio.ensure_future(self.stop.wait())
                read = asyncio.ensure_future(reader.read(1))
                done, _ = await asyncio.wait({stop, read}, return_when=asyncio.FIRST_COMPLETED)
                if read in done:
                    self.closed_by_server += 1
                for task in (stop, read):
                    task.cancel()
            except OSError:
                self.closed_by_server += 1
            finally:
                writer.close()


async def one_request(port: int, i: int) -> tuple[float, int | None]:
    """(seconds, status or None on failure) of one request on a fresh connection."""
    paths = [("GET", "/v1/packages?limit=1", b""),
             ("POST", "/v1/packages", b'{"producer": "bench-slow-clients"}'),
             ("GET", "/v1/health", b"")]
    method, path, body = paths[i % len(paths)]
    started = time.perf_counter()
    writer = None
    try:
        async def exchange():
            nonlocal writer
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"{method} {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()
            data = await reader.read()
            return int(data.split(b" ", 2)[1])
        status = await asyncio.wait_for(exchange(), REQUEST_TIMEOUT)
    except (OSError, asyncio.TimeoutError, IndexError, ValueError):
        status = None
    finally:
        if writer is not None:
            writer.close()
    return time.perf_counter() - started, status


async def measure(port: int, slow: int, idle: int, seconds: float, clients: int) -> dict:
    hostile = Hostile(port)
    tasks = [asyncio.ensure_future(hostile.slow()) for _ in range(slow)]
    tasks += [asyncio.ensure_future(hostile.idle()) for _ in range(idle)]
    await asyncio.sleep(3 if tasks else 0)  # let every hostile connection be accepted and start its game
    latencies, failures, statuses = [], 0, {}
    deadline = time.monotonic() + seconds
    counter = iter(range(10 ** 9))

    async def client():
        nonlocal failures
        while time.monotonic() < deadline:
            elapsed, status = await one_request(port, next(counter))
            if status is None:
                failures += 1
                latencies.append(REQUEST_TIMEOUT)
            else:
                latencies.append(elapsed)
                statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(client() for _ in range(clients)))
    hostile.stop.set()
    if tasks:
        await asyncio.wait(tasks, timeout=10)
    latencies.sort()
    return {
        "requests": len(latencies), "failed_or_timed_out": failures, "statuses": statuses,
        "p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 1)
        if latencies else None,
        "max_ms": round(latencies[-1] * 1000, 1) if latencies else None,
        "hostile": {"slow": slow, "idle": idle, "connections_opened": hostile.opened,
                    "closed_by_server": hostile.closed_by_server, "answered_408": hostile.answered_408,
                    "connect_refused": hostile.refused},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slow", type=int, default=500)
    parser.add_argument("--idle", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="slow-clients-"))
    server = ServerProcess({"ARTIFACT_STORE_DATA_DIR": str(data_dir)}, workers=args.workers).start()
    try:
        quiet = asyncio.run(measure(server.port, 0, 0, 5, args.clients))
        loaded = asyncio.run(measure(server.port, args.slow, args.idle, args.seconds, args.clients))
        print(json.dumps({"server_code": os.getcwd(), "without_hostile_clients": quiet,
                          "with_hostile_clients": loaded,
                          "server_peak_rss_mib": round(server.peak_rss_kib() / 1024, 1)}, indent=2))
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
