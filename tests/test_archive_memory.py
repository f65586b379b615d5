"""An archive request's memory is bounded per file of the package: its layout is compact.

The layout (names, sizes, where each file's bytes are, tar offsets) is held for the
whole request, so it must stay a few hundred bytes a file: a 100,000-file package
once took a worker from 66 to 173 MiB as one object per member plus every location
row in a dict. Measured with tracemalloc on a real store (SQLite or PostgreSQL, files
on disk), the layout of many small files, each with its own bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tracemalloc

import pytest

from tests.helpers import make_tar

FILES = 30_000
# Measured: 11.3 MB for the tar's layout of 30,000 files (~90 bytes a file: five integers
# and the path, + ~8 MiB of read buffers); one object per member and a dict of every
# location took 29.6 MB.
PER_FILE = 150  # bytes of layout peak per file
FIXED = 10 << 20  # what does not grow with the file count: a chunk of the manifest being read


def many_files_package(store) -> tuple[str, dict[str, bytes]]:
    files = {f"raw/logs/{i // 1000:03d}/event-{i:06d}-of-a-long-run.log": b"%d\n" % i for i in range(FILES)}
    pkg = store.packages.create(producer="memory", actor="test", run_id="many-files").id
    paths = list(files)
    for at in range(0, FILES, 10_000):  # a batch holds at most 10,000 files
        batch = {p: files[p] for p in paths[at:at + 10_000]}
        store.files.put_tar(pkg, io.BytesIO(make_tar(batch)), actor="test")
    store.packages.finalize(pkg, actor="test")
    return pkg, files


def peak_of(build) -> tuple[object, int]:
    tracemalloc.start()
    try:
        result = build()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_layout_memory_is_a_few_hundred_bytes_a_file(store):
    pkg, files = many_files_package(store)
    tar, tar_peak = peak_of(lambda: store.archives.tar(pkg))
    zip_, zip_peak = peak_of(lambda: store.archives.zip(pkg))
    budget = FILES * PER_FILE + FIXED
    assert tar_peak < budget, f"tar layout peak {tar_peak:,} bytes for {FILES:,} files"
    assert zip_peak < budget, f"zip layout peak {zip_peak:,} bytes for {FILES:,} files"
    # the compact layout still serves what it describes: a range in the middle, then the whole tar
    middle = tar.size // 2
    part = b"".join(tar.ranged((middle, middle + 4096)).chunks)
    whole = b"".join(store.archives.tar(pkg).chunks)
    assert len(whole) == tar.size and part == whole[middle:middle + 4096]
    with tarfile.open(fileobj=io.BytesIO(whole)) as archive:
        names = archive.getnames()
        assert names[1:] == [f"{pkg}/{p}" for p in sorted(files)]
        last = sorted(files)[-1]
        assert archive.extractfile(f"{pkg}/{last}").read() == files[last]
    assert len(b"".join(zip_.chunks)) == zip_.size
    assert hashlib.sha256(b"".join(store.archives.tar(pkg).chunks)).digest() == hashlib.sha256(whole).digest()


def test_manifest_records_are_the_same_whatever_the_chunks_it_arrives_in():
    from casstore.services.archive import manifest_files
    from casstore.services.manifest import canonical_json

    files = [{"path": p, "sha256": "0" * 64, "size": i, "media_type": "text/plain"}
             for i, p in enumerate(["a", "caf\u00e9 \u65e5\u672c/\u2603", 'q"uote', "z,]}", "{\"x\":1}"])]
    manifest = canonical_json({"file_count": len(files), "files": files, "package": {"id": "p"}})
    for size in (1, 2, 3, 7, 64, len(manifest)):
        chunks = [manifest[at:at + size] for at in range(0, len(manifest), size)]
        assert list(manifest_files(iter(chunks))) == files, size
    truncated = manifest[:manifest.index(b'"q')]  # a record never completed is an error, not the end
    with pytest.raises(json.JSONDecodeError):
        list(manifest_files([truncated]))
