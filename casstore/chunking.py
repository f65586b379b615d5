"""Content-defined chunking of large files: the chunker, its pinned settings, and chunk ids.

Why chunks: a guide-board run repeats, and its large raw captures change in
part from one run to the next; whole-file dedup stores such a capture again
whole (CHUNKING.md: 1,076 MB stored for 108 MB that changed). A file above
``THRESHOLD`` is cut into content-defined chunks (FastCDC 2020, pyfastcdc's
compiled extension) and stored as its ordered list of chunks (its recipe);
a chunk is stored once, whichever files and packages hold it.

Settings, from the figures measured here (CHUNKING.md):

* FastCDC, min 256 KiB / avg 1 MiB / max 4 MiB, normalisation 1, gear seed 0.
  1 MiB stores 108.5 MB for the 107.4 MB of a capture whose first 10% was
  rewritten (within 1.01x; 4 MiB: 118.9 MB) and 2.0 MB for a 1 MiB insert
  (4 MiB: 21.2 MB), at about 855 chunks per GiB (256 KiB would need 3,375:
  four times the rows, lookups and range requests for 1% fewer bytes).
  restic uses 512 KiB / 1 MiB / 8 MiB; borg 512 KiB / 2 MiB / 8 MiB.
  max = 4 x avg keeps the chunker's buffer (about 2 x max) at ~27 MiB peak.
* Files above 8 MiB are chunked: below that a file is a handful of chunks,
  and one object (or one pack slice) reads faster and costs one row.

Chunk ids are BLAKE3 in derive-key mode with the context ``CONTEXT``: domain
separated from every file digest (SHA-256 and plain BLAKE3), so a chunk id
can never be taken for a blob's digest, nor the other way round.

The settings are pinned per file: each chunked blob row records
``CHUNKER`` (its name encodes every parameter). Reading a file needs only
its recipe, never the chunker, so a later change of settings cannot break
old files; it only stops new chunks from matching old ones, and a client
must send the name of the chunker it cut with (the server refuses others).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import NamedTuple

import blake3

MIN_SIZE = 256 << 10
AVG_SIZE = 1 << 20
MAX_SIZE = 4 << 20
NORMALIZATION = 1
SEED = 0
THRESHOLD = 8 << 20  # files larger than this are chunked
CONTEXT = "artifact-store chunk v1"
CHUNKER = f"fastcdc2020-min{MIN_SIZE}-avg{AVG_SIZE}-max{MAX_SIZE}-nc{NORMALIZATION}-seed{SEED}-b3dk1"


def new_cutter():
    """A FastCDC chunker with the pinned settings (one per stream: it is not thread-safe)."""
    return _compiled_fastcdc()(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE,
                               normalized_chunking=NORMALIZATION, seed=SEED)


def require_compiled() -> None:
    """Raise ImportError now unless pyfastcdc's compiled chunker loads (a server calls this at
    start-up: it cuts large PUTs, and must refuse to start rather than fail its first one)."""
    _compiled_fastcdc()


@cache
def _compiled_fastcdc():
    """pyfastcdc's compiled chunker, imported on first use (6 ms of every CLI start otherwise,
    4% of an unchanged re-ingest, which cuts nothing)."""
    import pyfastcdc

    try:  # the pure-Python fallback cuts at ~5 MB/s, 600x slower: refuse to run on it
        from pyfastcdc.cy import FastCDC as compiled
    except ImportError as exc:  # pragma: no cover - depends on the wheel installed
        raise ImportError("pyfastcdc's compiled extension did not load (the pure-Python fallback is 600x "
                          "slower); reinstall pyfastcdc from a wheel for this platform") from exc
    assert pyfastcdc.FastCDC is compiled, "pyfastcdc fell back to pure Python"
    return compiled


def chunk_id(data) -> str:
    """A chunk's id: BLAKE3 derive-key of its bytes under CONTEXT (never a file digest)."""
    return blake3.blake3(data, derive_key_context=CONTEXT).hexdigest()


class RecipeEntry(NamedTuple):
    """One chunk of a file: its id, where it starts in the file, and its length."""

    chunk_id: str
    offset: int
    size: int


class IterReader:
    """A ``readinto`` stream over an iterator of byte strings (what pyfastcdc cuts)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._it = iter(chunks)
        self._buf = memoryview(b"")

    def readinto(self, dest: memoryview) -> int:
        while not self._buf:
            try:
                self._buf = memoryview(next(self._it))
            except StopIteration:
                return 0
        n = min(len(dest), len(self._buf))
        dest[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class HeadThen:
    """A ``readinto`` stream: the bytes ``head`` first, then ``rest.readinto`` (a request body
    whose first piece was read to tell a small body from a large one)."""

    def __init__(self, head: bytes, rest) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def readinto(self, dest: memoryview) -> int:
        if not self._head:
            return self._rest.readinto(dest)
        n = min(len(dest), len(self._head))
        dest[:n] = self._head[:n]
        self._head = self._head[n:]
        return n
