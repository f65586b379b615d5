"""Large files sent as chunks: cut locally, ask which chunks the store lacks, send only those.

The same chunker as the server (casstore.chunking: its settings travel by name,
and the server refuses another). One request per file carries the recipe and the
missing chunks; the server derives each chunk's id from its bytes, reads the chunks
it holds back, and computes the file's SHA-256 and BLAKE3 itself. If gc took a chunk
between our question and the upload, the answer (409) lists it and we send again
with it. Memory stays flat: the file is cut as a stream (8 MiB of buffer, twice
for a file cut in two halves; an mmap would count the whole file in the resident
size) and each chunk is read back with pread when its turn comes.

A file the store holds none of (sampled_chunks_held) is not cut here: it goes
whole with PUT, and the server cuts it as it arrives.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from casstore import chunking
from casstore.tarstream import END_OF_ARCHIVE, member_header, padding

from .client import ApiError, StoreClient
from .rundir import ChangedWhileReading, RunDirError

MISSING_BATCH = 10_000
SPLIT_FROM = 64 << 20  # files cut in two halves at once (recipe_of)
ATTEMPTS = 10
# Sampling a large file before cutting it whole (sampled_chunks_held):
SAMPLES = 8
SAMPLE_SIZE = 6 << 20  # ~4 chunks of 1.25 MiB: two or three whole ones between the cut edges
SAMPLE_FROM = 64 << 20  # smaller files are cut whole: 8 samples would read most of them anyway


def recipe_of(path: str, on_bytes=None) -> list[chunking.RecipeEntry]:
    """Cut a file into the store's chunks: (id, offset, size) in file order.

    A file of SPLIT_FROM bytes or more is cut in two halves at once, on two threads (the
    cutter and BLAKE3 release the GIL): 0.30-0.33 s for a 1 GiB capture, 0.55-0.58 s in one
    pass. The result is the one pass's, exactly: a FastCDC cut depends only on the bytes
    from the last cut to at most the largest chunk size ahead (and on where the file ends,
    which both passes read alike), so once the first half's cutting, carried on past the
    middle, starts a chunk where the second half's does, every later chunk is the same; it
    takes the second half's from there. They meet within a chunk or two, except where data
    cut at the largest size (uniform data) runs out of phase with the middle (a multiple of
    that size): then the first pass goes on to the end, as one pass would.
    """
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        middle = size // 2 // chunking.MAX_SIZE * chunking.MAX_SIZE
        if size < SPLIT_FROM:
            return list(_cut(f, 0, on_bytes))
        with ThreadPoolExecutor(1, thread_name_prefix="cut") as pool:
            second = pool.submit(_cut_from, path, middle, on_bytes)
            recipe, rest = [], None
            for entry in _cut(f, 0, on_bytes, upto=middle):  # the second half counts the rest
                if entry.offset >= middle:
                    if rest is None:
                        rest = {e.offset: i for i, e in enumerate(second.result())}
                    if entry.offset in rest:  # the same cut from here on
                        return recipe + second.result()[rest[entry.offset]:]
                recipe.append(entry)
            second.result()  # never met: the first pass went to the end (a failure of the second raises)
            return recipe


def _cut_from(path: str, start: int, on_bytes) -> list[chunking.RecipeEntry]:
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        return list(_cut(f, start, on_bytes))


def _cut(f, start: int, on_bytes, upto: int | None = None) -> Iterator[chunking.RecipeEntry]:
    """The chunks of ``f`` from its position (``start`` in the file) to its end; the bytes read
    are reported to ``on_bytes`` (a progress bar), the first ``upto`` of them if given."""
    reader = f if on_bytes is None else _Counted(f, on_bytes, upto)
    for c in chunking.new_cutter().cut_stream(reader):
        yield chunking.RecipeEntry(chunking.chunk_id(c.data), start + c.offset, c.length)


class _Counted:
    """A raw file whose reads are reported to ``on_bytes``, the first ``upto`` bytes if given."""

    def __init__(self, f, on_bytes, upto: int | None = None) -> None:
        self._f, self._on_bytes, self._left = f, on_bytes, upto

    def readinto(self, dest) -> int:
        n = self._f.readinto(dest)
        shown = n if self._left is None else min(n, self._left)
        if shown:
            self._on_bytes(shown)
            if self._left is not None:
                self._left -= shown
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
    """(length, stream) of the tar the server takes: recipe.json, then each chunk to send."""
    doc = {"chunker": chunking.CHUNKER, "chunks": [[e.chunk_id, e.size] for e in recipe]}
    if media_type:
        doc["media_type"] = media_type
    head = json.dumps(doc, separators=(",", ":")).encode()
    sent = [e for e in recipe if e.chunk_id in send]
    size = sum(512 + n + len(padding(n)) for n in [len(head), *(e.size for e in sent)]) + len(END_OF_ARCHIVE)

    def stream() -> Iterator[bytes]:
        # The file's errors are the run's (exit 2): an OSError leaving this body would be taken
        # by the client for the network's (exit 1, "cannot reach the service"). A send failure
        # never enters here: the client just stops asking for the next piece.
        yield member_header("recipe.json", len(head)) + head + padding(len(head))
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                for e in sent:
                    data = os.pread(fd, e.size, e.offset)
                    if len(data) != e.size:
                        raise ChangedWhileReading(f"{path} became shorter while being sent")
                    yield member_header(e.chunk_id, e.size)
                    yield data
                    yield padding(e.size)
            finally:
                os.close(fd)
        except OSError as exc:
            raise RunDirError(f"cannot read {path}: {exc.strerror or exc}") from exc
        yield END_OF_ARCHIVE

    return size, stream()


def upload(client: StoreClient, package_id: str, rel_path: str, abspath: str, sha256: str | None,
           replace: bool, races=None, recipe: list[chunking.RecipeEntry] | None = None) -> tuple[dict, int]:
    """Send one large file (its recipe, if cut already); returns (the entry the server recorded,
    bytes of chunks sent). ``sha256``, if known, is sent for the server to check."""
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
