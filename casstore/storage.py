"""The storage adapter: a small byte-store interface over obstore.

This is the only module that imports obstore. It knows keys and bytes, never
digests or packages (those live in cas.py and the services), and it turns
every obstore or OS error into casstore's own at this boundary:

* a missing object           -> ObjectMissing (obstore raises the builtin FileNotFoundError)
* anything else that failed  -> StorageError
* "already exists" on a no-overwrite write is not an error here: it returns False.

Backends are chosen by URL: ``file:///abs/path`` (the embedded default),
``memory:///`` (tests), ``s3://bucket/prefix`` (S3-compatible, Ceph RGW).

``probe()`` asks the backend, at start-up, whether it refuses to overwrite on
a conditional create and on a no-overwrite copy, instead of assuming it (one
field report saw Ceph RGW ignore If-None-Match).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol
from urllib.parse import unquote, urlparse

import obstore
from obstore.exceptions import AlreadyExistsError, BaseError, NotSupportedError
from obstore.store import LocalStore, MemoryStore

from .config import S3Options
from .errors import ObjectMissing, StorageError

READ_CHUNK = 1 << 20
MIN_PART = 5 << 20  # S3: every part but the last is 5 MiB to 5 GiB
MAX_PARTS = 10_000


@dataclass(frozen=True)
class ObjectInfo:
    """What the backend says about one object."""

    key: str
    size: int
    last_modified: datetime


@dataclass(frozen=True)
class StrayWrite:
    """A write that never completed: an incomplete S3 multipart upload, or obstore's
    temporary file of a local put that was killed. Invisible to ``list``."""

    key: str
    started: datetime
    handle: str  # the multipart upload id, or the temporary file's path under the root


class Storage(Protocol):
    """The operations the store needs from a backend; nothing more."""

    backend: str

    def put_stream(self, key: str, chunks: Iterable[bytes], size_hint: int | None = None) -> None: ...

    def put_if_absent(self, key: str, data: bytes) -> bool: ...

    def copy_if_absent(self, src: str, dst: str) -> bool: ...

    def get(self, key: str, start: int | None = None, end: int | None = None) -> Iterator[bytes]: ...

    def head(self, key: str) -> ObjectInfo | None: ...

    def delete(self, key: str) -> None: ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    def stray_writes(self) -> list[StrayWrite]: ...

    def abort_stray(self, stray: StrayWrite) -> None: ...


def part_size_for(size_hint: int | None, configured: int) -> int:
    """The multipart part size for an object of about ``size_hint`` bytes: at least the
    configured size, and large enough that the object needs fewer than 10,000 parts."""
    if not size_hint:
        return configured
    return max(configured, -(-size_hint // (MAX_PARTS - 1)))


@contextmanager
def _mapped(key: str):
    """Translate obstore/OS errors into casstore's at the boundary."""
    try:
        yield
    except FileNotFoundError as exc:
        raise ObjectMissing(f"object not found: {key}") from exc
    except (BaseError, OSError) as exc:
        raise StorageError(f"storage backend failed on {key}: {type(exc).__name__}: {exc}") from exc


def _info(meta: dict) -> ObjectInfo:
    return ObjectInfo(key=meta["path"], size=int(meta["size"]), last_modified=meta["last_modified"])


