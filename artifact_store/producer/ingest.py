"""Ingest a guide-board run directory as one package: hash, ask, attach, upload only what is new.

The flow, each step idempotent so that a run interrupted anywhere finishes
the same package when started again:

1. hash every file locally (a cache keyed by path, size, mtime and inode skips
   unchanged files), in parallel; a large file is only cut into its chunks
   (chunked.py): its SHA-256 is the server's to compute from the chunks, and
   the client hashing it too cost 0.65 s of CPU per GiB for nothing the
   server may trust (it is cached once the server answers); a large file
   whose size no other large file has (no copy) is only opened and sampled
   here (chunked.sampled_chunks_held, on a thread of its own while the small
   files are hashed and the package is made), and cut in step 5, if the store
   holds part of it, while the small files' batches travel (0.6 s per GiB of
   cutting that overlaps them);
2. find the run's live package (producer + run_id) or create it;
   a finalized one is compared with the run (its manifest): identical -> done,
   nothing sent; different -> IngestConflict naming the paths, nothing changed.
   A match is remembered (hashcache.py): the same files against the same
   manifest digest are not compared again (answer.held_already answers such
   a run before this module is loaded);
3. list what the package already holds; keep only files it lacks or holds
   with other bytes;
4. ask which digests the store lacks (5,000 a request); attach the others by
   reference (1,000 a request, one transaction each);
5. upload each missing digest once: small files as tar batches (one request
   and one transaction per batch, built here while earlier batches travel),
   large ones as their chunks (chunked.py: cut here, only the chunks the store
   lacks are sent; one of which the store holds no sampled chunk goes whole
   with PUT, cut by the server) or, up to chunking.THRESHOLD, streamed with
   PUT, ``jobs`` at a time; every
   other body carries its SHA-256 so the server proves what it received, and
   every file's digest the server computed is compared with ours (a file that
   changed while we read it is an error, not a silent mix). A large file's
   chunks are checked against their ids, so one that changed after it was cut
   is refused; what the single cut read is what is recorded, as a hash would
   have been. A large file sent with no digest of ours is sent at its scanned
   size exactly and must keep its scanned stat until the server answers.
   Files that repeat an uploaded digest are attached afterwards;
6. finalize, then compare the package with the run as in step 2 (so the next
   unchanged run of it only asks for the package).
"""

from __future__ import annotations

import hashlib
import os
import ssl
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

from casstore import chunking
from casstore.tarstream import tar_of

from . import chunked
from .answer import IngestConflict, answer
from .client import PRODUCER, StoreClient
from .hashcache import HashCache
from .rundir import ChangedWhileReading, LocalFile, RunDir, RunDirError

SMALL_FILE = 1 << 20
TAR_BATCH_BYTES = 8 << 20
TAR_BATCH_FILES = 1000
MISSING_BATCH = 5000
ATTACH_BATCH = 1000
READ_BLOCK = 1 << 20
KEEP_BYTES = 16 << 20  # small files' bytes kept from hashing to uploading (read once, not twice)


class Progress:
    """Byte counters for the two long phases; a tqdm bar when asked for, silent otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def bar(self, description: str, total: int):
        if not self.enabled:
            return _NoBar()
        from tqdm import tqdm

        return tqdm(total=total, desc=description, unit="B", unit_scale=True, unit_divisor=1024,
                    file=sys.stderr, leave=False, dynamic_ncols=True)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


@contextmanager
def reading(f: LocalFile):
    """A file of the run that cannot be read is the run's error (exit 2, named), not a traceback."""
    try:
        yield
    except OSError as exc:
        raise RunDirError(f"cannot read {f.path}: {exc.strerror or exc}") from exc


