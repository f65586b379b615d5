"""Packages through a real HTTP server: create, list, get, finalize, manifest, errors."""

from __future__ import annotations

import hashlib
import json

import pytest
from sqlalchemy import text

from tests.helpers import PROBLEM, assert_problem, counts


def test_create_returns_201_with_the_package(server):
    meta = {"schema": "guide-board.run/v1", "nested": {"unknown": [1, 2.5, None, "x"]}, "z": True, "a": 0}
    body = server.create(producer="guide-board", run_id="run-1", target_profile="tp",
                         assessment_profile="ap", metadata=meta)
    assert body["id"].startswith("pkg_") and len(body["id"]) == 30
    assert body["status"] == "created"
    assert body["retention_class"] == "raw-evidence"  # guide-board's default class
    assert body["expires_at"].endswith("Z")
    assert body["metadata"] == meta
    got = server.http.get(f"{server.url}/v1/packages/{body['id']}").json()
    assert got == body
    assert list(got["metadata"]) == list(meta)  # kept exactly as given, key order included


def test_ids_are_unique_and_time_sortable(server):
    ids = [server.create()["id"] for _ in range(20)]
    assert len(set(ids)) == 20
    assert ids == sorted(ids)


@pytest.mark.parametrize("body", [
    {},  # producer missing
    {"producer": ""},
    {"producer": "x", "unknown_field": 1},
    {"producer": "x", "metadata": "not an object"},
    {"producer": "x", "retention_class": "no-such-class"},
    {"producer": "x", "run_id": "r" * 300},
    {"producer": 5},
])
def test_create_rejects_bad_input_and_changes_nothing(server, store, body):
    before = counts(store)
    assert_problem(server.http.post(f"{server.url}/v1/packages", json=body), 422)
    assert counts(store) == before


def test_create_rejects_non_json(server, store):
    before = counts(store)
    response = server.http.post(f"{server.url}/v1/packages", data="{not json",
                                headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 422)
    assert response.headers["Content-Type"] == PROBLEM
    assert counts(store) == before


def test_duplicate_run_is_409_naming_the_existing_package(server):
    first = server.create(producer="guide-board", run_id="dup")
    body = assert_problem(server.http.post(f"{server.url}/v1/packages",
                                           json={"producer": "guide-board", "run_id": "dup"}), 409)
    assert body["package_id"] == first["id"]
    # another producer may use the same run id
    server.create(producer="other", run_id="dup")


def test_unknown_package_is_404(server):
    assert_problem(server.http.get(f"{server.url}/v1/packages/pkg_NOPE"), 404)
    assert_problem(server.http.post(f"{server.url}/v1/packages/pkg_NOPE/finalize"), 404)
    assert_problem(server.http.get(f"{server.url}/v1/packages/pkg_NOPE/manifest"), 404)
    assert_problem(server.put("pkg_NOPE", "a.txt", b"x"), 404)


def test_unknown_route_and_method_are_problems(server):
    assert_problem(server.http.get(f"{server.url}/v1/nothing-here"), 404)
    assert_problem(server.http.delete(f"{server.url}/v1/blobs/missing"), 405)


def test_list_filters_and_cursor(server):
    made = []
    for i in range(7):
        made.append(server.create(producer="guide-board", run_id=f"run-{i}",
                                  target_profile="even" if i % 2 == 0 else "odd", assessment_profile="ap")["id"])
    server.create(producer="other", run_id="x")
    url = f"{server.url}/v1/packages"
    by_run = server.http.get(url, params={"run_id": "run-3"}).json()
    assert [p["id"] for p in by_run["items"]] == [made[3]] and by_run["next_cursor"] is None
    evens = server.http.get(url, params={"target_profile": "even"}).json()["items"]
    assert [p["id"] for p in evens] == [made[6], made[4], made[2], made[0]]
    seen, cursor = [], None
    while True:
        params = {"producer": "guide-board", "limit": 3, **({"cursor": cursor} if cursor else {})}
        page = server.http.get(url, params=params).json()
        seen += [p["id"] for p in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(made))
    assert server.http.get(url, params={"status": "finalized"}).json()["items"] == []
    assert_problem(server.http.get(url, params={"limit": 0}), 422)
    assert_problem(server.http.get(url, params={"status": "bogus"}), 422)
    assert_problem(server.http.get(url, params={"color": "red"}), 422)


def test_finalize_writes_a_canonical_manifest(server, store):
    pkg = server.create(producer="guide-board", run_id="m", metadata={"k": "v"})
    files = {"b/2.txt": b"two", "a/1.json": b'{"x":1}', "c": b"", "d/dup": b"two"}
    for path, data in files.items():
        assert server.put(pkg["id"], path, data).status_code == 201
    done = server.http.post(f"{server.url}/v1/packages/{pkg['id']}/finalize").json()
    assert done["status"] == "finalized" and done["file_count"] == 4 and done["total_bytes"] == 3 + 7 + 0 + 3
    raw = server.http.get(f"{server.url}/v1/packages/{pkg['id']}/manifest")
    assert raw.status_code == 200 and raw.headers["Content-Type"] == "application/json"
    assert done["manifest_digest"] == "sha256:" + hashlib.sha256(raw.content).hexdigest()
    manifest = json.loads(raw.content)
    assert raw.content == json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert [f["path"] for f in manifest["files"]] == sorted(files)
    for entry in manifest["files"]:
        assert entry["sha256"] == hashlib.sha256(files[entry["path"]]).hexdigest()
        assert entry["size"] == len(files[entry["path"]]) and len(entry["blake3"]) == 64
    assert manifest["package"]["id"] == pkg["id"] and manifest["package"]["metadata"] == {"k": "v"}
    # finalize again: same answer, nothing new
    again = server.http.post(f"{server.url}/v1/packages/{pkg['id']}/finalize")
    assert again.status_code == 200 and again.json()["manifest_digest"] == done["manifest_digest"]


def test_manifest_of_unfinalized_package_is_404(server):
    pkg = server.create()
    assert_problem(server.http.get(f"{server.url}/v1/packages/{pkg['id']}/manifest"), 404)


def test_every_state_change_writes_an_audit_event(server, store):
    pkg = server.create(run_id="audited")
    server.put(pkg["id"], "f", b"data")
    server.http.post(f"{server.url}/v1/packages/{pkg['id']}/finalize")
    with store.db.engine.connect() as conn:
        actions = [r[0] for r in conn.execute(
            text("SELECT action FROM audit_event WHERE package_id = :p ORDER BY id"), {"p": pkg["id"]})]
    assert actions == ["package.created", "package.file_uploaded", "package.finalized"]


def test_openapi_and_docs_are_served(server):
    spec = server.http.get(f"{server.url}/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    for path in ("/v1/packages", "/v1/packages/{package_id}", "/v1/packages/{package_id}/finalize",
                 "/v1/packages/{package_id}/manifest", "/v1/packages/{package_id}/files/{logical_path}",
                 "/v1/packages/{package_id}/attach", "/v1/blobs/missing", "/v1/health"):
        assert path in spec["paths"], path
    assert server.http.get(f"{server.url}/docs").status_code == 200