class ObjectStorage:
    """A Storage over any obstore store (local, memory, S3)."""

    def __init__(self, store, backend: str, *, part_size: int = 8 << 20, concurrency: int = 4) -> None:
        self._store = store
        self.backend = backend
        self._part_size = part_size
        self._concurrency = concurrency

    def put_stream(self, key: str, chunks: Iterable[bytes], size_hint: int | None = None) -> None:
        """Write an object from an iterable of chunks, multipart on S3; atomic at ``key``.

        With a size hint the part size grows so that the object fits in S3's
        10,000 parts (8 MiB parts would stop at 78 GiB).
        """
        part = part_size_for(size_hint, self._part_size)
        with _mapped(key):
            obstore.put(self._store, key, iter(chunks), chunk_size=part, max_concurrency=self._concurrency)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write a small buffer at ``key`` unless an object is there; True if written.

        Only for bounded buffers: obstore's create mode is never multipart.
        """
        try:
            with _mapped(key):
                obstore.put(self._store, key, data, mode="create")
        except StorageError as exc:
            if isinstance(exc.__cause__, AlreadyExistsError):
                return False
            raise
        return True

    def copy_if_absent(self, src: str, dst: str) -> bool:
        """Copy ``src`` to ``dst`` unless ``dst`` exists; True if copied (a hard link locally).

        A backend without copy-if-not-exists gets a look, then a plain copy:
        keys are content hashes, so the worst a race can do is write the
        same bytes twice, atomically.
        """
        try:
            with _mapped(src):
                obstore.copy(self._store, src, dst, overwrite=False)
        except StorageError as exc:
            if isinstance(exc.__cause__, AlreadyExistsError):
                return False
            if not isinstance(exc.__cause__, NotSupportedError):
                raise
            if self.head(dst) is not None:
                return False
            with _mapped(src):
                obstore.copy(self._store, src, dst, overwrite=True)
        return True

    def get(self, key: str, start: int | None = None, end: int | None = None) -> Iterator[bytes]:
        """Stream an object, or the byte range [start, end), in chunks of about 1 MiB."""
        options = {}
        if start is not None or end is not None:
            options["range"] = (start or 0, end) if end is not None else {"offset": start or 0}
        with _mapped(key):
            result = obstore.get(self._store, key, options=options or None)
        return self._chunks(key, result)

    @staticmethod
    def _chunks(key: str, result) -> Iterator[bytes]:
        with _mapped(key):
            for chunk in result.stream(min_chunk_size=READ_CHUNK):
                view = memoryview(chunk)
                for i in range(0, len(view), 4 * READ_CHUNK):
                    yield bytes(view[i:i + 4 * READ_CHUNK])

    def head(self, key: str) -> ObjectInfo | None:
        """Size and age of an object, or None if it is not there."""
        try:
            with _mapped(key):
                return _info(obstore.head(self._store, key))
        except ObjectMissing:
            return None

    def delete(self, key: str) -> None:
        """Delete an object; deleting a missing object is not an error."""
        try:
            with _mapped(key):
                obstore.delete(self._store, key)
        except ObjectMissing:
            pass

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` (a folder ending in '/')."""
        with _mapped(prefix):
            for batch in obstore.list(self._store, prefix=prefix.rstrip("/") or None, chunk_size=1000):
                for meta in batch:
                    yield _info(meta)

    def stray_writes(self) -> list[StrayWrite]:
        """Writes that never completed (none on the memory backend)."""
        return []

    def abort_stray(self, stray: StrayWrite) -> None:
        """Remove what a write that never completed left behind."""


    def probe(self) -> dict:
        """What this backend really does with conditional writes (answers are True/False/error text)."""
        from ulid import ULID

        base = f"health/probe-{ULID()}"
        target, other = f"{base}/a", f"{base}/b"
        attempts = {"conditional_create": lambda: self.put_if_absent(target, b"second"),
                    "copy_if_not_exists": lambda: self.copy_if_absent(other, target)}
        result = {}
        try:
            self.put_stream(other, [b"other"])
            for name, attempt in attempts.items():
                self.put_stream(target, [b"first"])
                try:
                    wrote = attempt()
                    result[name] = (not wrote) and b"".join(self.get(target)) == b"first"
                except StorageError as exc:
                    result[name] = f"unsupported: {exc.detail[:200]}"
        finally:
            for key in (target, other):
                self.delete(key)
        return result


