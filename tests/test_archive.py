"""GET /v1/packages/{id}/archive through a real HTTP server: tar and zip parsed by the standard
library and compared byte for byte with what was uploaded, hostile names included."""

from __future__ import annotations

import io
import os
import tarfile
import time
import zipfile

import pytest
from sqlalchemy import text

from tests.helpers import assert_problem, make_tar, sha

HOSTILE = {
    "run.json": b'{"run_id": "archive-1"}',
    "raw/logs/a b.log": b"alpha\n" * 100,
    "raw/logs/#2?.log": b"beta\n",
    "raw/logs/already%20encoded.log": b"gamma\n",
    "raw/logs/caf\u00e9 \u65e5\u672c/\u2603.txt": "snow \u2603\n".encode(),
    "reports/score card.md": b"# ok\n",
    "deep/" + "/".join(["d%02d" % i for i in range(30)]) + "/" + "n" * 120 + ".xml": b"<a/>",
    "raw/logs/dup.log": b"alpha\n" * 100,  # the same bytes as 'a b.log'
    "empty.txt": b"",
    "%": b"percent",
    "sp ace/ ": b"trailing space",
}
BIG = os.urandom(3 * (1 << 20) + 123)  # a loose object, read in several chunks


def finalized_package(server, files: dict[str, bytes], big: dict[str, bytes] | None = None) -> str:
    pkg = server.create(run_id=f"archive-{time.monotonic_ns()}")["id"]
    r = server.http.post(f"{server.url}/v1/packages/{pkg}/tar", data=make_tar(files),
                         headers={"Content-Type": "application/x-tar"})
    assert r.status_code == 201, r.text
    for path, data in (big or {}).items():
        assert server.put(pkg, path, data).status_code == 201
    r = server.http.post(f"{server.url}/v1/packages/{pkg}/finalize")
    assert r.status_code == 200, r.text
    return pkg


@pytest.fixture
def package(server):
    return finalized_package(server, HOSTILE, {"raw/captures/big dump.bin": BIG})


def expected_members(server, pkg) -> list[tuple[str, bytes]]:
    manifest = server.http.get(f"{server.url}/v1/packages/{pkg}/manifest").content
    files = {**HOSTILE, "raw/captures/big dump.bin": BIG}
    import json

    order = [f["path"] for f in json.loads(manifest)["files"]]
    assert sorted(order) == sorted(files)
    return [(f"{pkg}.manifest.json", manifest)] + [(f"{pkg}/{p}", files[p]) for p in order]


def test_tar_holds_manifest_then_every_file_in_manifest_order(server, package):
    r = server.http.get(f"{server.url}/v1/packages/{package}/archive")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/x-tar"
    assert int(r.headers["Content-Length"]) == len(r.content)
    assert r.headers["Accept-Ranges"] == "bytes"
    assert r.headers["Content-Disposition"] == f'attachment; filename="{package}.tar"'
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:") as tar:
        members = tar.getmembers()
        got = [(m.name, tar.extractfile(m).read()) for m in members]
    assert got == expected_members(server, package)
    assert all(m.isreg() and m.mode == 0o644 for m in members)
    manifest_digest = server.http.get(f"{server.url}/v1/packages/{package}").json()["manifest_digest"]
    assert manifest_digest == "sha256:" + sha(got[0][1])
    assert r.headers["X-Manifest-Digest"] == manifest_digest


def test_tar_is_the_same_bytes_every_time_with_an_etag(server, package):
    url = f"{server.url}/v1/packages/{package}/archive"
    first, second = server.http.get(url), server.http.get(url)
    assert first.content == second.content
    assert first.headers["ETag"] == second.headers["ETag"]
    head = server.http.head(url)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(first.content))
    assert head.headers["ETag"] == first.headers["ETag"]
    cached = server.http.get(url, headers={"If-None-Match": first.headers["ETag"]})
    assert cached.status_code == 304 and cached.content == b""


