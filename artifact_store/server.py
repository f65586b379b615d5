"""gunicorn, started from Python so that ``artifact-store serve`` needs no config file.

Workers are gunicorn's gthread with one change, ``GuardedWorker``: the request
head is read by the worker's event loop, not by a request thread.

Why: stock gthread hands a connection to a thread at its first byte, and the
thread then blocks until the whole head has arrived, with no deadline. 16
connections sending one header line every 2 s stopped a 2 x 8 server, and
sockets that never send a byte each held a thread for 5 s (FACTS.md,
"Serving under slow and idle clients"). Here a connection is only given a
thread once its head is complete (or provably too large); until then it
costs one registration in the selector and at most MAX_HEAD bytes. A head not
complete within ``header_timeout`` of accept (or, on a kept-alive
connection, of its next byte) is answered 408 and closed - or just closed if
nothing came; idle kept-alive connections wait in the selector as before and
close after ``keepalive`` seconds.

Once the head is in, the request thread streams the body as before (bounded
memory, no spooling), under two guards: no read or write may wait more than
``io_timeout`` seconds, and a body must arrive at MIN_RATE bytes/s on average
once GRACE seconds have passed. A stalled upload or a download nobody reads
therefore frees its thread within ``io_timeout``.

Alternatives measured with bench/slow_clients.py and bench/ingest_api.py are
in docs/operations.md (waitress: ingest 2x slower, every body spooled to a file,
and its select() loop died past 1,024 connections; stock gthread: every other
request timed out). Every answer the server gives before the application
sees the request (400, 408, 414, 431, 501) is application/problem+json.
"""

from __future__ import annotations

import errno
import io
import json
import selectors
import socket
import time
from functools import partial

from gunicorn.app.base import BaseApplication
from gunicorn.http import errors as http_errors
from gunicorn.http.body import LengthReader
from gunicorn.workers.gthread import _DEFER, ThreadWorker

from casstore.config import Settings

MAX_HEAD = 64 << 10  # a request head past this is refused (431, or 414 if the request line alone is)
MIN_RATE = 1024  # bytes/s a request body must average once GRACE seconds have passed
GRACE = 30.0
READ = 1 << 16
READ_STEP = 1 << 20  # the largest single recv of a sized body read
LINGER = 2.0  # seconds a closing connection is drained (RFC 9112 9.6), in the event loop, never blocking it

# (exception class, status, title): the answers gunicorn's parser gives before the application.
PRE_APP_ERRORS = (
    (http_errors.LimitRequestLine, 414, "URI Too Long"),
    (http_errors.LimitRequestHeaders, 431, "Request Header Fields Too Large"),
    (http_errors.UnsupportedTransferCoding, 501, "Not Implemented"),
    (http_errors.InvalidResponseHeader, 500, "Internal Server Error"),  # the application's fault
    (http_errors.InvalidResponseHeaderName, 500, "Internal Server Error"),
    (http_errors.ConfigurationProblem, 500, "Internal Server Error"),
    (http_errors.ForbiddenProxyRequest, 403, "Forbidden"),
    (http_errors.ExpectationFailed, 417, "Expectation Failed"),
    (http_errors.ParseException, 400, "Bad Request"),
)


def problem_bytes(status: int, title: str, detail: str, close: bool = True) -> bytes:
    """A complete HTTP/1.1 problem+json answer (RFC 9457), written straight to the socket."""
    body = json.dumps({"type": "about:blank", "status": status, "title": title, "detail": detail}).encode()
    head = (f"HTTP/1.1 {status} {title}\r\nContent-Type: application/problem+json\r\n"
            f"Content-Length: {len(body)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n")
    return head.encode("latin-1") + body


def head_end(buf: bytes | bytearray, start: int = 0) -> int:
    """Where the request head ends in ``buf``, looking from ``start`` (-1: not yet)."""
    start = max(start, 0)
    ends = [i for i in (buf.find(b"\r\n\r\n", start), buf.find(b"\n\n", start)) if i >= 0]
    return min(ends) if ends else -1


