"""Digests: the only way a string becomes a blob identity.

SHA-256 is the identity (the storage key and the primary key of a blob);
BLAKE3 is computed in the same pass so consumers can verify fast with b3sum.
Every digest a client sends is parsed here and only a validated lowercase hex
string leaves this module.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

import blake3

from .errors import InvalidDigest

_HEX64 = re.compile(r"[0-9a-f]{64}")


def parse_sha256(value: str) -> str:
    """Return the lowercase hex of a SHA-256 given as ``hex`` or ``sha256:hex``."""
    if not isinstance(value, str):
        raise InvalidDigest("a digest must be a string")
    text = value.strip()
    if text.startswith("sha256:"):
        text = text[len("sha256:"):]
    text = text.lower()
    if not _HEX64.fullmatch(text):
        raise InvalidDigest(f"not a SHA-256 digest: {value[:80]!r}")
    return text


def parse_content_digest(header: str) -> str | None:
    """Parse an RFC 9530 ``Content-Digest`` header; return the sha-256 hex, if any.

    Other algorithms in the header are ignored (we can only check sha-256);
    a malformed sha-256 member is an error, not something to skip silently.
    """
    for member in header.split(","):
        name, sep, value = member.strip().partition("=")
        if not sep or name.strip().lower() != "sha-256":
            continue
        value = value.strip()
        if not (value.startswith(":") and value.endswith(":") and len(value) > 2):
            raise InvalidDigest("Content-Digest sha-256 must be a byte sequence :base64:")
        try:
            raw = base64.b64decode(value[1:-1], validate=True)
        except binascii.Error as exc:
            raise InvalidDigest("Content-Digest sha-256 is not valid base64") from exc
        if len(raw) != 32:
            raise InvalidDigest("Content-Digest sha-256 must decode to 32 bytes")
        return raw.hex()
    return None


def content_digest_header(sha256_hex: str) -> str:
    """The RFC 9530 header value for a SHA-256 hex digest."""
    return "sha-256=:" + base64.b64encode(bytes.fromhex(sha256_hex)).decode() + ":"


@dataclass(frozen=True)
class Digests:
    """What one streaming pass over some bytes learned about them."""

    sha256: str
    blake3: str
    size: int


class Hasher:
    """SHA-256 + BLAKE3 + byte count, fed chunk by chunk (never the whole file)."""

    __slots__ = ("_sha", "_b3", "size")

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._b3 = blake3.blake3()
        self.size = 0

    def update(self, chunk: bytes | memoryview) -> None:
        self._sha.update(chunk)
        self._b3.update(chunk)
        self.size += len(chunk)

    def update_sha256(self, chunk: bytes) -> None:
        """The SHA-256 half alone (it releases the GIL: another thread can run it)."""
        self._sha.update(chunk)

    def update_rest(self, chunk: bytes) -> None:
        """Everything but the SHA-256: BLAKE3 and the byte count."""
        self._b3.update(chunk)
        self.size += len(chunk)

    def result(self) -> Digests:
        return Digests(self._sha.hexdigest(), self._b3.hexdigest(), self.size)


def digest_bytes(data: bytes) -> Digests:
    """Digests of a small in-memory buffer."""
    hasher = Hasher()
    hasher.update(data)
    return hasher.result()


class HashingReader:
    """A read()-able stream that hashes (SHA-256) everything read through it.

    For a request body checked as a whole (a tar batch's Content-Digest)
    while a parser reads it piece by piece.
    """

    def __init__(self, stream) -> None:
        self._stream = stream
        self._sha = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._sha.update(data)
        return data

    def drain(self, block: int = 1 << 20) -> str:
        """Read (and hash) whatever is left; the SHA-256 hex of all the bytes."""
        while self.read(block):
            pass
        return self._sha.hexdigest()