def sha256_file(path: str, on_bytes: Callable[[int], None]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(READ_BLOCK):
            digest.update(chunk)
            on_bytes(len(chunk))
    return digest.hexdigest()


def batched(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class Ingestor:
    def __init__(self, client: StoreClient, run: RunDir, cache: HashCache, *, jobs: int = 4,
                 retention_class: str | None = None, progress: Progress | None = None,
                 found=None) -> None:
        self.client = client
        self.run = run
        self.cache = cache
        self.jobs = max(1, jobs)
        self.retention_class = retention_class
        self.progress = progress or Progress(False)
        self._found = found  # the run's live package asked already (client.find_package_soon), or None
        self.new_bytes = 0
        self._package_id = ""
        self._kept: dict[str, bytes] = {}  # path -> the very bytes hashed (so also the bytes sent)
        self._recipes: dict[str, list] = {}  # path -> the chunks of a large file, cut in step 1
        self._sampler = ThreadPoolExecutor(1, thread_name_prefix="sample")
        self._sampled: dict[str, Future] = {}  # path -> whether to cut it here, asked in step 1

    # 1 ------------------------------------------------------------------------
    def hash_all(self) -> dict[str, str]:
        files = self.run.files
        digests = self.cache.lookup(files)
        todo = [f for f in files if f.path not in digests]
        # A large file is cut when its upload starts, while the small files travel, unless
        # another large file has its size: only then can it be a copy (sent once, _same_cuts).
        sizes = Counter(f.size for f in todo if f.size > chunking.THRESHOLD)
        later = [f for f in todo if f.size > chunking.THRESHOLD and sizes[f.size] == 1]
        for f in later:  # opened now all the same: an unreadable file stops us before the package exists
            with reading(f):
                os.close(os.open(f.abspath, os.O_RDONLY))
            self._sampled[f.path] = self._sampler.submit(self._sampled_held, f)  # answered while we go on
        digests.update((f.path, None) for f in later)
        todo = [f for f in todo if f.path not in digests]
        with self.progress.bar("hashing", sum(f.size for f in todo)) as bar:
            def one(f: LocalFile) -> tuple[LocalFile, str | None]:
                with reading(f):
                    if f.size > chunking.THRESHOLD:  # its chunks; the server computes its digest
                        self._recipes[f.path] = chunked.recipe_of(f.abspath, bar.update)
                        return f, None
                    return f, sha256_file(f.abspath, bar.update)

            # Big files on the pool, one each; small ones here, meanwhile: hashlib keeps the GIL
            # for buffers under 2 KiB, so threads would only take turns on them.
            big = sorted((f for f in todo if f.size > SMALL_FILE), key=lambda f: -f.size)
            with ThreadPoolExecutor(self.jobs) as pool:
                running = [pool.submit(one, f) for f in big]
                hashed = self._hash_small([f for f in todo if f.size <= SMALL_FILE], bar.update)
                hashed += [job.result() for job in running]
        self.cache.store([(f, d) for f, d in hashed if d is not None])
        digests.update((f.path, d) for f, d in hashed)
        return digests

    def known(self, digests: dict, files: Iterable[LocalFile]) -> None:
        """Hash, here, the large files among ``files`` whose digest is not known yet (a finalized
        or half-sent package is compared path by path), ``jobs`` at a time."""
        todo = [f for f in files if digests.get(f.path, "") is None]
        if not todo:
            return
        with self.progress.bar("hashing", sum(f.size for f in todo)) as bar, ThreadPoolExecutor(self.jobs) as pool:
            def one(f: LocalFile) -> tuple[LocalFile, str]:
                with reading(f):
                    return f, sha256_file(f.abspath, bar.update)

            hashed = list(pool.map(one, todo))
        self.cache.store(hashed)
        digests.update((f.path, d) for f, d in hashed)

    def _hash_small(self, files: list[LocalFile], on_bytes: Callable[[int], None]) -> list[tuple[LocalFile, str]]:
        """Hash small files in one read each, keeping their bytes (within KEEP_BYTES) for the upload."""
        hashed, kept = [], 0
        for f in files:
            data = _read_small(f)
            if len(data) != f.size:  # it changed since the scan: hash it the streaming way
                with reading(f):  # it may be gone by now
                    hashed.append((f, sha256_file(f.abspath, on_bytes)))
                continue
            hashed.append((f, hashlib.sha256(data).hexdigest()))
            on_bytes(len(data))
            if kept + len(data) <= KEEP_BYTES:
                self._kept[f.path] = data
                kept += len(data)
        return hashed

    # 2 ------------------------------------------------------------------------
    def find_or_create(self, existing: dict | None) -> dict:
        """The run's live package: the one found (looked up while hashing), or a new one."""
        from .client import ApiError

        if existing is not None:
            return existing
        run = self.run.run
        body = {"producer": PRODUCER, "run_id": self.run.run_id, "target_profile": run.get("target_profile"),
                "assessment_profile": run.get("assessment_profile"), "metadata": self.run.metadata}
        wish = self.retention_class or (self.run.retention_wish or {}).get("retention_class")
        if wish:
            body["retention_class"] = wish
        try:
            return self.client.create_package(body)
        except ApiError as exc:
            if exc.status == 409 and exc.problem.get("package_id"):  # a concurrent ingest made it first
                return self.client.package(exc.problem["package_id"])
            raise

    def check_finalized(self, package: dict, digests: dict[str, str | None]) -> None:
        """The finalized package must hold exactly the run's files (IngestConflict otherwise);
        a match found before, for the same files and manifest digest, is not asked again."""
        self.known(digests, self.run.files)
        if self.cache.matched(package["id"], package["manifest_digest"], digests):
            return
        manifest = self.client.manifest(package["id"])
        stored = {f["path"]: f["sha256"] for f in manifest["files"]}
        differ = sorted(p for p in set(stored) | set(digests) if stored.get(p) != digests.get(p))
        if differ:
            shown = "; ".join(_describe(p, stored, digests) for p in differ[:20])
            more = f" (and {len(differ) - 20} more)" if len(differ) > 20 else ""
            raise IngestConflict(
                f"run {self.run.run_id!r} is already finalized as {package['id']} with other content: "
                f"{len(differ)} path(s) differ: {shown}{more}. A finalized package never changes; "
                f"give the new run its own run_id.")
        self.cache.store_match(package["id"], package["manifest_digest"], digests)

    # 3-5 ----------------------------------------------------------------------
    def missing(self, digests: dict[str, str]) -> set[str]:
        """Which of the run's digests the store lacks, MISSING_BATCH a request."""
        missing: set[str] = set()
        for batch in batched(sorted({d for d in digests.values() if d is not None}), MISSING_BATCH):
            missing |= self.client.missing(batch)
        return missing

    def send(self, package: dict, digests: dict[str, str], missing: set[str]) -> None:
        package_id = self._package_id
        held = self.client.files(package_id) if package["file_count"] else {}
        local = {f.path: f for f in self.run.files}
        extra = sorted(set(held) - set(local))
        if extra:
            raise IngestConflict(
                f"package {package_id} already holds {len(extra)} file(s) that are not in the run directory "
                f"(first: {extra[:5]}); restore them or give the run a new run_id")
        self.known(digests, [f for f in self.run.files if f.path in held])  # resumed: compare as well
        todo = [f for f in self.run.files if f.path not in held or held[f.path]["sha256"] != digests[f.path]]
        replace = {f.path for f in todo if f.path in held}
        first_of: dict[str, LocalFile] = {}
        for f in todo:
            if digests[f.path] in missing:
                first_of.setdefault(digests[f.path], f)
        cut, twins = self._same_cuts([f for f in todo if digests[f.path] is None])
        uploads = list(first_of.values()) + cut
        uploaded = {f.path for f in uploads} | {f.path for f, _ in twins}
        later = [f for f in todo if f.path not in uploaded]
        raced = self._attach([f for f in later if digests[f.path] not in missing], digests, replace)
        self._upload(uploads + raced, digests, replace)
        for f, first in twins:  # the same chunks: the same bytes, now known by their digest
            digests[f.path] = digests[first.path]
        self.cache.store([(f, digests[f.path]) for f, _ in twins])
        self._attach([f for f in later if digests[f.path] in missing] + [f for f, _ in twins], digests, replace,
                     strict=True)

    def _same_cuts(self, files: list[LocalFile]) -> tuple[list[LocalFile], list[tuple[LocalFile, LocalFile]]]:
        """Large files not hashed here, one per content (the same chunk ids in the same order are
        the same bytes): (those to upload, [(a copy, the file uploaded for it)])."""
        first: dict[tuple, LocalFile] = {}
        twins = []
        for f in files:
            cut = tuple(e.chunk_id for e in self._recipes.get(f.path, ())) or (f.path,)
            if cut in first:
                twins.append((f, first[cut]))
            else:
                first[cut] = f
        return list(first.values()), twins

    def _attach(self, files: list[LocalFile], digests: dict[str, str], replace: set[str],
                strict: bool = False) -> list[LocalFile]:
        """Attach by reference; return files whose blob vanished meanwhile (gc won the race)."""
        lost: list[LocalFile] = []
        by_path = {f.path: f for f in files}
        for flag in (False, True):
            group = [f for f in files if (f.path in replace) == flag]
            for batch in batched(group, ATTACH_BATCH):
                items = [{"path": f.path, "sha256": digests[f.path]} for f in batch]
                answer = self.client.attach(self._package_id, items, flag)
                gone = set(answer["missing"])
                lost += [by_path[i["path"]] for i in items if i["sha256"] in gone]
        if lost and strict:
            self._upload(lost, digests, replace)
            return []
        return lost

    def _upload(self, files: list[LocalFile], digests: dict[str, str], replace: set[str]) -> None:
        package_id = self._package_id
        if not files:
            return
        small = [f for f in files if f.size <= SMALL_FILE]
        # Large files go to the pool first, the largest first: one is cut (or sent) while the small
        # files' batches are built here and travel beside it (only tar bodies wait for a free slot).
        large = sorted((f for f in files if f.size > SMALL_FILE), key=lambda f: -f.size)
        batches = [b for flag in (False, True) for b in _tar_batches([f for f in small if (f.path in replace) == flag])]
        saved: list[int] = []  # bytes of large files not sent: chunks the store held
        with self.progress.bar("uploading", sum(f.size for f in files)) as bar:
            def send_tar(batch: list[LocalFile], body: bytes) -> None:
                answer = self.client.upload_tar(package_id, body, batch[0].path in replace)
                _same_digests(answer["added"], digests)
                bar.update(sum(f.size for f in batch))

            def send_file(f: LocalFile) -> None:
                # with X-Checksum-Sha256 when we know it: a file that changed is refused (422)
                recipe = self._recipes.pop(f.path, None)
                if f.size > chunking.THRESHOLD and (recipe is not None or self._cut_here(f)):
                    if recipe is None:  # cut now (step 1 cut only files that may be copies)
                        with reading(f):
                            recipe = chunked.recipe_of(f.abspath)
                    entry, sent = chunked.upload(self.client, package_id, f.path, f.abspath, digests[f.path],
                                                 f.path in replace, recipe=recipe)
                    saved.append(f.size - sent)
                else:  # a small file, or a large one new to the store: whole (the server cuts a large one)
                    with reading(f), open(f.abspath, "rb") as stream:
                        entry = self.client.upload_file(package_id, f.path, _Scanned(stream, f), f.size,
                                                        digests[f.path], None, f.path in replace)
                if digests[f.path] is None:  # the digest the server computed from the bytes it received
                    _unchanged_since_scan(f)  # no digest of ours to compare: its stat then
                    digests[f.path] = entry["sha256"]
                    self.cache.store([(f, entry["sha256"])])
                bar.update(f.size)

            with ThreadPoolExecutor(self.jobs) as pool:
                files_sent = [pool.submit(send_file, f) for f in large]  # the largest first
                tars: deque = deque()
                for batch in batches:
                    while len(tars) >= self.jobs:  # at most ``jobs`` tar bodies in memory
                        tars.popleft().result()
                    tars.append(pool.submit(send_tar, batch, _tar_of(batch, self._kept)))  # built here meanwhile
                for job in [*tars, *files_sent]:
                    job.result()
        self._kept.clear()
        self.new_bytes += sum(f.size for f in files) - sum(saved)

    def _cut_here(self, f: LocalFile) -> bool:
        """Whether to cut a large file here: the answer sampled in step 1, or asked now."""
        sampled = self._sampled.pop(f.path, None)
        return sampled.result() if sampled is not None else self._sampled_held(f)

    def _sampled_held(self, f: LocalFile) -> bool:
        """chunked.sampled_chunks_held (always yes under SAMPLE_FROM)."""
        with reading(f):
            return chunked.sampled_chunks_held(self.client, f.abspath, f.size)

    # all ----------------------------------------------------------------------
    def ingest(self) -> dict:
        try:
            return self._ingest()
        finally:
            self._sampler.shutdown(cancel_futures=True)

    def _ingest(self) -> dict:
        with ThreadPoolExecutor(1) as pool:
            found = self._found or self.client.find_package_soon(PRODUCER, self.run.run_id)  # while we hash
            digests = self.hash_all()
            existing = found.result()
            if existing is None or existing["status"] != "finalized":  # asked while the package is made
                missing = pool.submit(self.missing, digests)
            package = self.find_or_create(existing)  # made only once every file was read
        self._package_id = package["id"]
        if package["status"] == "finalized":
            for job in self._sampled.values():  # nothing will be uploaded: no sampling to wait for
                job.cancel()
            self.check_finalized(package, digests)
        else:
            self.send(package, digests, missing.result())
            package = self.client.finalize(package["id"])
            self.check_finalized(package, digests)  # it holds what we sent, and the next run of this need not ask
        return answer(package, self.run, self.client.base_url, self.new_bytes)


def _describe(path: str, stored: dict, local: dict) -> str:
    if path not in stored:
        return f"{path} (not in the package)"
    if path not in local:
        return f"{path} (not in the run directory)"
    return f"{path} (sha256 {stored[path][:12]}... stored, {local[path][:12]}... here)"


def _tar_batches(files: list[LocalFile]) -> Iterable[list[LocalFile]]:
    """As few batches as the limits allow, of even size: 1,500 files are two of 750, which
    the server's workers take at the same time, not 1,000 and then a short 500."""
    count = max(-(-len(files) // TAR_BATCH_FILES), -(-sum(f.size for f in files) // TAR_BATCH_BYTES), 1)
    most_files = -(-len(files) // count)
    batch, size = [], 0
    for f in files:
        if batch and (len(batch) >= most_files or size + f.size > TAR_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(f)
        size += f.size
    if batch:
        yield batch


def _tar_of(files: list[LocalFile], kept: dict[str, bytes]) -> bytes:
    """An uncompressed tar of small files; the body's SHA-256 goes in Content-Digest, and
    each file's digest comes back in the answer to be compared."""
    members = []
    for f in files:
        data = kept.pop(f.path, None)
        members.append((f.path, _read_small(f) if data is None else data))
    return tar_of(members)


def _read_small(f: LocalFile) -> bytes:
    """A small file's bytes in one read of its size + 1 (so growth shows), via os.read: a
    buffered read of up to SMALL_FILE would allocate 1 MiB per file, three times the work."""
    with reading(f):
        fd = os.open(f.abspath, os.O_RDONLY)
        try:
            return os.read(fd, f.size + 1)
        finally:
            os.close(fd)


class _Scanned:
    """A file's bytes as announced: exactly its scanned size, sent by the kernel over plain HTTP
    (sendfile: no copy through this process, a fifth of the client's CPU for a 1 GiB capture)
    and in 1 MiB reads over TLS (socket.sendfile would fall back to 8 KiB ones there). Shorter
    (it shrank since the scan) is ChangedWhileReading, raised as soon as it shows, not a body
    the server waits for until its timeout; bytes past that size are not sent (the stat check
    sees the growth)."""

    def __init__(self, stream, f: LocalFile) -> None:
        self._stream, self._file = stream, f

    def send_to(self, sock) -> None:
        """Send the bytes on ``sock`` (an OSError is the connection's, as for any body)."""
        size = self._file.size
        if isinstance(sock, ssl.SSLSocket):
            sent = 0
            while sent < size and (data := self._read(min(READ_BLOCK, size - sent))):
                sock.sendall(data)
                sent += len(data)
        else:
            sent = sock.sendfile(self._stream, 0, size) if size else 0
        if sent < size:
            raise ChangedWhileReading(f"{self._file.path} became shorter while being sent")

    def _read(self, n: int) -> bytes:
        """A read of the file: its error is the run's (exit 2), not the connection's."""
        with reading(self._file):
            return self._stream.read(n)


def _unchanged_since_scan(f: LocalFile) -> None:
    """A large file sent without a digest of ours (cut, or whole) must still have the size,
    mtime and inode it had when the run was scanned: else what the server read may mix two
    versions of it."""
    with reading(f):
        st = os.stat(f.abspath, follow_symlinks=False)
    if (st.st_size, st.st_mtime_ns, st.st_ino) != (f.size, f.mtime_ns, f.inode):
        raise ChangedWhileReading(f"{f.path} changed while being ingested")


def _same_digests(added: list[dict], digests: dict[str, str]) -> None:
    """The server's digest of each file it stored must be ours (else the file changed meanwhile)."""
    changed = sorted(e["path"] for e in added if e["sha256"] != digests[e["path"]])
    if changed:
        raise ChangedWhileReading(f"{len(changed)} file(s) changed while being ingested (first: {changed[:5]})")

