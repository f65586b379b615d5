"""One conformance suite for every storage backend (as distribution's driver test suite):
the local folder, memory, and the real S3 servers the test command starts (SeaweedFS as
"s3", Ceph RGW 16 as "rgw").

Each test ends by checking that nothing it wrote is left behind (incomplete multipart
uploads included). The no-overwrite writes run on both of their paths: the backend's own
conditional write where the probe found it working, and look-then-write (forced with
conditional writes off, and taken by RGW's copies, which lack copy-if-not-exists).
"""

from __future__ import annotations

import os
import threading

import pytest

from casstore.config import Settings
from casstore.errors import ObjectMissing, StorageError
from casstore.storage import NEVER_CONDITIONAL, LocalStorage, WritePath, open_storage
from tests.helpers import BACKENDS, S3_PARAMS, S3_SERVERS, make_storage, remaining_keys

PATHS = ["as-probed", "look-then-write"]


@pytest.fixture(params=BACKENDS)
def storage(request, tmp_path):
    s = make_storage(request.param, tmp_path)
    yield s
    assert remaining_keys(s) == [], "a test left objects behind"


def _writer(kind: str, path: str, tmp_path):
    if path == "as-probed":
        return make_storage(kind, tmp_path)
    if kind == "local":
        return LocalStorage(str(tmp_path / "objects"), paths=NEVER_CONDITIONAL)
    if kind == "memory":
        return open_storage("memory:///", paths=NEVER_CONDITIONAL)
    return make_storage(kind, tmp_path, conditional_writes="off")


def _expected_paths(kind: str, path: str) -> dict:
    """The path each no-overwrite write must take: look-then-write when forced; else the
    backend's own conditional write, except copies on RGW 16 (no copy-if-not-exists)."""
    if path == "look-then-write":
        return {"put_if_absent": "head-then-write", "copy_if_absent": "head-then-write"}
    copy = kind not in S3_SERVERS or S3_SERVERS[kind].copy_if_not_exists
    return {"put_if_absent": "conditional", "copy_if_absent": "conditional" if copy else "head-then-write"}


@pytest.fixture(params=[(b, p) for b in BACKENDS for p in PATHS], ids=lambda v: f"{v[0]}-{v[1]}")
def writer(request, tmp_path):
    """A backend, with its no-overwrite writes on one of their two paths (checked)."""
    kind, path = request.param
    s = _writer(kind, path, tmp_path)
    expected = _expected_paths(kind, path)
    assert {op: s.probe()[op] for op in expected} == expected
    yield s
    assert remaining_keys(s) == [], "a test left objects behind"


def chunks_of(data: bytes, size: int = 1 << 16):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def test_put_get_head_delete(storage):
    data = os.urandom(300_000)
    storage.put_stream("a/b/obj", chunks_of(data))
    assert b"".join(storage.get("a/b/obj")) == data
    info = storage.head("a/b/obj")
    assert info.size == len(data) and info.key == "a/b/obj"
    storage.delete("a/b/obj")
    assert storage.head("a/b/obj") is None


def test_empty_object(storage):
    storage.put_stream("empty", iter([]))
    assert storage.head("empty").size == 0
    assert b"".join(storage.get("empty")) == b""
    storage.delete("empty")


def test_ranges(storage):
    data = bytes(range(256)) * 100
    storage.put_stream("r", chunks_of(data))
    assert b"".join(storage.get("r", 0, 1)) == data[:1]
    assert b"".join(storage.get("r", 10, 5000)) == data[10:5000]
    assert b"".join(storage.get("r", 25000)) == data[25000:]
    assert b"".join(storage.get("r", len(data) - 1, len(data))) == data[-1:]
    storage.delete("r")


def test_missing_objects(storage):
    assert storage.head("nope") is None
    with pytest.raises(ObjectMissing):
        b"".join(storage.get("nope"))
    storage.delete("nope")  # deleting a missing object is not an error


def test_put_if_absent_never_overwrites(writer):
    assert writer.put_if_absent("k", b"first") is True
    assert writer.put_if_absent("k", b"second") is False
    assert b"".join(writer.get("k")) == b"first"
    writer.delete("k")