def head_complete(buf: bytes | bytearray) -> bool:
    return head_end(buf) >= 0


class PacedSocket:
    """The socket a request thread reads its body from: recv fails once the client is too slow.

    Every recv already waits at most ``io_timeout`` (the socket's timeout);
    this adds the average-rate floor, so a body trickling one byte just
    within each timeout cannot hold a thread for hours.
    """

    def __init__(self, sock, min_rate: float = MIN_RATE, grace: float = GRACE) -> None:
        self._sock, self._min_rate, self._grace = sock, min_rate, grace
        self._started, self._received = time.monotonic(), 0
        self.stalled = False

    def recv(self, size: int) -> bytes:
        data = self._paced(self._sock.recv, size)
        self._received += len(data)
        return data

    def recv_into(self, buffer) -> int:
        n = self._paced(self._sock.recv_into, buffer)
        self._received += n
        return n

    def _paced(self, receive, arg):
        if self.stalled:  # once stalled, no drain of the rest either: the connection is closed
            raise TimeoutError("the client stalled")
        elapsed = time.monotonic() - self._started
        try:
            if elapsed > self._grace and self._received < self._min_rate * elapsed:
                raise TimeoutError(f"request body slower than {self._min_rate} bytes/s")
            return receive(arg)
        except TimeoutError:
            self.stalled = True
            raise

    def __getattr__(self, name):
        return getattr(self._sock, name)


class DirectBody:
    """gunicorn's request body with ``readinto``: a large body read straight from the socket.

    gunicorn's Body copies every byte four times on its way to the application
    (recv, the unreader's buffer, the reader's slice, the body's buffer) and
    reads ahead up to 1 MiB: 0.47 to 0.68 s per GiB on one core here, against
    0.18 s for recv_into a buffer the caller owns (measured over a socketpair,
    1 GiB read in chunk-sized pieces). The chunks of a large file are read with
    ``readinto``, sized reads with plain recv, after any byte gunicorn already
    holds; unsized reads and chunked bodies still go through gunicorn's reader.
    Its remaining length is kept exact, so keep-alive and the drain of an
    unread rest work as before.
    """

    def __init__(self, body) -> None:
        self._body = body

    def readinto(self, buffer) -> int:
        if not isinstance(self._body.reader, LengthReader):
            return _copy_into(buffer, self._body.read(len(buffer)))
        held = self._take_held(len(buffer))
        if held:
            return _copy_into(buffer, held)
        want = min(len(buffer), self._body.reader.length)
        return self._recv(self._socket().recv_into, memoryview(buffer)[:want]) if want > 0 else 0

    def read(self, size=None) -> bytes:
        """``size`` bytes (fewer only at the end)."""
        if size is None or size < 0 or not isinstance(self._body.reader, LengthReader):
            return self._body.read(size)
        want, parts = min(size, self._body.buf.tell() + self._body.reader.length), []
        while want > 0:
            data = self._take_held(want) or self._recv(self._socket().recv, min(want, READ_STEP))
            if not data:
                break
            parts.append(data)
            want -= len(data)
        return b"".join(parts)

    def _take_held(self, n: int) -> bytes:
        """Up to ``n`` of the body's bytes gunicorn read from the socket already, and only those
        (gunicorn's own read would refill its buffer: it asks for at least 1 KiB). Its buffer may
        also hold the start of a pipelined request: only up to the body's length counts."""
        body, reader = self._body, self._body.reader
        if body.buf.tell():
            return body.read(min(n, body.buf.tell()))
        reader.unreader.buf.seek(0, io.SEEK_END)
        held = min(n, reader.unreader.buf.tell(), reader.length)
        if not held:
            return b""
        data = reader.unreader.read(held)  # it holds them: no recv
        reader.length -= len(data)
        return data

    def _socket(self):
        """The unreader's socket: paced during the request, the plain one when gunicorn drains
        an unread rest afterwards (as for its own reader)."""
        return self._body.reader.unreader.sock

    def _recv(self, receive, arg):
        try:
            got = receive(arg)
        except BaseException:
            self._body.failed = True  # where the next request starts is unknown: gunicorn closes
            raise
        self._body.reader.length -= got if isinstance(got, int) else len(got)
        return got

    def __getattr__(self, name):  # read, readline, iteration: gunicorn's own
        return getattr(self._body, name)

    def __iter__(self):
        return iter(self._body)


