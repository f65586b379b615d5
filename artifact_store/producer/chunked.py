"""Large files sent as chunks: cut locally, ask which chunks the store lacks, send only those.

The same chunker as the server (casstore.chunking: its settings travel by name,
and the server refuses another). One request per file carries the recipe and the
missing chunks: cut as it is sent, a part of PART chunks at a time, the store asked
which of each part it lacks (streamed_body); or, for a file cut already, its whole
recipe first (body_of). The server derives each chunk's id from its bytes, reads
the chunks it holds back, and computes the file's SHA-256 and BLAKE3 itself. If gc
took a chunk between our question and the upload, the answer (409) lists it and we
send again with it. Memory stays flat: the file is cut as a stream (about 2 x 4 MiB
of buffer; an mmap would count the whole file in the resident size) and each chunk
is read back with pread when its turn comes.

A file the store holds none of (sampled_chunks_held) is not cut here: it goes
whole with PUT, and the server cuts it as it arrives.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from casstore import chunking
from casstore.prefetch import Prefetched
from casstore.tarstream import END_OF_ARCHIVE, member_header, padding

from .client import ApiError, StoreClient
from .rundir import ChangedWhileReading, RunDirError

MISSING_BATCH = 10_000
PART = 64  # chunks per recipe part of a streamed body (about 64 MiB, cut in ~40 ms)
RECIPE = "recipe.json"
ATTEMPTS = 10
# Sampling a large file before cutting it whole (sampled_chunks_held):
SAMPLES = 8
SAMPLE_SIZE = 6 << 20  # ~4 chunks of 1.25 MiB: two or three whole ones between the cut edges
SAMPLE_FROM = 64 << 20  # smaller files are cut whole: 8 samples would read most of them anyway


def recipe_of(path: str, on_bytes=None) -> list[chunking.RecipeEntry]:
    """Cut a file into the store's chunks: (id, offset, size) in file order, one streaming read."""
    with open(path, "rb", buffering=0) as f:
        reader = f if on_bytes is None else _Counted(f, on_bytes)
        return [chunking.RecipeEntry(chunking.chunk_id(c.data), c.offset, c.length)
                for c in chunking.new_cutter().cut_stream(reader)]


class _Counted:
    """A raw file whose reads are reported to ``on_bytes`` (a progress bar)."""

    def __init__(self, f, on_bytes) -> None:
        self._f, self._on_bytes = f, on_bytes

    def readinto(self, dest) -> int:
        n = self._f.readinto(dest)
        if n:
            self._on_bytes(n)
        return n


