"""Files through a real HTTP server: upload, digests, hostile names, ranges, attach, tar batches."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import os
import tarfile
from urllib.parse import quote

import pytest
from sqlalchemy import text

from casstore import layout
from tests.helpers import assert_problem, counts, make_tar, sha

HOSTILE = [
    "with space.txt", "100%.txt", "hash#tag", "question?.txt", "amp&ersand", "plus+sign", "it's", 'say "hi"',
    "semi;colon", "tilde~", "[brackets]", "-leading-dash", ".dotfile", "..hidden..", "ünïcødé/日本語.txt",
    "emoji/🎉🚀.log", "/".join(f"d{i}" for i in range(24)) + "/deep.txt", "a=b,c", "percent%2Fslash",
]


def test_upload_and_download_round_trip(server):
    pkg = server.create()["id"]
    data = os.urandom(3 * (1 << 20) + 17)  # larger than the in-memory threshold: goes through staging
    response = server.put(pkg, "raw/capture.bin", data)
    assert response.status_code == 201, response.text
    entry = response.json()
    assert entry == {**entry, "path": "raw/capture.bin", "sha256": sha(data), "size": len(data),
                     "media_type": "application/octet-stream"}
    got = server.get(pkg, "raw/capture.bin")
    assert got.status_code == 200 and got.content == data
    assert got.headers["ETag"] == f'"{sha(data)}"'
    assert got.headers["Content-Length"] == str(len(data))
    assert got.headers["Accept-Ranges"] == "bytes"
    package = server.http.get(f"{server.url}/v1/packages/{pkg}").json()
    assert package["status"] == "uploading" and package["file_count"] == 1 and package["total_bytes"] == len(data)


def test_media_type_from_header_or_guessed(server):
    pkg = server.create()["id"]
    assert server.put(pkg, "report.json", b"{}").json()["media_type"] == "application/json"
    assert server.put(pkg, "notes", b"x", headers={"Content-Type": "text/markdown"}).json()["media_type"] == \
        "text/markdown"
    assert server.get(pkg, "notes").headers["Content-Type"].startswith("text/markdown")


@pytest.mark.parametrize("bad", ["not a type", "text/plain; x=\x01", "a" * 300 + "/b", "/json", "text/"])
def test_bad_media_type_is_422_and_changes_nothing(server, store, bad):
    pkg = server.create()["id"]
    before = counts(store)
    response = server.http.put(server.file_url(pkg, "f"), data=b"x", headers={"Content-Type": bad.encode("latin-1")})
    assert_problem(response, 422)
    assert_problem(server.http.post(f"{server.url}/v1/packages/{pkg}/attach",
                                    json={"files": [{"path": "g", "sha256": "0" * 64, "media_type": bad[:255]}]}), 422)
    assert counts(store) == before


def test_media_type_with_parameters_round_trips(server):
    pkg = server.create()["id"]
    kind = 'text/plain; charset="utf-8"'
    assert server.put(pkg, "notes.txt", b"x", headers={"Content-Type": kind}).json()["media_type"] == kind
    assert server.get(pkg, "notes.txt").headers["Content-Type"] == kind


@pytest.mark.parametrize("path", HOSTILE)
def test_hostile_names_round_trip_byte_for_byte(server, path):
    pkg = server.create()["id"]
    data = path.encode() * 3
    response = server.put(pkg, path, data)
    assert response.status_code == 201, response.text
    assert response.json()["path"] == path
    assert server.get(pkg, path).content == data
    listed = server.http.get(f"{server.url}/v1/packages/{pkg}/files").json()["items"]
    assert [f["path"] for f in listed] == [path]


def raw_put(server, url_path: str, body: bytes = b"x") -> tuple[int, str, bytes]:
    """PUT with the URL path sent exactly as given (no client-side normalization)."""
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port))
    conn.putrequest("PUT", url_path, skip_accept_encoding=True)
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    conn.send(body)
    response = conn.getresponse()
    result = response.status, response.getheader("Content-Type"), response.read()
    conn.close()
    return result


@pytest.mark.parametrize("raw", [
    "%2Fabsolute", "a/../b", "../escape", "..", ".", "a/./b", "a//b", "a/", "", "back%5Cslash", "nul%00byte",
    "ctrl%01char", "new%0Aline", "%FF%FE", "x" * 1100, "/".join(["s" * 300]),
])
def test_bad_paths_are_422_and_change_nothing(server, store, raw):
    pkg = server.create()["id"]
    before = counts(store)
    status, ctype, _ = raw_put(server, f"/v1/packages/{pkg}/files/{raw}")
    assert status == 422 and ctype == "application/problem+json"
    assert counts(store) == before


def test_nothing_is_written_outside_the_storage_root(server, store, tmp_path):
    root = store.storage.root
    outside_before = {p for p in tmp_path.rglob("*") if not str(p).startswith(root)}
    pkg = server.create()["id"]
    for raw in ["..%2F..%2F..%2Fescaped", "%2Ftmp%2Fescaped", "a/../../../escaped", "....//escaped",
                "%2E%2E/%2E%2E/escaped", "..%5C..%5Cescaped"]:
        raw_put(server, f"/v1/packages/{pkg}/files/{raw}", b"evil")
    server.put(pkg, "ok/../../x", b"evil")  # requests may normalize; either way nothing escapes
    outside_after = {p for p in tmp_path.rglob("*") if not str(p).startswith(root)}
    new_outside = {p for p in outside_after - outside_before if "registry.db" not in p.name}
    assert new_outside == set()
    for dirpath, _dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        assert rel == "." or rel.split(os.sep)[0] in ("blobs", "staging", "health"), rel


def test_client_digest_checked(server, store):
    pkg = server.create()["id"]
    data = b"evidence bytes"
    good_b64 = base64.b64encode(hashlib.sha256(data).digest()).decode()
    ok = server.put(pkg, "a", data, headers={"Content-Digest": f"sha-256=:{good_b64}:"})
    assert ok.status_code == 201
    ok = server.put(pkg, "b", data, headers={"X-Checksum-Sha256": sha(data)})
    assert ok.status_code == 201
    before = counts(store)
    wrong = sha(b"other")
    body = assert_problem(server.put(pkg, "c", data, headers={"X-Checksum-Sha256": wrong}), 422)
    assert body["received_sha256"] == sha(data) and body["expected_sha256"] == wrong
    big = os.urandom(2 << 20)
    assert_problem(server.put(pkg, "d", big, headers={"X-Checksum-Sha256": wrong}), 422)
    assert_problem(server.put(pkg, "e", data, headers={"Content-Digest": "sha-256=:bm90IGEgZGlnZXN0:"}), 422)
    assert_problem(server.put(pkg, "f", data, headers={"X-Checksum-Sha256": "xyz"}), 422)
    assert counts(store) == before
    assert store.storage.head(layout.blob_key(sha(big))) is None
    assert list(store.storage.list("staging/")) == []


def test_existing_path_is_409_unless_replace(server, store):
    pkg = server.create()["id"]
    server.put(pkg, "f.txt", b"one")
    assert_problem(server.put(pkg, "f.txt", b"two"), 409)
    assert server.get(pkg, "f.txt").content == b"one"
    replaced = server.http.put(server.file_url(pkg, "f.txt") + "?replace=true", data=b"two")
    assert replaced.status_code == 201
    assert server.get(pkg, "f.txt").content == b"two"
    package = server.http.get(f"{server.url}/v1/packages/{pkg}").json()
    assert package["file_count"] == 1 and package["total_bytes"] == 3
    with store.db.engine.connect() as conn:
        refs = dict(conn.execute(text("SELECT sha256, refcount FROM blob")).all())
    assert refs == {sha(b"one"): 0, sha(b"two"): 1}


def test_finalized_package_is_immutable(server):
    pkg = server.create()["id"]
    server.put(pkg, "a", b"a")
    server.http.post(f"{server.url}/v1/packages/{pkg}/finalize")
    assert_problem(server.put(pkg, "b", b"b"), 409)
    assert_problem(server.http.put(server.file_url(pkg, "a") + "?replace=true", data=b"z"), 409)
    assert_problem(server.http.post(f"{server.url}/v1/packages/{pkg}/attach",
                                    json={"files": [{"path": "c", "sha256": sha(b"a")}]}), 409)
    assert server.get(pkg, "a").content == b"a"


def test_ranges(server):
    pkg = server.create()["id"]
    data = bytes(range(256)) * 10
    server.put(pkg, "r.bin", data)
    for header, expected, content_range in [
        ("bytes=0-0", data[:1], f"bytes 0-0/{len(data)}"),
        ("bytes=10-19", data[10:20], f"bytes 10-19/{len(data)}"),
        ("bytes=2500-", data[2500:], f"bytes 2500-2559/{len(data)}"),
        ("bytes=-5", data[-5:], f"bytes 2555-2559/{len(data)}"),
        ("bytes=2550-9999", data[2550:], f"bytes 2550-2559/{len(data)}"),
    ]:
        response = server.get(pkg, "r.bin", headers={"Range": header})
        assert response.status_code == 206, header
        assert response.content == expected and response.headers["Content-Range"] == content_range
    unsatisfiable = server.get(pkg, "r.bin", headers={"Range": "bytes=2560-"})
    assert_problem(unsatisfiable, 416)
    assert unsatisfiable.headers["Content-Range"] == f"bytes */{len(data)}"
    # a malformed or multi-range header is ignored: the whole file
    assert server.get(pkg, "r.bin", headers={"Range": "bytes=9-3"}).status_code == 200
    assert server.get(pkg, "r.bin", headers={"Range": "bytes=0-1,5-6"}).content == data


def test_head_and_conditional_get(server):
    pkg = server.create()["id"]
    server.put(pkg, "h", b"headers only")
    head = server.http.head(server.file_url(pkg, "h"))
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == "12" and head.headers["ETag"] == f'"{sha(b"headers only")}"'
    assert head.headers["X-Checksum-Blake3"]
    again = server.get(pkg, "h", headers={"If-None-Match": head.headers["ETag"]})
    assert again.status_code == 304 and again.content == b""


def test_empty_file(server):
    pkg = server.create()["id"]
    assert server.put(pkg, "empty.log", b"").json()["size"] == 0
    got = server.get(pkg, "empty.log")
    assert got.status_code == 200 and got.content == b"" and got.headers["Content-Length"] == "0"


def test_missing_file_is_404(server):
    pkg = server.create()["id"]
    assert_problem(server.get(pkg, "nope"), 404)
    head = server.http.head(server.file_url(pkg, "nope"))
    assert head.status_code == 404 and head.headers["Content-Type"] == "application/problem+json"


def test_missing_digests_and_attach_by_reference(server, store):
    first = server.create()["id"]
    known = {"k1": b"known one", "k2": b"known two"}
    for path, data in known.items():
        server.put(first, path, data)
    unknown = sha(b"never uploaded")
    asked = [sha(b"known one"), unknown, "sha256:" + sha(b"known two")]
    missing = server.http.post(f"{server.url}/v1/blobs/missing", json={"digests": asked}).json()
    assert missing == {"missing": [unknown]}
    assert_problem(server.http.post(f"{server.url}/v1/blobs/missing", json={"digests": ["nope"]}), 422)

    second = server.create()["id"]
    answer = server.http.post(f"{server.url}/v1/packages/{second}/attach", json={"files": [
        {"path": "copy/one", "sha256": sha(b"known one")},
        {"path": "copy/two.txt", "sha256": sha(b"known two"), "media_type": "text/x-custom"},
        {"path": "copy/missing", "sha256": unknown},
    ]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [e["path"] for e in body["attached"]] == ["copy/one", "copy/two.txt"]
    assert body["attached"][1]["media_type"] == "text/x-custom" and body["attached"][0]["size"] == 9
    assert body["missing"] == [unknown]
    assert server.get(second, "copy/one").content == b"known one"
    with store.db.engine.connect() as conn:
        refs = dict(conn.execute(text("SELECT sha256, refcount FROM blob")).all())
    assert refs[sha(b"known one")] == 2 and refs[sha(b"known two")] == 2


@pytest.mark.parametrize("body", [
    {"files": []},
    {"files": [{"path": "../x", "sha256": "0" * 64}]},
    {"files": [{"path": "x", "sha256": "zz"}]},
    {"files": [{"path": "x", "sha256": "0" * 64}, {"path": "x", "sha256": "1" * 64}]},
    {"files": [{"path": "x"}]},
    {"nope": 1},
])
def test_attach_rejects_bad_input_and_changes_nothing(server, store, body):
    pkg = server.create()["id"]
    before = counts(store)
    assert_problem(server.http.post(f"{server.url}/v1/packages/{pkg}/attach", json=body), 422)
    assert counts(store) == before


def test_tar_batch_upload(server, store):
    pkg = server.create()["id"]
    files = {f"logs/{i:03d} ü #{i}.log": os.urandom(i * 37) for i in range(50)}
    files["big/capture.bin"] = os.urandom(3 << 20)
    pax = {"big/capture.bin": {"ARTIFACT_STORE.sha256": sha(files["big/capture.bin"]),
                               "ARTIFACT_STORE.media_type": "application/vnd.tcpdump.pcap"}}
    response = server.http.post(f"{server.url}/v1/packages/{pkg}/tar", data=make_tar(files, pax),
                                headers={"Content-Type": "application/x-tar"})
    assert response.status_code == 201, response.text
    added = {e["path"]: e for e in response.json()["added"]}
    assert set(added) == set(files)
    assert added["big/capture.bin"]["media_type"] == "application/vnd.tcpdump.pcap"
    for path, data in files.items():
        assert server.get(pkg, path).content == data
    with store.db.engine.connect() as conn:
        events = conn.execute(text("SELECT COUNT(*) FROM audit_event WHERE action='package.files_uploaded'")).scalar()
    assert events == 1  # one transaction for the batch


@pytest.mark.parametrize("case", ["bad-digest", "bad-path", "not-tar", "duplicate", "symlink"])
def test_bad_tar_batches_change_nothing(server, store, case):
    pkg = server.create()["id"]
    server.put(pkg, "existing", b"e")
    if case == "bad-digest":
        body = make_tar({"a": b"a", "b": b"b"}, {"b": {"ARTIFACT_STORE.sha256": sha(b"not b")}})
    elif case == "bad-path":
        body = make_tar({"a": b"a", "../b": b"b"})
    elif case == "not-tar":
        body = b"this is not a tar stream" * 100
    elif case == "duplicate":
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for data in (b"a", b"a2"):
                info = tarfile.TarInfo("a")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        body = buf.getvalue()
    else:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            link = tarfile.TarInfo("link")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(link)
        body = buf.getvalue()
    before = counts(store)
    assert_problem(server.http.post(f"{server.url}/v1/packages/{pkg}/tar", data=body), 422)
    assert counts(store) == before
    assert list(store.storage.list("staging/")) == []


def test_tar_existing_path_is_409(server, store):
    pkg = server.create()["id"]
    server.put(pkg, "a", b"a")
    before = counts(store)
    assert_problem(server.http.post(f"{server.url}/v1/packages/{pkg}/tar", data=make_tar({"a": b"new", "c": b"c"})),
                   409)
    assert counts(store) == before


def test_same_bytes_in_many_files_is_one_blob(server, store):
    pkg = server.create()["id"]
    for i in range(5):
        server.put(pkg, f"copy{i}", b"same bytes")
    with store.db.engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*), MAX(refcount) FROM blob")).one() == (1, 5)
    objects = [i.key for i in store.storage.list("blobs/")]
    assert objects == [layout.blob_key(sha(b"same bytes"))]


def test_url_quoting_helper_matches_server(server):
    # the test helper quotes with safe='/', the documented client rule
    assert quote("a b/#?", safe="/") == "a%20b/%23%3F"
