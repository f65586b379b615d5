"""Every command and request the docs show, checked against what is implemented.

- Blocks that can run here (a local server and a fresh store) run exactly as written, read from
  the doc, and each test pins what the block does (a hold visible over HTTP, an expiry moved, a
  token that authenticates until revoked, ...). The blocks of README.md's quick start,
  docs/consumers.md, docs/ingestion.md and docs/statehub.md run in their own test_docs_* modules.
- Every other shell block is listed in ``NOT_RUNNABLE`` with the reason (Ceph, a production host,
  the whole suite...); a new block fails ``test_every_shell_block_is_run_or_listed`` until it is
  classified.
- Whatever runs or not: every ``artifact-store ...`` line must parse with the real command parser
  (a block's lines completely, with argparse itself; a synopsis in prose, its subcommands and
  options), every request (METHOD /path?query) must be an operation of the served OpenAPI
  document (pages and the document itself: a route of the app), every ARTIFACT_STORE_* / AWS_*
  variable must be one the code reads, and every script or benchmark a command names must exist
  and take the options shown.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import json
import re
import shutil
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qsl

import pytest

from artifact_store.cli import build_parser
from casstore.config import Settings
from casstore.store import Store
from tests.helpers import (
    DOCS,
    ROOT,
    S3_SERVERS,
    LiveServer,
    assert_problem,
    bearer,
    doc_blocks,
    documented_commands,
    documented_requests,
    documented_variables,
    inline_code,
    run_doc_block,
    shell_commands,
)

README, DOC = ROOT / "README.md", ROOT / "docs"
RETENTION, SECURITY = DOC / "retention.md", DOC / "security.md"
OPERATIONS, CEPH = DOC / "operations.md", DOC / "ceph.md"

# Marked blocks and the test module that runs each (as written, against a live server).
RUN_BY = {
    ("README.md", "quickstart"): "test_docs_readme.py",
    ("consumers.md", "consumer-archive"): "test_docs_consumers.py",
    ("consumers.md", "consumer-commands"): "test_docs_consumers.py",
    ("ingestion.md", "curl-flow"): "test_docs_curl_flow.py",
    ("statehub.md", "statehub-resolve"): "test_docs_statehub.py",
    ("retention.md", "retention-classes"): "test_docs_commands.py",
    ("retention.md", "retention-extend"): "test_docs_commands.py",
    ("retention.md", "holds"): "test_docs_commands.py",
    ("retention.md", "events"): "test_docs_commands.py",
    ("retention.md", "eligibility"): "test_docs_commands.py",
    ("retention.md", "delete"): "test_docs_commands.py",
    ("retention.md", "gc"): "test_docs_commands.py",
    ("retention.md", "verify"): "test_docs_commands.py",
    ("security.md", "token-create"): "test_docs_commands.py",
    ("security.md", "token-revoke"): "test_docs_commands.py",
    ("operations.md", "cron"): "test_docs_commands.py",
    ("ceph.md", "probe"): "test_docs_commands.py",
    ("operations.md", "nginx-conf"): "test_nginx.py",
}

# Shell blocks that cannot run here, by doc and first line, with why. Their commands, requests and
# variables are still checked by the tests below.
NOT_RUNNABLE = {
    ("README.md", "scripts/serve"): "serves on port 8080 and keeps running; scripts/test runs the whole suite",
    ("README.md", "export ARTIFACT_STORE_DATABASE_URL"): "production: PostgreSQL on db, Ceph RGW at rgw.internal, "
                                                         "binds 0.0.0.0:8080",
    ("handoff.md", "scripts/serve"): "serves on 8080; scripts/test and .venv/bin/pytest run the whole suite; "
                                     "RUN_DIR, PKG and DEST are placeholders",
    ("ingestion.md", "export ARTIFACT_STORE_URL"): "a store at store.example and a token file in /run/secrets",
    ("ingestion.md", "artifact-store token create"): "the same command as security.md's token-create block",
    ("operations.md", "scripts/serve"): "binds 0.0.0.0:8080 on a production host",
    ("operations.md", "export ARTIFACT_STORE_DATABASE_URL"): "production: PostgreSQL at db.internal, Ceph RGW",
    ("ceph.md", "export ARTIFACT_STORE_STORAGE_URL"): "settings of a production RGW at rgw.example.internal",
    ("ceph.md", "curl -s https://artifact-store.internal"): "a production host; the answer's shape is checked by "
                                                           "test_the_health_answer_shown_in_ceph_md",
    ("ceph.md", "scripts/ceph-rgw up /tmp/rgw"): "starts Ceph (scripts/test does, for the RGW tests) and a benchmark",
}

# Spans that look like a command and are not one.
NOT_COMMANDS = {"artifact-store chunk v1"}  # design.md: the BLAKE3 derive-key context of chunk ids

# Routes of the app that are not API operations (pages, the OpenAPI document and its UI), so not in it.
NOT_API = {"/", "/openapi.json", "/docs", "/static/{filename}", "/docs/assets/{filename}"}


needs_curl = pytest.mark.skipif(not shutil.which("curl"), reason="curl is needed (scripts/test installs it when root)")


def doc_ids(docs):
    return [d.name for d in docs]


# ---------------------------------------------------------------- the inventory

def test_every_shell_block_is_run_or_listed():
    unlisted, run, listed = [], set(), set()
    for doc in DOCS:
        for block in doc_blocks(doc):
            if block.name:
                assert (doc.name, block.name) in RUN_BY, f"{block}: marked, but no test is named in RUN_BY"
                run.add((doc.name, block.name))
            elif block.lang in ("sh", "bash", "shell"):
                first = block.text.lstrip().splitlines()[0]
                key = next((k for k in NOT_RUNNABLE if k[0] == doc.name and first.startswith(k[1])), None)
                if key is None:
                    unlisted.append(f"{block}: {first}")
                listed.add(key)
    assert unlisted == [], "shell blocks neither run by a test nor listed in NOT_RUNNABLE with a reason"
    assert run == set(RUN_BY), f"RUN_BY names blocks the docs no longer have: {set(RUN_BY) - run}"
    assert listed - {None} == set(NOT_RUNNABLE), f"stale NOT_RUNNABLE rows: {set(NOT_RUNNABLE) - listed}"
    for (doc, name), module in RUN_BY.items():
        assert f'"{name}"' in (ROOT / "tests" / module).read_text(), f"{module} does not run {doc}'s {name} block"


# ---------------------------------------------------------------- commands

PARSER = build_parser()


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    """A parser's commands: the one subparsers action it has, if any."""
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for action in parser._actions for o in action.option_strings}