def test_tar_ranges_are_slices_of_the_whole(server, package):
    url = f"{server.url}/v1/packages/{package}/archive"
    whole = server.http.get(url).content
    size = len(whole)
    big_at = whole.index(BIG[:4096])
    cases = [(0, 0), (0, 511), (1, 1500), (511, 513), (big_at - 10, big_at + 5000), (big_at + len(BIG) - 3, size - 1),
             (size - 1024, size - 1), (1000, size - 1), (size - 1, size - 1)]
    for a, b in cases:
        r = server.http.get(url, headers={"Range": f"bytes={a}-{b}"})
        assert r.status_code == 206, (a, b)
        assert r.headers["Content-Range"] == f"bytes {a}-{b}/{size}"
        assert int(r.headers["Content-Length"]) == b - a + 1
        assert r.content == whole[a:b + 1], (a, b)
    r = server.http.get(url, headers={"Range": "bytes=-700"})
    assert r.status_code == 206 and r.content == whole[-700:]
    r = server.http.get(url, headers={"Range": f"bytes={size - 5}-"})
    assert r.status_code == 206 and r.content == whole[-5:]
    body = assert_problem(server.http.get(url, headers={"Range": f"bytes={size}-"}), 416)
    assert "archive" in body["detail"]
    # If-Range naming other bytes: the whole archive, 200
    r = server.http.get(url, headers={"Range": "bytes=0-9", "If-Range": '"something-else"'})
    assert r.status_code == 200 and r.content == whole
    etag = server.http.head(url).headers["ETag"]
    r = server.http.get(url, headers={"Range": "bytes=0-9", "If-Range": etag})
    assert r.status_code == 206 and r.content == whole[:10]


def test_zip_holds_the_same_members_stored_and_is_deterministic(server, package):
    url = f"{server.url}/v1/packages/{package}/archive?format=zip"
    first = server.http.get(url)
    assert first.status_code == 200
    assert first.headers["Content-Type"] == "application/zip"
    assert int(first.headers["Content-Length"]) == len(first.content)
    assert first.headers["Accept-Ranges"] == "none"
    with zipfile.ZipFile(io.BytesIO(first.content)) as z:
        assert z.testzip() is None  # every CRC checks
        infos = z.infolist()
        got = [(i.filename, z.read(i)) for i in infos]
    assert got == expected_members(server, package)
    assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}
    time.sleep(2.1)  # zip times have a 2-second resolution: a clock-stamped entry would change now
    second = server.http.get(url)
    assert second.content == first.content and second.headers["ETag"] == first.headers["ETag"]
    assert second.headers["ETag"] != server.http.head(url.split("?")[0]).headers["ETag"]
    ranged = server.http.get(url, headers={"Range": "bytes=10-20"})  # no ranges on a zip: the whole of it
    assert ranged.status_code == 200 and ranged.content == first.content


def test_zip64_when_the_package_has_more_than_65535_files(server):
    files = {f"f/{i:05d}": b"" for i in range(65_600)}
    pkg = server.create()["id"]
    for chunk in range(0, len(files), 10_000):
        part = dict(list(files.items())[chunk:chunk + 10_000])
        r = server.http.post(f"{server.url}/v1/packages/{pkg}/tar", data=make_tar(part),
                             headers={"Content-Type": "application/x-tar"})
        assert r.status_code == 201, r.text
    assert server.http.post(f"{server.url}/v1/packages/{pkg}/finalize").status_code == 200
    r = server.http.get(f"{server.url}/v1/packages/{pkg}/archive?format=zip")
    assert int(r.headers["Content-Length"]) == len(r.content)
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        names = z.namelist()
    assert len(names) == 65_601 and names[-1] == f"{pkg}/f/65599"
    assert b"PK\x06\x06" in r.content[-200:]  # the zip64 end of central directory record


def test_archive_of_a_package_that_is_not_finalized_or_deleted(server, store):
    pkg = server.create()["id"]
    server.put(pkg, "a", b"a")
    body = assert_problem(server.http.get(f"{server.url}/v1/packages/{pkg}/archive"), 404)
    assert "until finalized" in body["detail"]
    assert_problem(server.http.get(f"{server.url}/v1/packages/pkg_nope/archive"), 404)
    assert_problem(server.http.get(f"{server.url}/v1/packages/{pkg}/archive?format=rar"), 422)
    with store.db.engine.begin() as conn:  # a class that expires at once, so the package may be deleted
        conn.execute(text("UPDATE retention_class SET days = 0 WHERE name = 'transient'"))
    gone = server.create(retention_class="transient")["id"]
    server.put(gone, "a", b"gone")
    server.http.post(f"{server.url}/v1/packages/{gone}/finalize")
    assert server.http.delete(f"{server.url}/v1/packages/{gone}", params={"reason": "t"}).status_code == 200
    assert_problem(server.http.get(f"{server.url}/v1/packages/{gone}/archive"), 410)