def _copy_into(buffer, data: bytes) -> int:
    buffer[:len(data)] = data
    return len(data)


class GuardedWorker(ThreadWorker):
    """gthread whose event loop, not a request thread, waits for each request head (see the module doc)."""

    def init_process(self) -> None:
        self.heads: dict = {}  # connection -> deadline, while its head is being read
        self.lingering: dict = {}  # connection -> deadline, while its close is drained
        super().init_process()

    # -- the head, read in the event loop --------------------------------------------------
    def enqueue_req(self, conn) -> None:
        if self.cfg.is_ssl:  # TLS belongs to the reverse proxy (docs/operations.md)
            return super().enqueue_req(conn)
        # A kept-alive connection comes back here once readable; bytes of a pipelined request may be buffered.
        conn.head = bytearray(conn.parser.unreader.take_buffered() if conn.parser is not None else b"")
        if head_complete(conn.head):
            return super().enqueue_req(conn)
        conn.sock.setblocking(False)
        self.heads[conn] = time.monotonic() + self.header_timeout
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_head_readable, conn))

    def on_head_readable(self, conn, _sock) -> None:
        try:
            data = conn.sock.recv(READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            return self._drop(conn)
        conn.head += data
        end = head_end(conn.head, len(conn.head) - len(data) - 3)  # only the new bytes: O(n) for a trickle
        if (end if end >= 0 else len(conn.head)) > MAX_HEAD:
            line_end = conn.head.find(b"\n")
            line_too_long = line_end < 0 or line_end > MAX_HEAD
            self._refuse(conn, 414 if line_too_long else 431,
                         "URI Too Long" if line_too_long else "Request Header Fields Too Large",
                         f"the request {'line' if line_too_long else 'head'} is longer than {MAX_HEAD} bytes")
        elif end >= 0:
            self._unwatch(conn)
            conn.data_ready = True
            super().enqueue_req(conn)

    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        for conn in [c for c, deadline in self.lingering.items() if deadline <= now]:
            self._end_linger(conn)
        for conn in [c for c, deadline in self.heads.items() if deadline <= now]:
            if conn.head:
                self._refuse(conn, 408, "Request Timeout",
                             f"the request head did not arrive within {self.header_timeout:g} s")
            else:
                self._drop(conn)  # an idle connection: nothing to answer

    def _unwatch(self, conn) -> None:
        self.heads.pop(conn, None)
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass

    def _drop(self, conn) -> None:
        self._unwatch(conn)
        self.nr_conns -= 1
        conn.close()

    def _refuse(self, conn, status: int, title: str, detail: str) -> None:
        self.log.warning("refused a request from %s: %s", conn.client[0] if conn.client else "?", detail)
        try:
            conn.sock.send(problem_bytes(status, title, detail))  # non-blocking: a small answer or nothing
        except OSError:
            pass
        self._drop(conn)

    # -- closing, in the event loop ------------------------------------------------------------
    def finish_request(self, conn, fs) -> None:
        """As gthread's, except a connection to close lingers in the selector, not in a blocking loop.

        gthread drains a closing connection (RFC 9112 9.6) for up to 2 s on the event loop
        thread itself: a client that never closes its side froze every other connection of the
        worker for 2 s per request (measured with the stalled-upload test).
        """
        try:
            result = fs.result() if not fs.cancelled() else False
        except Exception:
            result = False
        if result is _DEFER or result:  # kept alive (or deferred): gthread knows what to do
            return super().finish_request(conn, fs)
        try:
            conn.sock.shutdown(socket.SHUT_WR)
            conn.sock.setblocking(False)
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_linger_readable, conn))
        except (OSError, ValueError, KeyError):
            self.nr_conns -= 1
            conn.close()
            return
        self.lingering[conn] = time.monotonic() + LINGER

    def _on_linger_readable(self, conn, _sock) -> None:
        try:
            if conn.sock.recv(READ):
                return  # drained some; the deadline bounds how long this goes on
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._end_linger(conn)

    def _end_linger(self, conn) -> None:
        self.lingering.pop(conn, None)
        self._unwatch(conn)
        self.nr_conns -= 1
        conn.close()

    # -- the request, in a thread ------------------------------------------------------------
    def handle(self, conn):
        head, conn.head = getattr(conn, "head", None), None
        if head:
            conn.sock.setblocking(True)
            conn.init()
            unreader = conn.parser.unreader
            rest = unreader.take_buffered()
            unreader.buf.write(bytes(head) + rest)
        return super().handle(conn)

    def handle_request(self, req, conn):
        conn.sock.settimeout(self.io_timeout)  # every read and write of this request: at most io_timeout
        unreader = conn.parser.unreader
        unreader.sock = paced = PacedSocket(conn.sock)
        req.body = DirectBody(req.body)
        try:
            keepalive = super().handle_request(req, conn)
        finally:
            unreader.sock = conn.sock
        return keepalive and not paced.stalled

    def handle_error(self, req, client, addr, exc) -> None:
        """The server's own answers (bad request line, 414, 431, ...) as problem+json, never HTML."""
        for cls, status, title in PRE_APP_ERRORS:
            if isinstance(exc, cls):
                if status < 500:
                    self.log.warning("invalid request from %s: %s", (addr or ("?",))[0], exc)
                else:
                    self.log.exception("error handling request")
                break
        else:
            if isinstance(exc, OSError) and exc.errno in (None, errno.ETIMEDOUT):
                self.log.info("closed a connection whose client stalled: %s", exc)
                return
            self.log.exception("error handling request")
            status, title = 500, "Internal Server Error"
        detail = str(exc)[:300] if status < 500 else "the server failed to handle the request"
        try:
            client.settimeout(self.io_timeout)
            client.sendall(problem_bytes(status, title, detail))
        except OSError:
            self.log.debug("could not send the error answer")

    @property
    def header_timeout(self) -> float:
        return self.app.options.get("header_timeout", 10.0)

    @property
    def io_timeout(self) -> float:
        return self.app.options.get("io_timeout", 30.0)