class _Refused(Exception):
    """What argparse would print before exiting with status 2."""


def _parse(words: list[str], literal: bool) -> str | None:
    """Why the command's parser would not take this command line (None: it would). A literal line
    goes through the parser whole (unknown options, missing or extra arguments, wrong types,
    missing required options); a synopsis must name existing subcommands and options."""
    cmd, names, rest = PARSER, ["artifact-store"], words[1:]
    while (subs := _subcommands(cmd)) and rest:
        word = rest[0] if literal else rest[0].strip("[]()")
        if word not in subs.choices:
            break
        cmd, names, rest = subs.choices[word], [*names, word], rest[1:]
    if subs := _subcommands(cmd):
        unknown = rest[0] if rest and (literal or re.fullmatch(r"[a-z][a-z-]*", rest[0])) else None
        if cmd is PARSER or unknown:
            return f"no such command: {' '.join([*names, unknown or ''])}"
        if literal and cmd.get_default("func") is None:
            return f"{' '.join(names)} needs a subcommand"
        if literal:
            return None
    if literal:
        def refuse(message: str):
            raise _Refused(message)

        cmd.error = refuse  # this parser object is the test's own (PARSER is built here)
        try:
            cmd.parse_args(list(rest))
        except _Refused as exc:
            return str(exc)
        finally:
            del cmd.error
        return None
    shown = {part.split("=")[0] for word in rest for part in re.split(r"[\[\]()|]", word) if part.startswith("--")}
    options = _options(cmd)
    return f"{' '.join(names)} has no option {sorted(shown - options)}" if shown - options else None


