"""One conformance suite for every storage backend (as distribution's driver test suite).

Each test ends by checking that nothing it wrote is left behind.
"""

from __future__ import annotations

import os

import pytest

from casstore.errors import ObjectMissing
from tests.helpers import BACKENDS, make_storage, remaining_keys


@pytest.fixture(params=BACKENDS)
def storage(request, tmp_path):
    s = make_storage(request.param, tmp_path)
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


def test_put_if_absent_never_overwrites(storage):
    assert storage.put_if_absent("k", b"first") is True
    assert storage.put_if_absent("k", b"second") is False
    assert b"".join(storage.get("k")) == b"first"
    storage.delete("k")


def test_copy_if_absent(storage):
    storage.put_stream("src", [b"payload"])
    assert storage.copy_if_absent("src", "dst/x") is True
    storage.put_stream("other", [b"different"])
    assert storage.copy_if_absent("other", "dst/x") is False
    assert b"".join(storage.get("dst/x")) == b"payload"
    with pytest.raises(ObjectMissing):
        storage.copy_if_absent("missing", "dst/y")
    for key in ("src", "other", "dst/x"):
        storage.delete(key)


def test_put_stream_overwrites_atomically(storage):
    storage.put_stream("o", [b"old"])
    storage.put_stream("o", [b"new", b"er"])
    assert b"".join(storage.get("o")) == b"newer"
    storage.delete("o")


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


def test_probe_reports_conditional_writes(storage):
    capabilities = storage.probe()
    assert capabilities == {"conditional_create": True, "copy_if_not_exists": True}


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
