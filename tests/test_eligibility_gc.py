"""Eligibility, explicit deletion, gc and verify: what could go, what did, and proof that nothing live was lost."""

from __future__ import annotations

import json
import os
from datetime import timedelta

from sqlalchemy import text

from casstore import layout
from tests.helpers import assert_problem, cli, sha


def make(server, files: dict[str, bytes], retention_class="transient", finalize=True) -> str:
    pkg = server.create(retention_class=retention_class)["id"]
    for path, data in files.items():
        assert server.put(pkg, path, data).status_code == 201
    if finalize:
        server.http.post(f"{server.url}/v1/packages/{pkg}/finalize")
    return pkg


def refcounts(store) -> dict[str, int]:
    with store.db.engine.connect() as conn:
        return dict(conn.execute(text("SELECT sha256, refcount FROM blob")).all())


def test_eligibility_bytes_with_blobs_shared_with_a_retained_package(server, settings):
    cli(settings, "retention-classes", "set", "transient", "--days", "0")
    shared, own_a, own_b, both_eligible = os.urandom(1000), os.urandom(300), os.urandom(200), os.urandom(50)
    a = make(server, {"shared.bin": shared, "own.bin": own_a, "common.bin": both_eligible})
    b = make(server, {"own.bin": own_b, "common.bin": both_eligible, "own-again.bin": own_b})
    kept = make(server, {"shared-copy.bin": shared}, retention_class="raw-evidence")
    report = server.http.get(f"{server.url}/v1/eligibility").json()
    by_id = {p["package_id"]: p for p in report["packages"]}
    assert set(by_id) == {a, b}
    assert by_id[a]["reclaimable_bytes"] == 300 + 50 and by_id[a]["shared_bytes"] == 1000
    assert by_id[b]["reclaimable_bytes"] == 200 + 50 and by_id[b]["shared_bytes"] == 0
    assert report["reclaimable_bytes"] == 300 + 200 + 50 and report["shared_bytes"] == 1000
    # in the past nothing was expired yet
    past = server.http.get(f"{server.url}/v1/eligibility", params={"as_of": "2001-01-01T00:00:00Z"}).json()
    assert past["packages"] == [] and past["reclaimable_bytes"] == 0
    # the CLI says the same, as a table and as JSON
    table = cli(settings, "eligibility")
    assert table.returncode == 0 and a in table.stdout and b in table.stdout and kept not in table.stdout
    as_json = json.loads(cli(settings, "eligibility", "--json").stdout)
    assert as_json["reclaimable_bytes"] == 550 and as_json["shared_bytes"] == 1000
    assert json.loads(cli(settings, "eligibility", "--json", "--as-of", "2001-01-01").stdout)["packages"] == []
    # reporting deleted nothing
    assert {p["status"] for p in server.http.get(f"{server.url}/v1/packages").json()["items"]} == {"finalized"}


def test_delete_only_eligible_then_tombstone(server, store, settings):
    data = {"a.txt": b"only here", "b.txt": b"also elsewhere"}
    retained = make(server, data)
    assert_problem(server.http.delete(f"{server.url}/v1/packages/{retained}", params={"reason": "x"}), 409)
    cli(settings, "retention-classes", "set", "transient", "--days", "0")
    pkg = make(server, data)
    other = make(server, {"b.txt": b"also elsewhere"}, retention_class="raw-evidence")
    assert_problem(server.http.delete(f"{server.url}/v1/packages/{pkg}"), 422)  # a reason is required
    manifest_before = server.http.get(f"{server.url}/v1/packages/{pkg}/manifest").content
    deleted = server.http.delete(f"{server.url}/v1/packages/{pkg}", params={"reason": "expired evidence"},
                                 headers={"X-Actor": "ops"})
    assert deleted.status_code == 200
    body = deleted.json()
    assert body["status"] == "deleted" and body["deleted_at"] and body["manifest_digest"]
    tomb = server.http.get(f"{server.url}/v1/packages/{pkg}").json()
    assert tomb["status"] == "deleted" and tomb["metadata"] == {} and tomb["file_count"] == 2
    assert server.http.get(f"{server.url}/v1/packages/{pkg}/manifest").content == manifest_before
    assert_problem(server.get(pkg, "a.txt"), 410)
    assert_problem(server.put(pkg, "new", b"x"), 410)
    assert_problem(server.http.delete(f"{server.url}/v1/packages/{pkg}", params={"reason": "again"}), 410)
    trail = server.http.get(f"{server.url}/v1/packages/{pkg}/events").json()["items"]
    assert ("retention", "deleted") in [(e["kind"], e["action"]) for e in trail]
    assert ("audit", "package.deleted") in [(e["kind"], e["action"]) for e in trail]
    refs = refcounts(store)
    # the retained copy of "a.txt" still holds it; b.txt is held by `retained` and `other`
    assert refs[sha(b"only here")] == 1 and refs[sha(b"also elsewhere")] == 2
    assert server.get(other, "b.txt").content == b"also elsewhere"
    assert pkg not in [p["package_id"] for p in server.http.get(f"{server.url}/v1/eligibility").json()["packages"]]
    assert store.verify.run().ok