@pytest.mark.parametrize("doc", DOCS, ids=doc_ids(DOCS))
def test_every_command_line_parses(doc):
    wrong = []
    for where, words, literal in documented_commands(doc, subcommands=frozenset(_subcommands(PARSER).choices)):
        if " ".join(words) not in NOT_COMMANDS:
            problem = _parse(words, literal)
            if problem:
                wrong.append(f"{where}: {' '.join(words)}: {problem}")
    assert wrong == []


# Options named alone in prose that belong to another program (checked where it is ours).
OTHER_OPTIONS = {"--data-binary": "curl, in README.md's quick start",
                 "--auth": "bench/ingest_api.py and bench/ingest_cli.py"}


def _all_options(parser: argparse.ArgumentParser) -> set[str]:
    subs = _subcommands(parser)
    return _options(parser).union(*(_all_options(p) for p in (subs.choices.values() if subs else ())))


@pytest.mark.parametrize("doc", DOCS, ids=doc_ids(DOCS))
def test_every_option_named_alone_exists(doc):
    """``--option`` spans in prose (``--repack-grace``, ``--jobs N``) name an option of some command."""
    known = _all_options(PARSER)
    for name in ("ingest_api.py", "ingest_cli.py"):
        assert '"--auth"' in (ROOT / "bench" / name).read_text()
    shown = {span.split()[0] for span in inline_code(doc) if span.startswith("--")}
    assert sorted(shown - known - set(OTHER_OPTIONS)) == []

def test_the_parser_refuses_what_the_command_refuses():
    """The check above can fail: a bogus option, a missing required option, an unknown command."""
    assert _parse(["artifact-store", "gc", "--json"], True) is None
    assert _parse(["artifact-store", "gc", "--bogus"], True) == "unrecognized arguments: --bogus"
    assert _parse(["artifact-store", "hold", "add", "pkg_x"], True) == \
        "the following arguments are required: --reason"
    assert _parse(["artifact-store", "ingest", "run", "--jobs", "0"], True) == \
        "argument --jobs: 0 is not in the range 1<=x<=64"
    assert _parse(["artifact-store", "tokens", "list"], True) == "no such command: artifact-store tokens"
    assert _parse(["artifact-store", "verify", "[--deep]", "[--fast]"], False) == \
        "artifact-store verify has no option ['--fast']"
    assert _parse(["artifact-store", "token", "creat"], False) == "no such command: artifact-store token creat"


@pytest.mark.parametrize("doc", DOCS, ids=doc_ids(DOCS))
def test_every_script_and_benchmark_named_exists_with_the_options_shown(doc):
    """scripts/..., python bench/..., python -m MODULE and pytest tests/... in blocks and prose: the
    file or module is there and (for benchmarks) every --option shown is one it defines."""
    texts = [b.text for b in doc_blocks(doc) if b.lang in ("sh", "bash", "shell", "")] + inline_code(doc)
    wrong = []
    for words in (w for text in texts for w in shell_commands(text)):
        args = words[1:] if words[0] in ("python", "python3", "pytest", ".venv/bin/pytest", "bash") else words
        if words[0] in ("python", "python3") and words[1:2] == ["-m"] and importlib.util.find_spec(words[2]) is None:
            wrong.append(f"{' '.join(words)}: no module {words[2]}")
        for i, word in enumerate(args):
            if not re.match(r"^(scripts|bench|tests|\.ci)/[\w./-]+$", word):
                continue
            path = ROOT / word
            if not path.is_file():
                wrong.append(f"{' '.join(words)}: no file {word}")
            elif word.endswith(".py") and word.startswith("bench/"):
                source = path.read_text()
                shown = [o.strip("[]()").split("=")[0] for o in args[i + 1:]]
                wrong += [f"{' '.join(words)}: {word} has no option {o}" for o in shown
                          if o.startswith("--") and f'"{o}"' not in source]
    assert wrong == []


# ---------------------------------------------------------------- requests

def _segments(path: str) -> list[str]:
    path = re.sub(r"\$\([^)]*\)|\$\{\w+\}|\$\w+|\{[^}]*\}", "{}", path)
    return path.strip("/").split("/") if path.strip("/") else []


