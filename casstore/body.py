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
        if self.announced_size is not None:
            left = self.announced_size - self.received
            if left <= 0:
                return b""
            size = left if size is None or size < 0 else min(size, left)
        try:
            data = self._stream.read(size)
        except CasstoreError:
            raise
        except Exception as exc:  # the server's reader: a broken chunked encoding, a reset connection
            raise IncompleteBody(f"the request body could not be read after {self.received} bytes "
                                 f"({type(exc).__name__})", received=self.received) from exc
        if not data and size != 0 and self.announced_size is not None:
            raise IncompleteBody(f"the body ended after {self.received} of the {self.announced_size} bytes "
                                 "its Content-Length announced", received=self.received,
                                 announced=self.announced_size)
        self.received += len(data)
        return data

    def readinto(self, buffer) -> int:
        """Fill ``buffer`` as far as one read goes (the server's readinto if it has one: no copy)."""
        size = len(buffer)
        if self.announced_size is not None:
            size = min(size, self.announced_size - self.received)
            if size <= 0:
                return 0
        readinto = getattr(self._stream, "readinto", None)
        if readinto is None:
            data = self.read(size)
            buffer[:len(data)] = data
            return len(data)
        try:
            n = readinto(memoryview(buffer)[:size])
        except CasstoreError:
            raise
        except Exception as exc:
            raise IncompleteBody(f"the request body could not be read after {self.received} bytes "
                                 f"({type(exc).__name__})", received=self.received) from exc
        if not n and self.announced_size is not None:
            raise IncompleteBody(f"the body ended after {self.received} of the {self.announced_size} bytes "
                                 "its Content-Length announced", received=self.received,
                                 announced=self.announced_size)
        self.received += n or 0
        return n or 0

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        """The whole body, ``size`` bytes at a time."""
        while data := self.read(size):
            yield data