def test_copy_if_absent(writer):
    writer.put_stream("src", [b"payload"])
    assert writer.copy_if_absent("src", "dst/x") is True
    writer.put_stream("other", [b"different"])
    assert writer.copy_if_absent("other", "dst/x") is False
    assert b"".join(writer.get("dst/x")) == b"payload"
    with pytest.raises(ObjectMissing):
        writer.copy_if_absent("missing", "dst/y")
    assert writer.head("dst/y") is None
    for key in ("src", "other", "dst/x"):
        writer.delete(key)


def test_copy_if_absent_of_a_multipart_object(writer):
    """A large blob's path: staged in several parts, then copied to its final key (on RGW 16 a
    CopyObject; obstore's conditional multipart copy is refused there with 411)."""
    data = os.urandom(1 << 20) * 12
    writer.put_stream("staging/big", (data[i:i + (1 << 20)] for i in range(0, len(data), 1 << 20)))
    assert writer.copy_if_absent("staging/big", "blobs/big") is True
    assert writer.copy_if_absent("staging/big", "blobs/big") is False
    assert b"".join(writer.get("blobs/big")) == data
    for key in ("staging/big", "blobs/big"):
        writer.delete(key)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", S3_PARAMS)
def test_copy_past_the_single_copy_limit_goes_in_parts(kind, path, tmp_path):
    """Past S3's 5 GiB CopyObject limit (here lowered to 6 MiB) a copy is ranged UploadPartCopy
    calls in parallel, through botocore (RGW 16 needs their Content-Length: 0); nothing is left."""
    s = make_storage(kind, tmp_path, single_copy_limit=6 << 20,
                     **({"conditional_writes": "off"} if path == "look-then-write" else {}))
    data = os.urandom(13 << 20)  # three parts: 6 + 6 + 1 MiB
    s.put_stream("src", [data])
    assert s.copy_if_absent("src", "dst") is True
    assert s.copy_if_absent("src", "dst") is False
    assert s.head("dst").size == len(data) and b"".join(s.get("dst")) == data
    with pytest.raises(ObjectMissing):
        s.copy_if_absent("missing", "dst2")
    for key in ("src", "dst"):
        s.delete(key)
    assert remaining_keys(s) == []


def test_put_stream_overwrites_atomically(storage):
    storage.put_stream("o", [b"old"])
    storage.put_stream("o", [b"new", b"er"])
    assert b"".join(storage.get("o")) == b"newer"
    storage.delete("o")


def test_a_write_in_progress_is_invisible_to_list_and_head(storage):
    """verify and gc list the backend while ingests write: a half-written object (a local
    temporary file, an open multipart upload) must not look like an object."""
    started, proceed, seen = threading.Event(), threading.Event(), {}

    def pieces():
        yield b"x" * (1 << 20)
        started.set()
        proceed.wait(30)
        yield b"y"

    writer = threading.Thread(target=storage.put_stream, args=("w/obj", pieces()))
    writer.start()
    try:
        assert started.wait(30)
        seen = {"list": sorted(i.key for i in storage.list("w/")), "head": storage.head("w/obj")}
    finally:
        proceed.set()
        writer.join(30)
    assert seen == {"list": [], "head": None}
    assert [i.key for i in storage.list("w/")] == ["w/obj"] and storage.head("w/obj").size == (1 << 20) + 1
    storage.delete("w/obj")


def test_list_by_prefix(storage):
    for key in ("p/1", "p/2", "p/q/3", "other/4"):
        storage.put_stream(key, [key.encode()])
    assert sorted(i.key for i in storage.list("p/")) == ["p/1", "p/2", "p/q/3"]
    assert list(storage.list("absent/")) == []
    for key in ("p/1", "p/2", "p/q/3", "other/4"):
        storage.delete(key)


