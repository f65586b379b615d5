"""One WSGI wrapper around the app: request id, byte counts, duration, access log, request metrics.

It sits outside Flask so that it sees every answer (errors included) and
measures until the last byte of a streamed body is sent, whatever server or
worker class runs the app. The request id is generated here (a ULID: never
taken from the client), put in the WSGI environ for the app (problem
bodies, audit events) and returned in X-Request-Id.

The access log is one JSON object per line on the ``artifact_store.access``
logger: request id, token name ("-" when anonymous or auth is off), method,
route, path, status, bytes in and out, duration in milliseconds, client
address, and the process (worker) that answered.
"""

from __future__ import annotations

import json
import logging
import os
import time

from ulid import ULID

from . import metrics

access_log = logging.getLogger("artifact_store.access")
MAX_LOGGED_PATH = 512


class CountingInput:
    """wsgi.input, counting the bytes the app reads."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self.count = 0

    def read(self, *args) -> bytes:
        data = self._stream.read(*args)
        self.count += len(data)
        return data

    def readline(self, *args) -> bytes:
        data = self._stream.readline(*args)
        self.count += len(data)
        return data

    def readlines(self, *args) -> list[bytes]:
        lines = self._stream.readlines(*args)
        self.count += sum(len(line) for line in lines)
        return lines

    def __iter__(self):
        for line in self._stream:
            self.count += len(line)
            yield line


class CountingInputInto(CountingInput):
    """The same for a stream with readinto (werkzeug then reads without an extra copy)."""

    def readinto(self, buffer) -> int | None:
        n = self._stream.readinto(buffer)
        self.count += n or 0
        return n


class Observe:
    def __init__(self, app) -> None:
        self.app = app

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        request_id = str(ULID())
        environ["artifact_store.request_id"] = request_id
        stream = environ.get("wsgi.input")
        counter = None
        if stream is not None:
            counter = (CountingInputInto if hasattr(stream, "readinto") else CountingInput)(stream)
            environ["wsgi.input"] = counter
        status = [500]

        def start(status_line, headers, exc_info=None):
            status[0] = int(status_line[:3])
            headers.append(("X-Request-Id", request_id))
            return start_response(status_line, headers, exc_info)

        def finish(bytes_out: int) -> None:
            seconds = time.perf_counter() - started
            bytes_in = counter.count if counter is not None else 0
            route = environ.get("artifact_store.route")
            metrics.observe(route, environ.get("REQUEST_METHOD", ""), status[0], seconds, bytes_in, bytes_out)
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(json.dumps({
                    "request_id": request_id, "token": environ.get("artifact_store.token_name", "-"),
                    "method": environ.get("REQUEST_METHOD", ""), "route": route or "unmatched",
                    "path": environ.get("PATH_INFO", "")[:MAX_LOGGED_PATH], "status": status[0],
                    "bytes_in": bytes_in, "bytes_out": bytes_out, "duration_ms": round(seconds * 1000, 2),
                    "remote": environ.get("REMOTE_ADDR"), "pid": os.getpid()}))

        try:
            body = self.app(environ, start)
        except BaseException:
            finish(0)
            raise
        return Body(body, finish)


class Body:
    """The answer's iterable, counting what is sent; ``finish`` runs once, when the server closes it."""

    def __init__(self, body, finish) -> None:
        self._body, self._finish, self._sent, self._done = body, finish, 0, False

    def __iter__(self):
        for chunk in self._body:
            self._sent += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            if hasattr(self._body, "close"):
                self._body.close()
        finally:
            if not self._done:
                self._done = True
                self._finish(self._sent)