def _matches(template: str, path: str) -> bool:
    """Does a served route (``{name}`` parameters; ``{logical_path}`` takes the rest) match a
    documented path (``{x}``, ``$VAR``, ``$(...)`` stand for a value)? A documented placeholder
    only matches a parameter, a documented literal a parameter or the same literal."""
    want, have = _segments(template), _segments(path)
    for i, seg in enumerate(want):
        if i >= len(have):
            return False
        if seg == "{logical_path}":
            return True
        if not (seg.startswith("{") or seg == have[i]):
            return False
    return len(want) == len(have)


@pytest.fixture
def served(server):
    """The served OpenAPI document's operations and the app's other routes."""
    document = server.http.get(f"{server.url}/openapi.json").json()
    rules = {(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", r.rule), m) for r in server.app.url_map.iter_rules()
             for m in r.methods}
    return document["paths"], rules


@pytest.mark.parametrize("doc", DOCS, ids=doc_ids(DOCS))
def test_every_request_is_served(doc, served):
    paths, rules = served
    wrong = []
    for where, method, shown in documented_requests(doc):
        path, _, query = shown.replace("[", "").replace("]", "").partition("?")
        operation = "get" if method == "HEAD" else method.lower()  # HEAD is answered for every GET
        routes = [t for t in paths if _matches(t, path) and operation in paths[t]]
        if not routes:
            if not any(r in NOT_API and (r, method) in rules for r in {t for t, _ in rules if _matches(t, path)}):
                wrong.append(f"{where}: {method} {path} is not an operation of /openapi.json")
            continue
        known = {p["name"] for p in paths[routes[0]][operation].get("parameters", []) if p["in"] == "query"}
        unknown = {name for name, _ in parse_qsl(query, keep_blank_values=True)} - known
        if unknown:
            wrong.append(f"{where}: {method} {routes[0]} takes no query parameter {sorted(unknown)}")
    assert wrong == []


def test_the_route_check_can_fail(served):
    paths, _ = served
    assert any(_matches(t, "/v1/packages/$PKG/holds/$HOLD") for t in paths)
    assert not any(_matches(t, "/v1/packages/{id}/hold") for t in paths)
    assert [t for t in paths if _matches(t, "/v1/blobs/{sha256}")] == ["/v1/blobs/{sha256}"]
    assert "post" not in paths["/v1/packages/{package_id}/manifest"]


# ---------------------------------------------------------------- environment variables

def variables_the_code_reads() -> set[str]:
    """What Settings.from_env asks its environment for (recorded), what the shell (artifact_store/:
    the CLI, the producer client) names as a whole string, and the test harness's variables
    (tests/helpers.py, scripts/test)."""
    asked = set()

    class Recording(dict):
        def get(self, key, default=None):
            asked.add(key)
            return default

    Settings.from_env(Recording())
    for path in [*(ROOT / "artifact_store").rglob("*.py"), ROOT / "tests" / "helpers.py"]:
        asked |= {node.value for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Constant)
                  and isinstance(node.value, str) and re.fullmatch(r"ARTIFACT_STORE_[A-Z0-9_]+", node.value)}
    for server in S3_SERVERS.values():
        asked |= {f"ARTIFACT_STORE_TEST_{server.name.upper()}_{s}"
                  for s in ("ENDPOINT", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY", "BUCKET")}
    asked |= set(re.findall(r"\$\{?(ARTIFACT_STORE_\w+)", (ROOT / "scripts" / "test").read_text()))
    return asked


@pytest.mark.parametrize("doc", DOCS, ids=doc_ids(DOCS))
def test_every_variable_named_is_read(doc):
    known = variables_the_code_reads()
    unknown = [name for name in documented_variables(doc)
               if not (name in known or (name.endswith("_") and any(k.startswith(name) for k in known)))]
    assert unknown == []


def test_the_variable_check_knows_what_is_read():
    known = variables_the_code_reads()
    assert {"ARTIFACT_STORE_DATA_DIR", "ARTIFACT_STORE_S3_SECRET_ACCESS_KEY_FILE", "AWS_SESSION_TOKEN",
            "ARTIFACT_STORE_URL", "ARTIFACT_STORE_TOKEN_FILE", "ARTIFACT_STORE_TEST_RGW_ENDPOINT"} <= known
    assert "ARTIFACT_STORE_S3_BUCKET" not in known and "AWS_PROFILE" not in known


# ---------------------------------------------------------------- the blocks that run

@pytest.fixture
def shell_env(server, settings) -> dict:
    """What a block's commands need: the service's URL, and the database and backend the server uses."""
    return {"URL": server.url, "ARTIFACT_STORE_DATA_DIR": settings.data_dir,
            "ARTIFACT_STORE_DATABASE_URL": settings.database_url, "ARTIFACT_STORE_STORAGE_URL": settings.storage_url}


def finalized(server, retention_class: str = "raw-evidence", files: dict | None = None) -> str:
    pkg = server.create(retention_class=retention_class)["id"]
    for path, data in (files or {"raw/a.log": pkg.encode()}).items():
        assert server.put(pkg, path, data).status_code == 201
    assert server.http.post(f"{server.url}/v1/packages/{pkg}/finalize").status_code == 200
    return pkg


def run(doc: Path, name: str, tmp_path: Path, env: dict) -> tuple[list[str], str]:
    """Run a marked block (bash -eu -o pipefail): it must succeed; its stdout lines and stderr."""
    proc = run_doc_block(doc, name, tmp_path, env, strict=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines(), proc.stderr


def get(server, path: str, **kwargs):
    answer = server.http.get(f"{server.url}{path}", **kwargs)
    assert answer.status_code == 200, answer.text
    return answer.json()


@needs_curl
def test_retention_classes_block(server, shell_env, tmp_path):
    lines, _ = run(RETENTION, "retention-classes", tmp_path, shell_env)
    assert [line.split()[0] for line in lines[:5]] == ["transient", "raw-evidence", "summary-evidence",
                                                       "release-evidence", "permanent-record"]
    assert lines[5:7] == ["transient: 3 days", "release-evidence: never expires"]
    served = {c["name"]: c["days"] for c in json.loads(lines[7])["items"]}
    assert served == {"transient": 3, "raw-evidence": 90, "summary-evidence": 365, "release-evidence": None,
                      "permanent-record": None}
    events = get(server, "/v1/audit", params={"action": "retention_class.updated"})["items"]
    assert [(e["details"]["reason"], e["actor"].startswith("cli:")) for e in events] == [
        ("disk pressure", True), ("policy 2027", True)]


@needs_curl
def test_retention_extend_and_events_blocks(server, shell_env, tmp_path):
    pkg = finalized(server)
    before = datetime.fromisoformat(get(server, f"/v1/packages/{pkg}/retention")["expires_at"])
    lines, _ = run(RETENTION, "retention-extend", tmp_path, {**shell_env, "PKG": pkg})
    assert datetime.fromisoformat(json.loads(lines[0])["expires_at"]) == before + timedelta(days=30)
    assert json.loads(lines[1])["expires_at"] == "2031-01-01T00:00:00.000000Z"
    assert get(server, f"/v1/packages/{pkg}/retention")["expires_at"] == "2031-01-01T00:00:00.000000Z"

    lines, _ = run(RETENTION, "events", tmp_path, {**shell_env, "PKG": pkg})
    actions = [e.get("action") for e in json.loads(lines[0])["items"] if e["kind"] == "audit"]
    assert actions[-2:] == ["retention.extended", "retention.extended"]
    audit = json.loads(lines[1])["items"]
    assert [(e["actor"], e["action"], e["package_id"]) for e in audit] == [("alice", "retention.extended", pkg)]


@needs_curl
def test_holds_block(server, shell_env, tmp_path):
    pkg = finalized(server)
    lines, _ = run(RETENTION, "holds", tmp_path, {**shell_env, "PKG": pkg})
    listed, status, released, added, released_cli = map(json.loads, lines)
    assert [(h["reason"], h["placed_by"], h["released_at"]) for h in listed["items"]] == [
        ("legal hold, case 42", "counsel", None)]
    assert status["eligible"] is False and status["not_eligible_because"][0].startswith("held by hold_")
    assert released["release_reason"] == "case closed" and released["released_at"]
    assert added["reason"] == "legal hold, case 42" and added["placed_by"].startswith("cli:")
    assert released_cli["reason"] == "second opinion" and released_cli["release_reason"] == "case closed"
    holds = get(server, f"/v1/packages/{pkg}/holds")["items"]
    assert [(h["reason"], h["released_at"] is None) for h in holds] == [
        ("legal hold, case 42", False), ("legal hold, case 42", True), ("second opinion", False)]
    assert holds[1]["id"] == added["id"]


@needs_curl
def test_eligibility_block(server, store, shell_env, tmp_path):
    store.retention.set_class_days("transient", 0, actor="test", reason="eligible at once")
    eligible = finalized(server, "transient")
    finalized(server, "permanent-record")
    held = finalized(server, "transient")
    store.retention.place_hold(held, actor="test", reason="kept")
    lines, _ = run(RETENTION, "eligibility", tmp_path, shell_env)
    assert lines[0].endswith(": 1 package(s)") and lines[2].startswith(eligible)
    report = json.loads(lines[4])
    assert report["as_of"] == "2030-03-01T00:00:00.000000Z"
    assert [p["package_id"] for p in report["packages"]] == [eligible]
    assert report["reclaimable_bytes"] == len(eligible) and report["shared_bytes"] == 0  # its file; manifests stay
    assert [p["package_id"] for p in json.loads(lines[5])["packages"]] == [eligible]


@needs_curl
def test_delete_and_gc_blocks(server, store, shell_env, tmp_path):
    store.retention.set_class_days("transient", 0, actor="test", reason="eligible at once")
    kept = finalized(server, files={"shared.log": b"shared\n"})
    pkg = finalized(server, "transient", {"shared.log": b"shared\n", "own.log": b"pkg\n"})
    other = finalized(server, "transient", {"own.log": b"other\n"})
    lines, _ = run(RETENTION, "delete", tmp_path, {**shell_env, "PKG": pkg, "OTHER": other})
    assert lines[0] == f"{pkg} deleted; run `artifact-store gc` to free blobs nothing else holds"
    assert json.loads(lines[1])["status"] == "deleted"
    for deleted in (pkg, other):
        assert get(server, f"/v1/packages/{deleted}")["status"] == "deleted"
        assert_problem(server.get(deleted, "own.log"), 410)

    lines, _ = run(RETENTION, "gc", tmp_path, shell_env)
    assert lines[0].startswith("removed 2 blob(s), 10 B; ")  # own.log of both (4 + 6 bytes); manifests stay
    assert json.loads(lines[1])["blobs_removed"] == 0
    assert server.get(kept, "shared.log").content == b"shared\n"
    assert server.http.get(f"{server.url}/v1/packages/{pkg}/manifest").status_code == 200


def test_verify_block(server, store, shell_env, tmp_path):
    pkg = finalized(server, files={"raw/a.log": b"verified\n"})
    _, stderr = run(RETENTION, "verify", tmp_path, shell_env)
    assert stderr.count("0 finding(s)") == 3
    key = store.storage.root + "/" + next(i.key for i in store.storage.list("blobs/"))
    Path(key).unlink()  # any blob: verify must report it and exit 1
    proc = run_doc_block(RETENTION, "verify", tmp_path, shell_env, strict=True)
    assert proc.returncode == 1
    assert proc.stdout.startswith("blob-missing\t")
    assert get(server, f"/v1/packages/{pkg}")["status"] == "finalized"


def test_cron_block_of_operations(server, store, shell_env, tmp_path):
    store.retention.set_class_days("transient", 0, actor="test", reason="eligible at once")
    pkg = finalized(server, "transient", {"own.log": b"cron\n"})
    lines, _ = run(OPERATIONS, "cron", tmp_path, {**shell_env, "PKG": pkg})
    assert lines[0].endswith(": 1 package(s)") and lines[2].startswith(pkg)
    assert lines[-2] == f"{pkg} deleted; run `artifact-store gc` to free blobs nothing else holds"
    assert lines[-1].startswith("removed 1 blob(s), 5 B; ")
    assert get(server, f"/v1/packages/{pkg}")["status"] == "deleted"


@pytest.fixture
def auth_server(settings):
    store = Store(dataclasses.replace(settings, auth="on"))
    live = LiveServer(store)
    yield live
    live.close()
    store.close()


def test_token_blocks(auth_server, settings, tmp_path):
    env = {"ARTIFACT_STORE_DATA_DIR": settings.data_dir, "ARTIFACT_STORE_DATABASE_URL": settings.database_url}
    lines, _ = run(SECURITY, "token-create", tmp_path, env)
    created, listed = json.loads(lines[0]), json.loads(lines[1])
    assert (created["name"], created["role"], created["producers"]) == ("ci-runner-7", "producer", ["guide-board"])
    assert re.fullmatch(r"as_[A-Za-z0-9_-]{43}", created["token"])
    expires = datetime.fromisoformat(created["expires_at"])
    assert abs(expires - datetime.now(timezone.utc) - timedelta(days=365)) < timedelta(minutes=5)
    assert listed == {k: v for k, v in created.items() if k != "token"} and len(lines) == 2

    url, http = auth_server.url, auth_server.http
    assert_problem(http.get(f"{url}/v1/packages"), 401)
    assert http.get(f"{url}/v1/packages", headers=bearer(created["token"])).status_code == 200
    made = http.post(f"{url}/v1/packages", json={"producer": "guide-board"}, headers=bearer(created["token"]))
    assert made.status_code == 201 and made.json()["producer"] == "guide-board"
    assert_problem(http.post(f"{url}/v1/packages", json={"producer": "other"}, headers=bearer(created["token"])),
                   403)

    lines, _ = run(SECURITY, "token-revoke", tmp_path, {**env, "TOKEN_ID": created["id"]})
    assert json.loads(lines[0])["revoked_at"]
    refused = assert_problem(http.get(f"{url}/v1/packages", headers=bearer(created["token"])), 401)
    assert refused["reason"] == "revoked"


def test_probe_block_of_ceph(settings, tmp_path):
    env = {"ARTIFACT_STORE_DATA_DIR": settings.data_dir, "ARTIFACT_STORE_STORAGE_URL": settings.storage_url}
    proc = run_doc_block(CEPH, "probe", tmp_path, env, strict=True)
    assert proc.returncode == 0, proc.stderr
    assert ast.literal_eval(proc.stdout.strip()) == {"conditional_create": True, "copy_if_not_exists": True,
                                                    "put_if_absent": "conditional", "copy_if_absent": "conditional"}


def test_the_health_answer_shown_in_ceph_md(server):
    """ceph.md shows `/v1/health | jq .storage` on RGW: the same fields as served here (``notes``
    appears only where the probe saw a capability fail)."""
    shown = json.loads(next(b.text for b in doc_blocks(CEPH) if b.lang == "json"))
    storage = get(server, "/v1/health")["storage"]
    assert set(shown) == set(storage)
    assert set(shown["capabilities"]) - {"notes"} == set(storage["capabilities"])


def test_ingest_output_shown_in_ingestion_md(server, tmp_path):
    """The one JSON line of `artifact-store ingest` has exactly the fields docs/ingestion.md shows."""
    import subprocess

    shown = json.loads(next(b.text for b in doc_blocks(DOC / "ingestion.md") if b.lang == "json"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text('{"schema": "guide-board.run/v1", "run_id": "doc-output"}')
    proc = subprocess.run([sys.executable, "-m", "artifact_store.cli", "ingest", str(run_dir), "--url", server.url,
                           "--no-cache", "--quiet"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert list(json.loads(proc.stdout)) == list(shown)



def test_download_output_shown_in_consumers_md(server, tmp_path):
    """The one JSON line of `artifact-store download` has exactly the fields docs/consumers.md shows."""
    import subprocess

    shown = json.loads(next(b.text for b in doc_blocks(DOC / "consumers.md") if b.lang == "json"))
    pkg = finalized(server)
    proc = subprocess.run([sys.executable, "-m", "artifact_store.cli", "download", pkg, str(tmp_path / "out"),
                           "--url", server.url], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert list(json.loads(proc.stdout)) == list(shown)


def test_metric_names_shown_in_security_md_are_served(server):
    text = server.http.get(f"{server.url}/metrics").text
    doc = SECURITY.read_text()
    names = set(re.findall(r"`(artifact_store_[a-z_]+)", doc))
    names |= {"artifact_store_http" + suffix for suffix in re.findall(r"`(_[a-z_]+_total)`", doc)}
    assert len(names) == 6
    assert sorted(n for n in names if not re.search(rf"\b{n}\b", text)) == []
