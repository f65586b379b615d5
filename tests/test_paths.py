"""Logical path rules: what round-trips and what is refused."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casstore.errors import InvalidPath
from casstore.paths import MAX_PATH_BYTES, validate_path

ACCEPTED = [
    "a", "run.json", "a b/c d.txt", "100%/x", "#hash", "what?", "a&b", "a+b", "'quote'", '"dq"', "semi;colon",
    "tilde~", "[brackets]", "{braces}", "-leading-dash", ".dotfile", "..hidden..", "dir/.env", "ümlaut/日本語",
    "emoji/🎉.log", "/".join(["d"] * 24) + "/leaf.txt", "a..b", "...", " leading space", "trailing space ",
]
REFUSED = [
    "", "/abs", "/", "a//b", "a/", "./a", "a/./b", "../a", "a/..", "..", ".", "back\\slash", "nul\0",
    "ctrl\x01", "tab\there", "new\nline", "del\x7f", "x" * (MAX_PATH_BYTES + 1), "s" * 256, "/".join(["d"] * 65),
]


@pytest.mark.parametrize("path", ACCEPTED)
def test_accepted_paths_come_back_unchanged(path):
    assert validate_path(path) == path


@pytest.mark.parametrize("path", REFUSED)
def test_refused_paths(path):
    with pytest.raises(InvalidPath):
        validate_path(path)


@pytest.mark.parametrize("value", [None, 3, b"bytes", ["a"]])
def test_non_strings_are_refused(value):
    with pytest.raises(InvalidPath):
        validate_path(value)


segment = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30)


@settings(max_examples=500, deadline=None)
@given(st.lists(segment, min_size=1, max_size=30))
def test_property_valid_iff_every_rule_holds(segments):
    path = "/".join(segments)
    parts = path.split("/")
    expected_ok = (
        len(path.encode()) <= MAX_PATH_BYTES
        and len(parts) <= 64
        and all(p not in ("", ".", "..") and len(p.encode()) <= 255 for p in parts)
        and not any(c == "\\" or ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in path)
    )
    try:
        assert validate_path(path) == path
        ok = True
    except InvalidPath:
        ok = False
    assert ok == expected_ok, path


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=200))
def test_property_accepted_paths_are_safe_relative_posix(path):
    try:
        validate_path(path)
    except InvalidPath:
        return
    assert not path.startswith("/")
    assert all(seg not in ("", ".", "..") for seg in path.split("/"))
    assert "\\" not in path and "\0" not in path