class _Server(BaseApplication):
    def __init__(self, settings: Settings, options: dict) -> None:
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings:  # newer settings are skipped on an older gunicorn
                self.cfg.set(key, value)

    def load(self):
        from api import create_app

        return create_app(self.settings)


def _raise_open_files_limit(wanted: int) -> None:
    """Lift the soft limit on open files toward ``wanted`` (within the hard limit): with the
    usual soft limit of 1024, accept() fails with EMFILE long before max-connections is reached."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def run(settings: Settings, *, workers: int = 2, threads: int = 8, header_timeout: float = 10.0,
        io_timeout: float = 30.0, keepalive: int = 15, max_connections: int = 4096) -> None:
    _raise_open_files_limit(workers * (max_connections + 64) + 64)
    _Server(settings, {
        "bind": f"{settings.host}:{settings.port}",
        "workers": workers,
        "threads": threads,
        "worker_class": GuardedWorker,
        "worker_connections": max_connections,
        "timeout": 120,
        "graceful_timeout": 30,
        "keepalive": int(keepalive),  # gunicorn takes whole seconds
        # No request-line limit of gunicorn's own (its 4094 bytes refused a legal 1024-byte path once
        # percent-encoded): the whole head is capped at MAX_HEAD by GuardedWorker before parsing.
        "limit_request_line": 0,
        "header_timeout": header_timeout,  # read by GuardedWorker, not a gunicorn setting
        "io_timeout": io_timeout,
        "errorlog": "-",
        "loglevel": "info",
        # No gunicornc control socket: one fixed path per user would be shared by every server on the host.
        "control_socket_disable": True,
    }).run()
