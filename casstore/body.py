"""Request bodies read as the client framed them, never as whatever happened to arrive.

A connection that ends early looks, to a WSGI application, like a body that
simply ended: gunicorn hands over its socket reader unwrapped
(``wsgi.input_terminated``) and the dev server's reader returns b"" too. An
evidence store that took such an end at its word would record the bytes that
did arrive under the real path (invariant 7). ``RequestBody`` counts what it
reads and raises IncompleteBody when the stream ends before the announced
Content-Length, and turns any failure of the server's reader (a chunked body
cut before its last chunk, a bad chunk size) into the same error.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

from .errors import CasstoreError, IncompleteBody

CHUNK = 1 << 20


class RequestBody:
    """A readable body whose end is checked against ``announced_size`` (None: chunked, the
    server's dechunker knows the end)."""

    def __init__(self, stream: IO[bytes], announced_size: int | None) -> None:
        self._stream = stream
        self.announced_size = announced_size
        self.received = 0

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all that is left with -1); b"" only at the announced end."""
        size = self._bounded(size)
        if size == 0:
            return b""
        data = self._guarded(self._stream.read, size)
        self._count(len(data))
        return data

    def readinto(self, buffer) -> int:
        """Fill ``buffer`` as far as one read goes (the server's readinto if it has one: no copy)."""
        readinto = getattr(self._stream, "readinto", None)
        if readinto is None:
            data = self.read(len(buffer))
            buffer[:len(data)] = data
            return len(data)
        size = self._bounded(len(buffer))
        if size == 0:
            return 0
        n = self._guarded(readinto, memoryview(buffer)[:size]) or 0
        self._count(n)
        return n

    def _bounded(self, size: int | None) -> int:
        """``size`` (-1/None: all) within what the announced length leaves; 0 at its end."""
        if self.announced_size is None:
            return -1 if size is None else size
        left = self.announced_size - self.received
        if left <= 0:
            return 0
        return left if size is None or size < 0 else min(size, left)

    def _guarded(self, read, arg):
        """One read of the server's reader; its failure (a broken chunked encoding, a reset
        connection) is an incomplete body."""
        try:
            return read(arg)
        except CasstoreError:
            raise
        except Exception as exc:
            raise IncompleteBody(f"the request body could not be read after {self.received} bytes "
                                 f"({type(exc).__name__})", received=self.received) from exc

    def _count(self, n: int) -> None:
        """Count a read of ``n`` bytes (asked for at least one); nothing before the announced end
        means the connection ended early."""
        if not n and self.announced_size is not None:
            raise IncompleteBody(f"the body ended after {self.received} of the {self.announced_size} bytes "
                                 "its Content-Length announced", received=self.received,
                                 announced=self.announced_size)
        self.received += n

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        """The whole body, ``size`` bytes at a time."""
        while data := self.read(size):
            yield data

    def __iter__(self) -> Iterator[bytes]:
        return self.chunks()