def test_tar_and_zip_from_an_s3_backend(settings, tmp_path):
    """The same archive, byte for byte, when the blobs (loose and packed) are on S3 (range reads)."""
    from casstore.store import Store
    from tests.helpers import LiveServer, make_storage

    store = Store(settings, storage=make_storage("s3", tmp_path))
    live = LiveServer(store)
    try:
        pkg = finalized_package(live, HOSTILE, {"raw/captures/big dump.bin": BIG})
        whole = live.http.get(f"{live.url}/v1/packages/{pkg}/archive")
        with tarfile.open(fileobj=io.BytesIO(whole.content), mode="r:") as tar:
            got = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
        assert got == expected_members(live, pkg)
        part = live.http.get(f"{live.url}/v1/packages/{pkg}/archive", headers={"Range": "bytes=700-90000"})
        assert part.status_code == 206 and part.content == whole.content[700:90001]
        zipped = live.http.get(f"{live.url}/v1/packages/{pkg}/archive?format=zip").content
        with zipfile.ZipFile(io.BytesIO(zipped)) as z:
            assert [(i.filename, z.read(i)) for i in z.infolist()] == got
    finally:
        live.close()
        store.close()


@pytest.mark.parametrize("name", ["a", "x" * 100, "x" * 101, "caf\u00e9", "d/" * 49 + "n", "sp ace/#?%20",
                                  "\u2603" * 40])
@pytest.mark.parametrize("size", [0, 1, 8 ** 11 - 1, 8 ** 11])
def test_header_size_is_the_length_of_the_header(name, size):
    from casstore.services.archive import header_size, tar_header

    assert header_size(name, size, 1_790_000_000) == len(tar_header(name, size, 1_790_000_000))


def test_manifest_files_are_read_one_at_a_time_as_json_would():
    import json

    from casstore.services.archive import manifest_files
    from casstore.services.manifest import canonical_json

    files = [{"path": p, "sha256": "0" * 64, "blake3": "1" * 64, "size": i, "media_type": "text/plain"}
             for i, p in enumerate(["a", "b \u2603", 'q"uote', "z,]}"])]
    canonical = canonical_json({"schema": "s", "package": {"metadata": {"files": [1]}}, "file_count": len(files),
                                "total_bytes": 6, "files": files})
    assert list(manifest_files(canonical)) == files
    assert list(manifest_files(canonical_json({"file_count": 0, "files": []}))) == []
    loose = json.dumps({"files": files, "file_count": 4}).encode()  # not canonical: parsed whole
    assert list(manifest_files(loose)) == files


@pytest.mark.parametrize("name", ["a", "x" * 100, "d/" * 49 + "n", "sp ace/#?%20", "-"])
@pytest.mark.parametrize("size", [0, 1, 123456789, 8 ** 11 - 1])
def test_plain_headers_are_the_bytes_tarfile_writes(name, size):
    from casstore.services.archive import _ustar

    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 1_790_000_000, 0o644
    info.uid, info.gid, info.uname, info.gname = 0, 0, "", ""
    assert _ustar(name, size, 1_790_000_000) == info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


def test_archive_of_a_package_holding_a_chunked_file(server, store):
    """A large file stored as content-defined chunks is read through its recipe, byte for byte."""
    capture = b"".join(sha(i.to_bytes(4, "big")).encode() * 512 for i in range(700)) + os.urandom(1 << 20)
    pkg = finalized_package(server, {"run.json": b"{}", "z/after.log": b"after\n"}, {"raw/capture.bin": capture})
    with store.db.engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM blob WHERE chunker IS NOT NULL")).scalar() == 1
    url = f"{server.url}/v1/packages/{pkg}/archive"
    whole = server.http.get(url).content
    with tarfile.open(fileobj=io.BytesIO(whole), mode="r:") as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert got[f"{pkg}/raw/capture.bin"] == capture and got[f"{pkg}/z/after.log"] == b"after\n"
    at = whole.index(capture[:4096])
    part = server.http.get(url, headers={"Range": f"bytes={at + 5_000_000}-{at + len(capture) + 700}"})
    assert part.status_code == 206 and part.content == whole[at + 5_000_000:at + len(capture) + 701]
    with zipfile.ZipFile(io.BytesIO(server.http.get(url + "?format=zip").content)) as z:
        assert z.read(f"{pkg}/raw/capture.bin") == capture
