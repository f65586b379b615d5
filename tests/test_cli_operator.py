"""Operator commands in process (tests.helpers.invoke): they name the database and storage, refuse one
that is missing or unmigrated without creating anything, and hold / extend / create classes, audited."""

from __future__ import annotations

import json
import os
import sqlite3
import uuid

import pytest

from tests.helpers import PG_URL, invoke


def run(env: dict, *args: str):
    return invoke(list(args), env)


@pytest.fixture
def env(settings) -> dict:
    return {"ARTIFACT_STORE_DATA_DIR": settings.data_dir, "ARTIFACT_STORE_DATABASE_URL": settings.database_url,
            "ARTIFACT_STORE_STORAGE_URL": settings.storage_url}


@pytest.mark.parametrize("command", [["verify"], ["gc"], ["eligibility"], ["retention-classes"],
                                     ["hold", "add", "pkg_x", "--reason", "r"], ["delete", "pkg_x", "--reason", "r"]])
def test_a_command_run_where_there_is_no_database_refuses_and_creates_nothing(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ARTIFACT_STORE_")}
    monkeypatch.setattr(os, "environ", clean)
    result = run({}, *command)
    assert result.returncode == 2
    assert result.stderr == f"error: no database at {tmp_path}/var/artifact-store.db (set ARTIFACT_STORE_DATA_DIR " \
                            f"or ARTIFACT_STORE_DATABASE_URL; `artifact-store db upgrade` creates one)\n"
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_a_database_without_the_schema_is_refused(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE unrelated (x)")
    result = run({"ARTIFACT_STORE_DATABASE_URL": f"sqlite:///{path}", "ARTIFACT_STORE_DATA_DIR": str(tmp_path)},
                 "verify")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "has no artifact-store schema" in result.stderr and str(path) in result.stderr
    with sqlite3.connect(path) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["unrelated"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


def test_a_database_that_cannot_be_opened_is_refused_with_the_password_hidden(tmp_path):
    url = "postgresql+psycopg://evidence:s3cret@127.0.0.1:9/none"
    result = run({"ARTIFACT_STORE_DATABASE_URL": url, "ARTIFACT_STORE_DATA_DIR": str(tmp_path)}, "eligibility")
    assert result.returncode == 2
    assert result.stderr.startswith("error: cannot open postgresql+psycopg://evidence:***@127.0.0.1:9/none: ")
    assert "s3cret" not in result.output and result.stderr.count("\n") == 1


@pytest.mark.skipif(not PG_URL, reason="needs PostgreSQL (ARTIFACT_STORE_TEST_DATABASE_URL)")
def test_a_postgresql_database_that_does_not_exist_is_refused(tmp_path):
    url = PG_URL.rsplit("/", 1)[0] + f"/missing_{uuid.uuid4().hex[:8]}"
    result = run({"ARTIFACT_STORE_DATABASE_URL": url, "ARTIFACT_STORE_DATA_DIR": str(tmp_path)}, "verify")
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_commands_name_the_database_and_storage_they_act_on(env, settings):
    result = run(env, "verify")
    assert result.returncode == 0, result.output
    assert result.stderr.splitlines()[0] == f"artifact-store: database {settings.database_url}; " \
                                            f"storage {settings.storage_url}"


def test_db_upgrade_is_what_creates_the_schema(tmp_path):
    env = {"ARTIFACT_STORE_DATA_DIR": str(tmp_path / "new")}
    assert run(env, "verify").returncode == 2
    result = run(env, "db", "upgrade")
    assert result.returncode == 0
    assert result.stderr == f"database sqlite:///{tmp_path}/new/artifact-store.db is at the newest schema\n"
    verified = run(env, "verify")
    assert verified.returncode == 0 and "0 finding(s)" in verified.stderr


def events(store, package_id):
    return [(e["kind"], e["action"], e["actor"].startswith("cli:"), e.get("reason"))
            for e in store.retention.events(package_id)]


def test_hold_add_and_release_are_audited_like_their_http_twins(env, store):
    pkg = store.packages.create(producer="p", actor="t")
    placed = run(env, "hold", "add", pkg.id, "--reason", "legal hold 42")
    assert placed.returncode == 0, placed.output
    hold = json.loads(placed.stdout)
    assert hold["package_id"] == pkg.id and hold["reason"] == "legal hold 42" and hold["released_at"] is None
    assert store.retention.status(pkg.id)["eligible"] is False
    missing_reason = run(env, "hold", "release", pkg.id, hold["id"])
    assert missing_reason.returncode == 2 and "--reason" in missing_reason.stderr
    released = run(env, "hold", "release", pkg.id, hold["id"], "--reason", "case closed")
    assert released.returncode == 0
    assert json.loads(released.stdout)["release_reason"] == "case closed"
    again = run(env, "hold", "release", pkg.id, hold["id"], "--reason", "twice")
    assert again.returncode == 2 and again.stderr.splitlines()[-1].startswith(f"error: hold {hold['id']} was already")
    assert [e for e in events(store, pkg.id) if e[1] != "package.created"] == [
        ("retention", "hold_placed", True, "legal hold 42"), ("audit", "retention.hold_placed", True, None),
        ("retention", "hold_released", True, "case closed"), ("audit", "retention.hold_released", True, None)]
    unknown = run(env, "hold", "add", "pkg_nope", "--reason", "r")
    assert unknown.returncode == 2 and "no package 'pkg_nope'" in unknown.stderr


def test_retention_extend_by_days_until_or_class_never_shorter(env, store):
    pkg = store.packages.create(producer="p", actor="t", retention_class="transient")
    before = store.packages.get(pkg.id).expires_at
    by_days = run(env, "retention", "extend", pkg.id, "--days", "10", "--reason", "audit")
    assert by_days.returncode == 0, by_days.output
    after = store.packages.get(pkg.id).expires_at
    assert (after - before).days == 10
    assert json.loads(by_days.stdout)["retention_class"] == "transient"
    shorter = run(env, "retention", "extend", pkg.id, "--until", "2020-01-01T00:00:00Z", "--reason", "no")
    assert shorter.returncode == 2 and "can only be extended" in shorter.stderr
    assert store.packages.get(pkg.id).expires_at == after
    until = run(env, "retention", "extend", pkg.id, "--until", "2040-01-01T00:00:00Z", "--reason", "until")
    assert json.loads(until.stdout)["expires_at"] == "2040-01-01T00:00:00.000000Z"
    to_class = run(env, "retention", "extend", pkg.id, "--class", "permanent-record", "--reason", "keep")
    assert json.loads(to_class.stdout)["expires_at"] is None
    both = run(env, "retention", "extend", pkg.id, "--days", "1", "--class", "transient", "--reason", "x")
    assert both.returncode == 2 and "exactly one of" in both.stderr
    assert [e[1:] for e in events(store, pkg.id) if e[0] == "retention"] == [
        ("extended", True, "audit"), ("extended", True, "until"), ("extended", True, "keep")]


def test_retention_classes_create(env, store):
    created = run(env, "retention-classes", "create", "pilot-evidence", "--days", "30", "--reason", "pilot",
                  "--description", "pilot runs")
    assert created.returncode == 0 and created.stdout == "pilot-evidence: 30 days\n"
    assert run(env, "retention-classes", "create", "forever-2", "--never").stdout == "forever-2: never expires\n"
    listed = run(env, "retention-classes").stdout
    assert "pilot-evidence" in listed and "30 days" in listed and "pilot runs" in listed
    dup = run(env, "retention-classes", "create", "pilot-evidence", "--days", "1")
    assert dup.returncode == 2 and "already exists" in dup.stderr
    bad = run(env, "retention-classes", "create", "Bad Name", "--days", "1")
    assert bad.returncode == 2 and "retention class name" in bad.stderr
    pkg = store.packages.create(producer="p", actor="t", retention_class="pilot-evidence")
    assert (pkg.expires_at - pkg.created_at).days == 30
    feed = store.audit.feed(action="retention_class.created")
    assert [(e.subject, e.details["after"], e.details["reason"]) for e in feed.items] == [
        ("pilot-evidence", {"days": 30}, "pilot"), ("forever-2", {"days": None}, "")]
