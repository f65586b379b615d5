"""Large files sent as chunks: cut locally, ask which chunks the store lacks, send only those.

The same chunker as the server (casstore.chunking: its settings travel by name,
and the server refuses another). One request per file carries the recipe and the
missing chunks; the server derives each chunk's id from its bytes, reads the chunks
it holds back, and computes the file's SHA-256 and BLAKE3 itself. If gc took a chunk
between our question and the upload, the answer (409) lists it and we send again
with it. Memory stays flat: the file is cut as a stream (about 2 x 4 MiB of buffer;
an mmap would count the whole file in the resident size) and each chunk is read
back with pread when its turn comes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from casstore import chunking
from casstore.tarstream import END_OF_ARCHIVE, member_header, padding

from .client import ApiError, StoreClient

MISSING_BATCH = 10_000
ATTEMPTS = 10


def recipe_of(path: str, on_bytes=None) -> list[chunking.RecipeEntry]:
    """Cut a file into the store's chunks: (id, offset, size) in file order."""
    return sha256_and_recipe(path, on_bytes, sha=False)[1]


class _HashingFile:
    """A raw file whose reads are also fed to SHA-256 on a helper thread (one read behind),
    while the caller's thread cuts and derives chunk ids: one pass over the file for both."""

    def __init__(self, f, pool, on_bytes) -> None:
        self._f, self._pool, self._on_bytes = f, pool, on_bytes
        self.sha = hashlib.sha256() if pool is not None else None
        self._pending = None

    def readinto(self, dest) -> int:
        n = self._f.readinto(dest)
        if n and self.sha is not None:
            piece = bytes(dest[:n])  # the chunker reuses its buffer: hash a copy
            if self._pending is not None:
                self._pending.result()
            self._pending = self._pool.submit(self.sha.update, piece)
        if n and self._on_bytes is not None:
            self._on_bytes(n)
        return n

    def hexdigest(self) -> str:
        if self._pending is not None:
            self._pending.result()
        return self.sha.hexdigest()


def sha256_and_recipe(path: str, on_bytes=None, sha: bool = True) -> tuple[str | None, list[chunking.RecipeEntry]]:
    """One read of a large file: its SHA-256 (if asked) and its recipe."""
    with open(path, "rb", buffering=0) as f, ThreadPoolExecutor(1) as pool:
        reader = _HashingFile(f, pool if sha else None, on_bytes)
        recipe = [chunking.RecipeEntry(chunking.chunk_id(c.data), c.offset, c.length)
                  for c in chunking.new_cutter().cut_stream(reader)]
        return (reader.hexdigest() if sha else None), recipe


def missing_chunks(client: StoreClient, recipe: list[chunking.RecipeEntry]) -> set[str]:
    ids = sorted({e.chunk_id for e in recipe})
    missing: set[str] = set()
    for i in range(0, len(ids), MISSING_BATCH):
        missing |= client.missing_chunks(ids[i:i + MISSING_BATCH])
    return missing


def body_of(path: str, recipe: list[chunking.RecipeEntry], send: set[str],
            media_type: str | None) -> tuple[int, Iterator[bytes]]:
    """(length, stream) of the tar the server takes: recipe.json, then each chunk to send."""
    doc = {"chunker": chunking.CHUNKER, "chunks": [[e.chunk_id, e.size] for e in recipe]}
    if media_type:
        doc["media_type"] = media_type
    head = json.dumps(doc, separators=(",", ":")).encode()
    sent = [e for e in recipe if e.chunk_id in send]
    size = sum(512 + n + len(padding(n)) for n in [len(head), *(e.size for e in sent)]) + len(END_OF_ARCHIVE)

    def stream() -> Iterator[bytes]:
        yield member_header("recipe.json", len(head)) + head + padding(len(head))
        fd = os.open(path, os.O_RDONLY)
        try:
            for e in sent:
                data = os.pread(fd, e.size, e.offset)
                if len(data) != e.size:
                    raise OSError(f"{path} became shorter while it was being sent")
                yield member_header(e.chunk_id, e.size)
                yield data
                yield padding(e.size)
        finally:
            os.close(fd)
        yield END_OF_ARCHIVE

    return size, stream()


def upload(client: StoreClient, package_id: str, rel_path: str, abspath: str, sha256: str,
           replace: bool, races=None, recipe: list[chunking.RecipeEntry] | None = None) -> tuple[dict, int]:
    """Send one large file (its recipe, if cut already while hashing); returns (the entry the
    server recorded, bytes of chunks sent)."""
    recipe = recipe if recipe is not None else recipe_of(abspath)
    send = missing_chunks(client, recipe)
    for attempt in range(ATTEMPTS):
        size, body = body_of(abspath, recipe, send, None)
        try:
            entry = client.upload_chunked(package_id, rel_path, body, size, sha256, replace)
            return entry, sum(e.size for e in recipe if e.chunk_id in send)
        except ApiError as exc:
            lost = set(exc.problem.get("missing_chunks") or ())
            if exc.status != 409 or not lost or attempt == ATTEMPTS - 1:
                raise
            if races is not None:  # a test counts them
                races.chunk_races += 1
            send = missing_chunks(client, recipe) | lost  # gc took some after we asked: ask afresh
    raise AssertionError("unreachable")