def sampled_chunks_held(client: StoreClient, path: str, size: int) -> bool:
    """Whether the store holds any chunk of SAMPLES windows spread over the file.

    No: the file is new to the store, and sending it whole (the server cuts it and keeps
    only chunks it lacks) sends the same bytes as cutting it here first, without the 0.5 s
    per GiB of cutting and hashing that a first ingest otherwise waits for before its first
    byte travels. Yes: it is cut here and only the chunks the store lacks are sent.

    Each window is cut on its own. Its first and last chunks end where the window does,
    not where the file's cut does, and are left out; the ones between start at a cut the
    file's own cut makes too, almost always (a content-defined cut picks up the file's
    cut points again within a chunk or two of an arbitrary start). No whole chunk in any
    window (uniform data, cut at the maximum size) answers yes: cut here, as a safe default.
    """
    if size < SAMPLE_FROM:  # the windows would overlap: cut it whole instead
        return True
    ids, window = set(), bytearray(SAMPLE_SIZE)  # one buffer: a fresh 6 MiB each time cost page faults
    with open(path, "rb", buffering=0) as f:
        for i in range(SAMPLES):
            n = os.preadv(f.fileno(), [window], (size - SAMPLE_SIZE) * i // (SAMPLES - 1))
            cuts = list(chunking.new_cutter().cut_buf(memoryview(window)[:n]))[1:-1]
            ids.update(chunking.chunk_id(c.data) for c in cuts)
    if not ids:  # no window held a whole chunk (data so uniform that it is cut at the max size)
        return True
    return len(client.missing_chunks(sorted(ids))) < len(ids)


def missing_chunks(client: StoreClient, recipe: list[chunking.RecipeEntry]) -> set[str]:
    ids = sorted({e.chunk_id for e in recipe})
    missing: set[str] = set()
    for i in range(0, len(ids), MISSING_BATCH):
        missing |= client.missing_chunks(ids[i:i + MISSING_BATCH])
    return missing


def body_of(path: str, recipe: list[chunking.RecipeEntry], send: set[str],
            media_type: str | None) -> tuple[int, Iterator[bytes]]:
    """(length, stream) of a body for a file cut already: its whole recipe as one recipe.json
    part, then each chunk to send."""
    doc = {"chunker": chunking.CHUNKER, "chunks": [[e.chunk_id, e.size] for e in recipe]}
    if media_type:
        doc["media_type"] = media_type
    head = json.dumps(doc, separators=(",", ":")).encode()
    sent = [e for e in recipe if e.chunk_id in send]
    size = sum(512 + n + len(padding(n)) for n in [len(head), *(e.size for e in sent)]) + len(END_OF_ARCHIVE)

    def stream() -> Iterator[bytes]:
        yield member_header(RECIPE, len(head)) + head + padding(len(head))
        fd = os.open(path, os.O_RDONLY)
        try:
            for e in sent:
                yield from _chunk_member(fd, path, e)
        finally:
            os.close(fd)
        yield END_OF_ARCHIVE

    return size, stream()


def _chunk_member(fd: int, path: str, e: chunking.RecipeEntry) -> Iterator[bytes]:
    """One chunk as a tar member named by its id, read back from the file (pread)."""
    data = os.pread(fd, e.size, e.offset)
    if len(data) != e.size:
        raise ChangedWhileReading(f"{path} became shorter while being sent")
    yield member_header(e.chunk_id, e.size)
    yield data
    yield padding(e.size)


def streamed_body(client: StoreClient, path: str, sent: list[int]) -> Iterator[bytes]:
    """A body for a file not cut yet, of unknown length: cut as it is sent, PART chunks at a
    time (on a helper thread, which also asks the store which of them it lacks), each part a
    recipe.json of its own followed by the chunks of it the store lacks. The server hashes
    the parts as they come, while the next is being cut: run 2's 1 GiB capture cost the
    cutting (0.7 s) and then the server's assembling (0.8 s) one after the other before.
    Adds the bytes of the chunks sent to ``sent[0]``."""
    lacking: set[str] = set()
    doc: dict = {"chunker": chunking.CHUNKER}
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            with Prefetched(_parts(client, path), depth=2) as parts:
                for part, lacks in parts:
                    lacking |= lacks.result()
                    doc["chunks"] = [[e.chunk_id, e.size] for e in part]
                    head = json.dumps(doc, separators=(",", ":")).encode()
                    yield member_header(RECIPE, len(head)) + head + padding(len(head))
                    doc = {}
                    for e in part:
                        if e.chunk_id in lacking:
                            yield from _chunk_member(fd, path, e)
                            sent[0] += e.size
        finally:
            os.close(fd)
    except OSError as exc:  # the file's (the store's answers raise ApiError / Unreachable), not the network's
        raise RunDirError(f"cannot read {path}: {exc.strerror or exc}") from exc
    yield END_OF_ARCHIVE


def _parts(client: StoreClient, path: str) -> Iterator[tuple[list[chunking.RecipeEntry], Future]]:
    """The file's chunks PART at a time, each part with the answer (a Future) to which of its
    ids the store lacks: asked on a thread of its own while the next part is cut (each id
    asked once; under load an answer took 17 ms, 0.3 s of a GiB's cutting when waited for)."""
    asked: set[str] = set()
    part: list[chunking.RecipeEntry] = []
    with open(path, "rb", buffering=0) as f, ThreadPoolExecutor(1, thread_name_prefix="ask") as asking:
        for c in chunking.new_cutter().cut_stream(f):
            part.append(chunking.RecipeEntry(chunking.chunk_id(c.data), c.offset, c.length))
            if len(part) == PART:
                yield part, asking.submit(_lacking, client, part, asked)
                part = []
        if part:
            yield part, asking.submit(_lacking, client, part, asked)


def _lacking(client: StoreClient, part: list[chunking.RecipeEntry], asked: set[str]) -> set[str]:
    new = sorted({e.chunk_id for e in part} - asked)  # one asking thread: parts in order
    asked.update(new)
    return client.missing_chunks(new) if new else set()


def upload(client: StoreClient, package_id: str, rel_path: str, abspath: str, sha256: str | None,
           replace: bool, races=None, recipe: list[chunking.RecipeEntry] | None = None) -> tuple[dict, int]:
    """Send one large file; returns (the entry the server recorded, bytes of chunks sent).
    Cut as it is sent (streamed_body), or, given its recipe, as that recipe and the chunks
    the store lacks. If gc took a chunk between our question and the upload (409, listed),
    it is sent again, whole recipe first. ``sha256``, if known, is sent for the server to check."""
    send = None
    for attempt in range(ATTEMPTS):
        try:
            if recipe is None:
                sent = [0]
                return client.upload_chunked(package_id, rel_path, streamed_body(client, abspath, sent), None,
                                             sha256, replace), sent[0]
            send = missing_chunks(client, recipe) if send is None else send
            size, body = body_of(abspath, recipe, send, None)
            entry = client.upload_chunked(package_id, rel_path, body, size, sha256, replace)
            return entry, sum(e.size for e in recipe if e.chunk_id in send)
        except ApiError as exc:
            lost = set(exc.problem.get("missing_chunks") or ())
            if exc.status != 409 or not lost or attempt == ATTEMPTS - 1:
                raise
            if races is not None:  # a test counts them
                races.chunk_races += 1
            recipe = recipe if recipe is not None else recipe_of(abspath)
            send = missing_chunks(client, recipe) | lost  # ask afresh
    raise AssertionError("unreachable")
