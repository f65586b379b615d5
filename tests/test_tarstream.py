"""The tar reader and writer agree with the standard library, and refuse what they should."""

from __future__ import annotations

import io
import tarfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casstore.errors import InvalidInput
from casstore.tarstream import TarReader, _number, tar_of

segment = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\"),
                  min_size=1, max_size=60).filter(lambda s: s not in (".", ".."))
names = st.lists(segment, min_size=1, max_size=6).map("/".join)
members = st.lists(st.tuples(names, st.binary(max_size=3000)), max_size=12, unique_by=lambda m: m[0])


def read_all(body: bytes) -> list[tuple[str, bytes]]:
    reader = TarReader(io.BytesIO(body))
    return [(m.name, reader.read_small()) for m in reader if not m.is_dir]


def read_with_tarfile(body: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(body), mode="r|") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(members)
def test_written_batches_read_back_the_same_here_and_with_tarfile(items):
    body = tar_of(items)
    assert read_all(body) == items
    assert read_with_tarfile(body) == items


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(members, st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]))
def test_reads_what_tarfile_writes(items, fmt):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        folder = tarfile.TarInfo("a folder")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, data in items:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.pax_headers = {"ARTIFACT_STORE.media_type": "text/plain"} if fmt == tarfile.PAX_FORMAT else {}
            tar.addfile(info, io.BytesIO(data))
    body = buf.getvalue()
    assert read_all(body) == read_with_tarfile(body) == items
    if fmt == tarfile.PAX_FORMAT and items:
        assert all(m.pax.get("ARTIFACT_STORE.media_type") == "text/plain"
                   for m in TarReader(io.BytesIO(body)) if not m.is_dir)


def test_large_members_stream_in_chunks():
    big = bytes(range(256)) * 12_000  # 3 MB: read as chunks, never as one read
    body = tar_of([("small", b"s"), ("big", big), ("after", b"a")])
    reader = TarReader(io.BytesIO(body))
    got = {}
    for m in reader:
        got[m.name] = b"".join(reader.chunks()) if m.size > 1 << 20 else reader.read_small()
    assert got == {"small": b"s", "big": big, "after": b"a"}


def test_unread_data_is_skipped():
    body = tar_of([("a", b"x" * 5000), ("b", b"y" * 10)])
    assert [m.name for m in TarReader(io.BytesIO(body))] == ["a", "b"]


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE])
def test_links_and_devices_are_refused(kind):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("odd")
        info.type, info.linkname = kind, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(InvalidInput, match="not a regular file"):
        read_all(buf.getvalue())


@pytest.mark.parametrize("body", [
    tar_of([("a", b"abc" * 400)])[:1200],  # truncated in the middle of the data
    tar_of([("a", b"abc")])[:300],  # truncated in the middle of a header
    b"not a tar stream at all" * 40,
    bytes(100) + b"x" * 412 + bytes(1024),  # a block that is neither zero nor a header
])
def test_damaged_streams_are_invalid_input(body):
    with pytest.raises(InvalidInput):
        read_all(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4000), st.integers(0, 3000), st.binary(min_size=1, max_size=8))
def test_any_bytes_give_members_or_invalid_input_never_a_crash(noise, at, patch):
    valid = bytearray(tar_of([("dir/a", b"hello" * 50), ("b" * 120, b"world")]))
    valid[at:at + len(patch)] = patch  # a damaged archive
    for body in (bytes(valid), noise):
        try:
            read_all(body)
        except InvalidInput:
            pass


def test_an_archive_is_whole_only_with_its_end_marker_and_nothing_but_zeros_after_it():
    whole = tar_of([("a", b"1" * 700), ("b", b"2"), ("c", b"3" * 10)])
    reader = TarReader(io.BytesIO(whole + bytes(10240)))  # tarfile's record padding is fine
    assert [(m.name, reader.read_small()) for m in reader] == [("a", b"1" * 700), ("b", b"2"), ("c", b"3" * 10)]
    reader.finish()
    assert read_all(bytes(1024)) == []  # an empty archive is just its end marker
    cut_after_two = whole[:whole.index(b"c\0")]  # the members before the third, and no end marker
    for broken in (b"", cut_after_two, whole[:-1024]):
        with pytest.raises(InvalidInput, match="end-of-archive"):
            read_all(broken)
    for tail in (b"x", bytes(600) + b"\x01"):
        reader = TarReader(io.BytesIO(whole + tail))
        list(reader)
        with pytest.raises(InvalidInput, match="after its end-of-archive marker"):
            reader.finish()
    reader = TarReader(io.BytesIO(whole[:-512]))  # one zero block of the two
    list(reader)
    with pytest.raises(InvalidInput, match="inside its end-of-archive marker"):
        reader.finish()


def test_base256_sizes_parse():
    assert _number(b"\x80" + (9 << 30).to_bytes(11, "big")) == 9 << 30
    with pytest.raises(InvalidInput):
        _number(b"\xff" + bytes(11))
