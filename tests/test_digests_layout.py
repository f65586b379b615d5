"""Digest parsing and the storage key layout."""

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from casstore import layout
from casstore.digests import (
    content_digest_header,
    digest_bytes,
    parse_content_digest,
    parse_sha256,
)
from casstore.errors import InvalidDigest

HELLO = hashlib.sha256(b"hello").hexdigest()


def test_parse_sha256_forms():
    assert parse_sha256(HELLO) == HELLO
    assert parse_sha256("sha256:" + HELLO.upper()) == HELLO
    for bad in ["", "abc", HELLO[:-1], HELLO + "0", "g" * 64, "md5:" + HELLO, "../" + HELLO[3:]]:
        with pytest.raises(InvalidDigest):
            parse_sha256(bad)


def test_content_digest_round_trip_and_errors():
    header = content_digest_header(HELLO)
    assert header == "sha-256=:" + base64.b64encode(hashlib.sha256(b"hello").digest()).decode() + ":"
    assert parse_content_digest(header) == HELLO
    assert parse_content_digest("sha-512=:AAAA:, " + header) == HELLO
    assert parse_content_digest("sha-512=:AAAA:") is None
    for bad in ["sha-256=abc", "sha-256=:!!!:", "sha-256=:" + base64.b64encode(b"short").decode() + ":"]:
        with pytest.raises(InvalidDigest):
            parse_content_digest(bad)


def test_digest_bytes_computes_both_hashes():
    d = digest_bytes(b"hello")
    assert d.sha256 == HELLO and d.size == 5
    assert d.blake3 == "ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f"


def test_blob_key_layout():
    assert layout.blob_key(HELLO) == f"blobs/sha256/{HELLO[:2]}/{HELLO[2:4]}/{HELLO}"
    assert layout.digest_from_blob_key(layout.blob_key(HELLO)) == HELLO
    assert layout.digest_from_blob_key(f"blobs/sha256/00/00/{HELLO}") is None
    with pytest.raises(InvalidDigest):
        layout.blob_key("../../etc/passwd")


@given(st.text(max_size=100))
def test_no_string_but_a_digest_becomes_a_blob_key(text):
    try:
        key = layout.blob_key(text)
    except InvalidDigest:
        return
    assert key.startswith("blobs/sha256/") and ".." not in key and len(key.split("/")) == 5


def test_staging_keys_are_unique_and_dated():
    a, b = layout.new_staging_key(), layout.new_staging_key()
    assert a != b and a.startswith("staging/")
    assert layout.staging_key_time(a) is not None
    assert layout.staging_key_time("staging/not-a-ulid") is None