def test_large_object_streams_in_parts(storage):
    part = os.urandom(1 << 20)
    storage.put_stream("big", (part for _ in range(20)))
    assert storage.head("big").size == 20 << 20
    total = 0
    for chunk in storage.get("big"):
        assert len(chunk) <= 4 << 20
        total += len(chunk)
    assert total == 20 << 20
    storage.delete("big")


def test_failed_stream_leaves_nothing(storage):
    def broken():
        yield b"x" * (1 << 20)
        raise RuntimeError("client went away")

    with pytest.raises(Exception):
        storage.put_stream("partial", broken())
    assert storage.head("partial") is None


def test_probe_reports_what_the_backend_does_and_leaves_nothing(storage, request):
    kind = request.node.callspec.params["storage"]
    before = remaining_keys(storage, folders=True)
    capabilities = storage.probe()
    copy = kind not in S3_SERVERS or S3_SERVERS[kind].copy_if_not_exists
    notes = capabilities.pop("notes", {})
    assert capabilities == {"conditional_create": True, "copy_if_not_exists": copy,
                            "put_if_absent": WritePath.CONDITIONAL.value,
                            "copy_if_absent": (WritePath.CONDITIONAL if copy else WritePath.HEAD_THEN_WRITE).value}
    if copy:
        assert notes == {}
    else:  # RGW 16: obstore's body-less UploadPartCopy is refused
        assert list(notes) == ["copy_if_not_exists"] and "411 Length Required" in notes["copy_if_not_exists"]
    assert remaining_keys(storage, folders=True) == before == []  # no object, upload or folder left


@pytest.mark.parametrize("kind", S3_PARAMS)
def test_an_http_endpoint_configured_through_aws_variables_alone(kind, tmp_path):
    server = S3_SERVERS[kind]
    access, secret = server.keys
    env = {"ARTIFACT_STORE_DATA_DIR": str(tmp_path), "ARTIFACT_STORE_STORAGE_URL": server.url(),
           "AWS_ENDPOINT_URL": server.endpoint, "AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret,
           "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}
    settings = Settings.from_env(env)
    s = open_storage(settings.storage_url, s3=settings.s3)
    s.put_stream("via-aws-env", [b"hello"])
    assert b"".join(s.get("via-aws-env")) == b"hello"
    s.delete("via-aws-env")
    assert remaining_keys(s) == []
    wrong = Settings.from_env({**env, "AWS_SECRET_ACCESS_KEY": secret + "x"})
    with pytest.raises(StorageError):  # the credentials really are the ones used: a wrong secret is refused
        open_storage(wrong.storage_url, s3=wrong.s3).put_stream("refused", [b"x"])
    plain = Settings.from_env({k: v for k, v in env.items() if k != "AWS_ALLOW_HTTP"})
    with pytest.raises(StorageError, match="AWS_ALLOW_HTTP=true"):  # http is refused unless allowed
        open_storage(plain.storage_url, s3=plain.s3)


def test_size_hint_is_accepted(storage):
    storage.put_stream("hinted", [b"x" * 100], size_hint=200 << 30)
    assert b"".join(storage.get("hinted")) == b"x" * 100
    storage.delete("hinted")


@pytest.mark.parametrize("size", [0, 1, 8 << 20, 78 << 30, 200 << 30, 5 << 40])
def test_part_size_fits_s3_limits(size):
    from casstore.storage import MAX_PARTS, MIN_PART, part_size_for

    part = part_size_for(size, 8 << 20)
    assert part >= MIN_PART and -(-size // part) < MAX_PARTS


def test_writes_that_never_completed_are_found_and_removed(storage, tmp_path):
    from tests.helpers import leave_stray_write

    assert storage.stray_writes() == []
    if not leave_stray_write(storage, "staging/01JDEADBEEF0000000000000000"):
        pytest.skip("this backend never leaves a write half-done")
    strays = storage.stray_writes()
    assert [s.key for s in strays] == ["staging/01JDEADBEEF0000000000000000"]
    assert storage.head("staging/01JDEADBEEF0000000000000000") is None  # invisible to list and head
    storage.abort_stray(strays[0])
    assert storage.stray_writes() == []