class LocalStorage(ObjectStorage):
    """The embedded default: a folder on the local filesystem."""

    def __init__(self, root: str, **kwargs) -> None:
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)
        super().__init__(LocalStore(self.root, mkdir=True), "file", **kwargs)

    def head(self, key: str) -> ObjectInfo | None:
        """A stat(2) of the object's file: the same answer as obstore's head, 40x faster
        (2 us against 90 us measured here), and the write path asks it once per new blob."""
        try:
            st = os.stat(os.path.join(self.root, key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StorageError(f"storage backend failed on {key}: {exc}") from exc
        if not stat.S_ISREG(st.st_mode):
            return None
        return ObjectInfo(key=key, size=st.st_size, last_modified=datetime.fromtimestamp(st.st_mtime, timezone.utc))

    def get(self, key: str, start: int | None = None, end: int | None = None) -> Iterator[bytes]:
        """The object, or [start, end), by pread(2) in 4 MiB pieces: obstore's local reads
        streamed 100 MB in 0.55 s (a range) and 1.6 s (whole) where pread takes 0.06 s,
        and a chunked file's read or assemble is mostly such reads."""
        try:
            fd = os.open(os.path.join(self.root, key), os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise ObjectMissing(f"object not found: {key}") from exc
        except OSError as exc:
            raise StorageError(f"storage backend failed on {key}: {exc}") from exc
        return self._pread(fd, key, start or 0, end)

    @staticmethod
    def _pread(fd: int, key: str, pos: int, end: int | None) -> Iterator[bytes]:
        try:
            while end is None or pos < end:
                data = os.pread(fd, 4 * READ_CHUNK if end is None else min(4 * READ_CHUNK, end - pos), pos)
                if not data:
                    return
                pos += len(data)
                yield data
        except OSError as exc:
            raise StorageError(f"storage backend failed on {key}: {exc}") from exc
        finally:
            os.close(fd)

    def stray_writes(self) -> list[StrayWrite]:
        """obstore's temporary files (``<key>#<n>``) of puts that were killed before their rename."""
        found = []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if "#" in name:
                    path = os.path.join(dirpath, name)
                    rel = os.path.relpath(path, self.root)
                    started = datetime.fromtimestamp(os.stat(path).st_mtime, timezone.utc)
                    found.append(StrayWrite(rel.split("#", 1)[0], started, rel))
        return found

    def abort_stray(self, stray: StrayWrite) -> None:
        try:
            os.remove(os.path.join(self.root, stray.handle))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"could not remove {stray.handle}: {exc}") from exc

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        # obstore's LocalStore raises if the prefix folder does not exist yet.
        if not os.path.isdir(os.path.join(self.root, prefix)):
            return iter(())
        return super().list(prefix)


def _s3_store(bucket: str, prefix: str, options: S3Options):
    from datetime import timedelta

    from obstore.store import S3Store

    config = {"virtual_hosted_style_request": not options.path_style,
              "conditional_put": "etag", "copy_if_not_exists": "multipart"}
    for key, value in (("endpoint", options.endpoint), ("region", options.region),
                       ("access_key_id", options.access_key_id), ("secret_access_key", options.secret_access_key)):
        if value:
            config[key] = value
    client = {"timeout": f"{int(options.timeout_s)}s", "connect_timeout": "10s"}
    if options.allow_http is not None:
        client["allow_http"] = options.allow_http
    retry = {"max_retries": options.retries, "retry_timeout": timedelta(seconds=max(options.timeout_s * 3, 30))}
    return S3Store(bucket, prefix=prefix or None, client_options=client, retry_config=retry, **config)


class S3Storage(ObjectStorage):
    """An S3-compatible bucket (AWS S3, Ceph RGW, SeaweedFS), multipart for large objects."""

    def __init__(self, bucket: str, prefix: str, options: S3Options) -> None:
        if options.part_size < MIN_PART:
            raise StorageError(f"S3 multipart parts are at least 5 MiB, not {options.part_size}")
        super().__init__(_s3_store(bucket, prefix, options), "s3", part_size=options.part_size,
                         concurrency=options.concurrency)
        self.bucket, self.prefix, self._options, self._admin = bucket, prefix, options, None

    # obstore has no call to list or abort multipart uploads; botocore (the AWS SDK's core) does.
    def _client(self):
        if self._admin is None:
            import botocore.config
            import botocore.session

            o = self._options
            self._admin = botocore.session.get_session().create_client(
                "s3", endpoint_url=o.endpoint or os.environ.get("AWS_ENDPOINT_URL"),
                region_name=o.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                or "us-east-1",
                aws_access_key_id=o.access_key_id, aws_secret_access_key=o.secret_access_key,
                config=botocore.config.Config(s3={"addressing_style": "path" if o.path_style else "virtual"},
                                              retries={"max_attempts": o.retries}))
        return self._admin

    @contextmanager
    def _boto(self, what: str):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"storage backend failed to {what}: {exc}") from exc

    def stray_writes(self) -> list[StrayWrite]:
        """Incomplete multipart uploads under this store's prefix (a killed upload leaves one)."""
        prefix = f"{self.prefix}/" if self.prefix else ""
        found = []
        with self._boto("list multipart uploads"):
            pages = self._client().get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                for upload in page.get("Uploads", []):
                    found.append(StrayWrite(upload["Key"][len(prefix):], upload["Initiated"], upload["UploadId"]))
        return found

    def abort_stray(self, stray: StrayWrite) -> None:
        prefix = f"{self.prefix}/" if self.prefix else ""
        with self._boto("abort a multipart upload"):
            self._client().abort_multipart_upload(Bucket=self.bucket, Key=prefix + stray.key, UploadId=stray.handle)


def open_storage(url: str, s3: S3Options | None = None, **kwargs) -> ObjectStorage:
    """Open the backend an ``ARTIFACT_STORE_STORAGE_URL`` names."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalStorage(unquote(parsed.path), **kwargs)
    if parsed.scheme == "memory":
        return ObjectStorage(MemoryStore(), "memory", **kwargs)
    if parsed.scheme in ("s3", "s3a"):
        if not parsed.netloc:
            raise StorageError("an s3:// storage URL names a bucket: s3://bucket/prefix")
        return S3Storage(parsed.netloc, unquote(parsed.path).strip("/"), s3 or S3Options())
    raise StorageError(f"unsupported storage URL scheme: {parsed.scheme!r}")