def test_cli_delete_and_gc_free_only_unreferenced_bytes(server, store, settings):
    cli(settings, "retention-classes", "set", "transient", "--days", "0")
    gone, shared = os.urandom(5000), os.urandom(7000)
    doomed = make(server, {"gone.bin": gone, "shared.bin": shared})
    keeper = make(server, {"shared.bin": shared}, retention_class="raw-evidence")
    refused = cli(settings, "delete", keeper, "--reason", "try")
    assert refused.returncode == 2 and "retained until" in refused.stderr
    assert cli(settings, "delete", doomed, "--reason", "expired").returncode == 0
    assert store.missing_blobs([sha(gone)]) == []  # still there until gc
    out = cli(settings, "gc", "--json", "--orphan-grace", "0s")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["blobs_removed"] == 1 and report["bytes_freed"] == 5000
    assert store.storage.head(layout.blob_key(sha(gone))) is None
    assert store.missing_blobs([sha(gone), sha(shared)]) == [sha(gone)]  # existence answers follow gc at once
    assert server.get(keeper, "shared.bin").content == shared
    # the same bytes come back with the next upload
    again = make(server, {"back.bin": gone}, retention_class="raw-evidence")
    assert server.get(again, "back.bin").content == gone
    assert cli(settings, "verify", "--deep").returncode == 0
    second = json.loads(cli(settings, "gc", "--json").stdout)
    assert second["blobs_removed"] == 0


def test_gc_removes_old_orphans_and_leaves_young_ones(server, store):
    orphan = os.urandom(100)
    store.storage.put_stream(layout.blob_key(sha(orphan)), [orphan])
    young = store.gc.run(actor="test", orphan_grace=timedelta(hours=1))
    assert young.orphans_removed == 0 and store.storage.head(layout.blob_key(sha(orphan))) is not None
    old = store.gc.run(actor="test", orphan_grace=timedelta(0))
    assert old.orphans_removed == 1 and store.storage.head(layout.blob_key(sha(orphan))) is None


def test_gc_is_one_at_a_time(store):
    from casstore.errors import LeaseHeld
    from casstore.services.lease import lease

    with lease(store.db, "gc"):
        try:
            store.gc.run(actor="test")
            raise AssertionError("a second gc ran beside the first")
        except LeaseHeld as exc:
            assert "already running" in exc.detail
    assert store.gc.run(actor="test").blobs_removed == 0  # released afterwards


def test_lost_object_is_reported_then_repaired_by_the_next_upload(server, store, settings):
    data = os.urandom(4000)
    pkg = make(server, {"evidence.bin": data}, retention_class="raw-evidence")
    os.remove(os.path.join(store.storage.root, layout.blob_key(sha(data))))  # a disk lost it
    out = cli(settings, "verify")
    assert out.returncode == 1 and f"blob-missing\t{sha(data)}" in out.stdout
    # the store no longer claims to have it, so a producer re-sends it instead of attaching
    assert store.missing_blobs([sha(data)]) == [sha(data)]
    other = server.create()["id"]
    attach = server.http.post(f"{server.url}/v1/packages/{other}/attach",
                              json={"files": [{"path": "x", "sha256": sha(data)}]}).json()
    assert attach["missing"] == [sha(data)]
    assert server.put(other, "x", data).status_code == 201
    assert server.get(pkg, "evidence.bin").content == data
    assert cli(settings, "verify", "--deep").returncode == 0


def test_deep_verify_finds_corruption_and_resumes_oldest_first(server, store, settings):
    files = {f"f{i}": os.urandom(64 * 1024) for i in range(40)}
    pkg = make(server, files, retention_class="raw-evidence")
    def never_verified() -> int:
        with store.db.engine.connect() as conn:
            return conn.execute(text("SELECT COUNT(*) FROM blob WHERE verified_at IS NULL")).scalar()

    runs, rehashed = 0, 0
    while never_verified():  # each run has no time at all: it re-hashes one blob and stops
        report = store.verify.run(deep=True, max_duration=0.0)
        runs += 1
        rehashed += report.blobs_rehashed
        assert report.blobs_rehashed >= 1 and report.ok and not report.complete
        assert runs < 200
    assert rehashed == 41  # 40 files and the manifest: each once, the never-verified first, no repeats
    assert store.verify.run(deep=True).complete
    victim = sha(files["f7"])
    with open(os.path.join(store.storage.root, layout.blob_key(victim)), "r+b") as f:
        f.write(b"\0\0\0\0")  # same size, other bytes: only a re-hash can tell
    assert cli(settings, "verify").returncode == 0
    deep = cli(settings, "verify", "--deep")
    assert deep.returncode == 1 and f"corrupt\t{victim}" in deep.stdout
    assert server.put(server.create()["id"], "fix", files["f7"]).status_code == 201  # the next upload repairs it
    assert server.get(pkg, "f7").content == files["f7"]
    assert cli(settings, "verify", "--deep").returncode == 0


def test_verify_reports_refcount_drift_and_stale_staging(server, store, settings):
    pkg = make(server, {"a": b"a"}, retention_class="raw-evidence")
    with store.db.engine.begin() as conn:
        conn.execute(text("UPDATE blob SET refcount = refcount + 1 WHERE sha256 = :s"), {"s": sha(b"a")})
    out = cli(settings, "verify")
    assert out.returncode == 1 and f"refcount\t{sha(b'a')}" in out.stdout
    with store.db.engine.begin() as conn:
        conn.execute(text("UPDATE blob SET refcount = refcount - 1 WHERE sha256 = :s"), {"s": sha(b"a")})
    stale = "staging/01AAAAAAAAAAAAAAAAAAAAAAAA"  # a ULID from 1970: an upload that died long ago
    store.storage.put_stream(stale, [b"partial"])
    out = cli(settings, "verify")
    assert out.returncode == 1 and f"staging-object\t{stale}" in out.stdout
    fixed = cli(settings, "verify", "--repair-staging", "1h")
    assert fixed.returncode == 0 and f"removed\t{stale}" in fixed.stdout
    assert server.get(pkg, "a").content == b"a"
