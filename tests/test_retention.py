"""Retention classes, expiry, extension, holds, events, audit feed - through the API and the CLI."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tests.helpers import assert_problem, cli

ROOT = Path(__file__).resolve().parents[1]


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def retention(server, pkg):
    return server.http.get(f"{server.url}/v1/packages/{pkg}/retention").json()


def extend(server, pkg, **body):
    return server.http.post(f"{server.url}/v1/packages/{pkg}/retention/extend", json=body,
                            headers={"X-Actor": "alice"})


def events(server, pkg):
    return server.http.get(f"{server.url}/v1/packages/{pkg}/events").json()["items"]


def test_classes_durations_come_from_the_database(server, settings):
    listed = {c["name"]: c["days"] for c in server.http.get(f"{server.url}/v1/retention-classes").json()["items"]}
    assert listed == {"transient": 7, "raw-evidence": 90, "summary-evidence": 365, "release-evidence": 2555,
                      "permanent-record": None}
    out = cli(settings, "retention-classes")
    assert out.returncode == 0 and "raw-evidence" in out.stdout and "never expires" in out.stdout
    before = server.create(retention_class="transient")
    changed = cli(settings, "retention-classes", "set", "transient", "--days", "0", "--reason", "tests")
    assert changed.returncode == 0, changed.stderr
    after = server.create(retention_class="transient")
    assert parse(after["expires_at"]) == parse(after["created_at"])  # 0 days is allowed
    assert parse(before["expires_at"]) == parse(before["created_at"]) + timedelta(days=7)  # untouched
    audit = server.http.get(f"{server.url}/v1/audit", params={"action": "retention_class.updated"}).json()["items"]
    assert audit[0]["subject"] == "transient" and audit[0]["details"]["before"] == {"days": 7}
    assert audit[0]["details"]["after"] == {"days": 0} and audit[0]["actor"].startswith("cli:")
    assert cli(settings, "retention-classes", "set", "nope", "--days", "3").returncode == 2


def test_producer_default_and_store_default(server):
    assert server.create(producer="guide-board")["retention_class"] == "raw-evidence"
    assert server.create(producer="someone-else")["retention_class"] == "raw-evidence"  # the store's default
    assert server.create(producer="guide-board", retention_class="permanent-record")["expires_at"] is None


def test_expiry_recomputed_at_finalization_never_earlier(server):
    pkg = server.create(retention_class="summary-evidence")
    server.put(pkg["id"], "a", b"a")
    done = server.http.post(f"{server.url}/v1/packages/{pkg['id']}/finalize").json()
    assert parse(done["expires_at"]) == parse(done["finalized_at"]) + timedelta(days=365)
    assert parse(done["expires_at"]) >= parse(pkg["expires_at"])


def test_extend_by_days_to_a_date_and_by_class(server):
    pkg = server.create(retention_class="transient")["id"]
    start = parse(retention(server, pkg)["expires_at"])
    r = extend(server, pkg, days=10, reason="review running late")
    assert r.status_code == 200 and parse(r.json()["expires_at"]) == start + timedelta(days=10)
    target = datetime(2031, 1, 1, tzinfo=timezone.utc)
    assert parse(extend(server, pkg, expires_at="2031-01-01T00:00:00Z", reason="audit").json()["expires_at"]) == target
    moved = extend(server, pkg, retention_class="permanent-record", reason="release evidence").json()
    assert moved["retention_class"] == "permanent-record" and moved["expires_at"] is None
    kinds = [(e["kind"], e["action"]) for e in events(server, pkg) if e["kind"] == "retention"]
    assert kinds == [("retention", "extended")] * 3
    last = [e for e in events(server, pkg) if e["kind"] == "retention"][-1]
    assert last["before"]["retention_class"] == "transient" and last["after"] == {
        "retention_class": "permanent-record", "expires_at": None}
    assert last["reason"] == "release evidence" and last["actor"] == "alice"


@pytest.mark.parametrize("body", [
    {"expires_at": "2020-01-01T00:00:00Z"},
    {"retention_class": "transient"},
])
def test_shortening_is_409_and_changes_nothing(server, body):
    pkg = server.create(retention_class="raw-evidence")["id"]
    before, trail = retention(server, pkg), events(server, pkg)
    assert_problem(extend(server, pkg, reason="try", **body), 409)
    assert retention(server, pkg) == before and events(server, pkg) == trail


def test_extend_validation(server):
    pkg = server.create()["id"]
    for body in ({"reason": "none given"}, {"days": 3, "expires_at": "2031-01-01T00:00:00Z", "reason": "two"},
                 {"days": 0, "reason": "zero"}, {"days": 3}, {"retention_class": "nope", "reason": "x"}):
        assert_problem(extend(server, pkg, **body), 422)
    never = server.create(retention_class="permanent-record")["id"]
    assert_problem(extend(server, never, days=3, reason="x"), 409)
    assert_problem(extend(server, "pkg_NOPE", days=3, reason="x"), 404)


def test_database_refuses_shortening_and_event_edits(store, server):
    pkg = server.create()["id"]
    with pytest.raises(DBAPIError):
        with store.db.engine.begin() as conn:
            conn.execute(text("UPDATE package SET expires_at = '2001-01-01 00:00:00' WHERE id = :p"), {"p": pkg})
    with pytest.raises(DBAPIError):
        with store.db.engine.begin() as conn:
            conn.execute(text("UPDATE package SET expires_at = NULL WHERE id = :p AND 1 = 0"), {"p": pkg})
            conn.execute(text("UPDATE audit_event SET actor = 'mallory'"))
    with pytest.raises(DBAPIError):
        with store.db.engine.begin() as conn:
            conn.execute(text("DELETE FROM audit_event"))
    assert retention(server, pkg)["expires_at"] is not None


def test_holds_block_deletion_and_release_makes_eligible_again(server, settings):
    cli(settings, "retention-classes", "set", "transient", "--days", "0")
    pkg = server.create(retention_class="transient")["id"]
    assert retention(server, pkg)["eligible"] is True
    h1 = server.http.post(f"{server.url}/v1/packages/{pkg}/holds", json={"reason": "legal"},
                          headers={"X-Actor": "counsel"}).json()
    h2 = server.http.post(f"{server.url}/v1/packages/{pkg}/holds", json={"reason": "incident 42"}).json()
    assert h1["placed_by"] == "counsel" and h1["reason"] == "legal" and h1["placed_at"]
    state = retention(server, pkg)
    assert state["eligible"] is False and [h["id"] for h in state["holds"]] == [h1["id"], h2["id"]]
    assert any(h1["id"] in why for why in state["not_eligible_because"])
    assert pkg not in [p["package_id"] for p in server.http.get(f"{server.url}/v1/eligibility").json()["packages"]]
    body = assert_problem(server.http.delete(f"{server.url}/v1/packages/{pkg}", params={"reason": "cleanup"}), 409)
    assert h1["id"] in body["detail"]
    assert_problem(server.http.delete(f"{server.url}/v1/packages/{pkg}/holds/{h1['id']}"), 422)  # no reason
    released = server.http.delete(f"{server.url}/v1/packages/{pkg}/holds/{h1['id']}", params={"reason": "closed"})
    assert released.status_code == 200 and released.json()["release_reason"] == "closed"
    assert_problem(server.http.delete(f"{server.url}/v1/packages/{pkg}/holds/{h1['id']}",
                                      params={"reason": "again"}), 409)
    assert retention(server, pkg)["eligible"] is False  # h2 still holds it
    via_body = server.http.delete(f"{server.url}/v1/packages/{pkg}/holds/{h2['id']}", json={"reason": "done"})
    assert via_body.status_code == 200
    assert retention(server, pkg)["eligible"] is True
    listed = server.http.get(f"{server.url}/v1/packages/{pkg}/holds").json()["items"]
    assert all(h["released_at"] for h in listed) and len(listed) == 2
    trail = [e["action"] for e in events(server, pkg) if e["kind"] == "retention"]
    assert trail == ["hold_placed", "hold_placed", "hold_released", "hold_released"]
    assert_problem(server.http.post(f"{server.url}/v1/packages/{pkg}/holds", json={}), 422)


def test_events_oldest_first_with_retention_and_audit(server):
    pkg = server.create()["id"]
    server.put(pkg, "f", b"x")
    server.http.post(f"{server.url}/v1/packages/{pkg}/holds", json={"reason": "r"})
    server.http.post(f"{server.url}/v1/packages/{pkg}/finalize")
    trail = events(server, pkg)
    times = [e["at"] for e in trail]
    assert times == sorted(times)
    assert [e["action"] for e in trail if e["kind"] == "audit"] == [
        "package.created", "package.file_uploaded", "retention.hold_placed", "package.finalized"]


def test_audit_feed_filters_and_pages(server):
    a = server.http.post(f"{server.url}/v1/packages", json={"producer": "p"}, headers={"X-Actor": "alice"}).json()
    b = server.http.post(f"{server.url}/v1/packages", json={"producer": "p"}, headers={"X-Actor": "bob"}).json()
    url = f"{server.url}/v1/audit"
    assert [e["package_id"] for e in server.http.get(url, params={"actor": "bob"}).json()["items"]] == [b["id"]]
    assert [e["actor"] for e in server.http.get(url, params={"package_id": a["id"]}).json()["items"]] == ["alice"]
    assert len(server.http.get(url, params={"action": "package.created"}).json()["items"]) == 2
    assert server.http.get(url, params={"since": "2999-01-01T00:00:00Z"}).json()["items"] == []
    assert len(server.http.get(url, params={"until": "2999-01-01T00:00:00Z"}).json()["items"]) == 2
    first = server.http.get(url, params={"limit": 1}).json()
    second = server.http.get(url, params={"limit": 1, "cursor": first["next_cursor"]}).json()
    assert first["items"][0]["id"] < second["items"][0]["id"]
    assert_problem(server.http.get(url, params={"limit": 0}), 422)
    assert_problem(server.http.get(url, params={"since": "yesterday"}), 422)
