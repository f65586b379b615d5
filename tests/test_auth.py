"""Authentication and authorization through a real HTTP server with ARTIFACT_STORE_AUTH=on.

The table test sends every endpoint family's request with every kind of
client (no token, reader, producer for its own producer name and for
another's, operator, metrics scrape token) and pins the status each gets.
"""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from sqlalchemy import text

from api import auth, create_app
from casstore.models import utcnow
from casstore.store import Store
from tests.helpers import LiveServer, assert_problem, bearer, cli, make_tar, make_token, sha

CONTENT = b"hello evidence\n"
COLUMNS = ("anonymous", "reader", "producer", "producer_other", "operator", "metrics")
OK = "ok"


@pytest.fixture
def secured(settings):
    """A server with authentication on, its store, and one token per role."""
    store = Store(dataclasses.replace(settings, auth="on"))
    server = LiveServer(store)
    store.retention.set_class_days("transient", 0, actor="test")  # finalized test packages are eligible
    tokens = {"reader": make_token(store, "reader", "rita"),
              "producer": make_token(store, "producer", "ci-mine", producers=["mine"]),
              "operator": make_token(store, "operator", "olga"),
              "metrics": make_token(store, "metrics", "prometheus")}
    yield server, store, tokens
    server.close()
    store.close()


def new_package(store, producer: str, *, final: bool = False, hold: bool = False) -> dict:
    pkg = store.packages.create(producer=producer, actor="test", retention_class="transient")
    store.files.put(pkg.id, "a.txt", [CONTENT], actor="test")
    if final:
        store.packages.finalize(pkg.id, actor="test")
    target = {"id": pkg.id}
    if hold:
        target["hold"] = store.retention.place_hold(pkg.id, actor="test", reason="review").id
    return target


# need -> the answer of each column; OK means the endpoint's own success status.
EXPECTED = {
    auth.Need.PUBLIC: dict.fromkeys(COLUMNS, OK),
    auth.Need.SCRAPE: {"anonymous": 401, "reader": 403, "producer": 403, "producer_other": 403,
                       "operator": OK, "metrics": OK},
    auth.Need.ANONYMOUS_READ: {"anonymous": 401, "reader": OK, "producer": OK, "producer_other": OK,
                               "operator": OK, "metrics": 403},
    auth.Need.READ: {"anonymous": 401, "reader": OK, "producer": OK, "producer_other": OK,
                     "operator": OK, "metrics": 403},
    auth.Need.PRODUCE: {"anonymous": 401, "reader": 403, "producer": OK, "producer_other": OK,
                        "operator": OK, "metrics": 403},
    auth.Need.PRODUCE_OWN_NAME: {"anonymous": 401, "reader": 403, "producer": OK, "producer_other": 403,
                                 "operator": OK, "metrics": 403},
    auth.Need.PRODUCE_OWN_PACKAGE: {"anonymous": 401, "reader": 403, "producer": OK, "producer_other": 403,
                                    "operator": OK, "metrics": 403},
    auth.Need.OPERATE: {"anonymous": 401, "reader": 403, "producer": 403, "producer_other": 403,
                        "operator": OK, "metrics": 403},
}

Need = auth.Need
PUBLIC, SCRAPE, READ, OPERATE, PRODUCE = Need.PUBLIC, Need.SCRAPE, Need.READ, Need.OPERATE, Need.PRODUCE
ANONYMOUS_READ, PRODUCE_OWN_NAME, PRODUCE_OWN_PACKAGE = (Need.ANONYMOUS_READ, Need.PRODUCE_OWN_NAME,
                                                         Need.PRODUCE_OWN_PACKAGE)

# (method, route, what it needs (the roles table of docs/security.md), success status,
#  request maker(store, owner) -> (path, requests kwargs))
CASES = [
    ("GET", "/v1/health", PUBLIC, 200, lambda s, o: ("/v1/health", {})),
    ("GET", "/openapi.json", PUBLIC, 200, lambda s, o: ("/openapi.json", {})),
    ("GET", "/metrics", SCRAPE, 200, lambda s, o: ("/metrics", {})),
    ("GET", "/v1/packages", ANONYMOUS_READ, 200, lambda s, o: ("/v1/packages", {})),
    ("GET", "/v1/packages/{package_id}", ANONYMOUS_READ, 200,
     lambda s, o: (f"/v1/packages/{new_package(s, o, final=True)['id']}", {})),
    ("GET", "/v1/packages/{package_id}/manifest", ANONYMOUS_READ, 200,
     lambda s, o: (f"/v1/packages/{new_package(s, o, final=True)['id']}/manifest", {})),
    ("GET", "/v1/packages/{package_id}/files", ANONYMOUS_READ, 200,
     lambda s, o: (f"/v1/packages/{new_package(s, o, final=True)['id']}/files", {})),
    ("GET", "/v1/packages/{package_id}/files/{logical_path}", ANONYMOUS_READ, 200,
     lambda s, o: (f"/v1/packages/{new_package(s, o, final=True)['id']}/files/a.txt", {})),
    ("HEAD", "/v1/packages/{package_id}/files/{logical_path}", ANONYMOUS_READ, 200,
     lambda s, o: (f"/v1/packages/{new_package(s, o, final=True)['id']}/files/a.txt", {})),
    ("GET", "/v1/packages/{package_id}/retention", READ, 200,
     lambda s, o: (f"/v1/packages/{new_package(s, o)['id']}/retention", {})),
    ("GET", "/v1/packages/{package_id}/holds", READ, 200,
     lambda s, o: (f"/v1/packages/{new_package(s, o)['id']}/holds", {})),
    ("GET", "/v1/packages/{package_id}/events", READ, 200,
     lambda s, o: (f"/v1/packages/{new_package(s, o)['id']}/events", {})),
    ("GET", "/v1/audit", READ, 200, lambda s, o: ("/v1/audit", {})),
    ("GET", "/v1/eligibility", READ, 200, lambda s, o: ("/v1/eligibility", {})),
    ("GET", "/v1/retention-classes", READ, 200, lambda s, o: ("/v1/retention-classes", {})),
    ("POST", "/v1/packages", PRODUCE_OWN_NAME, 201, lambda s, o: ("/v1/packages", {"json": {"producer": o}})),
    ("POST", "/v1/blobs/missing", PRODUCE, 200, lambda s, o: ("/v1/blobs/missing", {"json": {"digests": [sha(b"x")]}})),
    ("POST", "/v1/chunks/missing", PRODUCE, 200,
     lambda s, o: ("/v1/chunks/missing", {"json": {"chunks": [sha(b"x")]}})),
    ("PUT", "/v1/packages/{package_id}/files/{logical_path}", PRODUCE_OWN_PACKAGE, 201,
     lambda s, o: (f"/v1/packages/{new_package(s, o)['id']}/files/b.txt", {"data": b"b"})),
    ("POST", "/v1/packages/{package_id}/tar", PRODUCE_OWN_PACKAGE, 201,
     lambda s, o: (f"/v1/packages/{new_package(s, o)['id']}/tar", {"data": make_tar({"t/1": b"1", "t/2": b"2"})})),
    ("POST", "/v1/packages/{package_id}/attach", PRODUCE_OWN_PACKAGE, 200,
     lambda s, o: (f"/v1/packages/{new_package(s, o)['id']}/attach",
                   {"json": {"files": [{"path": "c.txt", "sha256": sha(CONTENT)}]}})),
    ("POST", "/v1/packages/{package_id}/finalize", PRODUCE_OWN_PACKAGE, 200,
     lambda s, o: (f"/v1/packages/{new_package(s, o)['id']}/finalize", {})),
    ("POST", "/v1/packages/{package_id}/retention/extend", OPERATE, 200,
     lambda s, o: (f"/v1/packages/{new_package(s, o, final=True)['id']}/retention/extend",
                   {"json": {"days": 30, "reason": "audit"}})),
    ("POST", "/v1/packages/{package_id}/holds", OPERATE, 201,
     lambda s, o: (f"/v1/packages/{new_package(s, o)['id']}/holds", {"json": {"reason": "legal"}})),
    ("DELETE", "/v1/packages/{package_id}/holds/{hold_id}", OPERATE, 200,
     lambda s, o: (lambda p: (f"/v1/packages/{p['id']}/holds/{p['hold']}", {"params": {"reason": "done"}}))(
         new_package(s, o, hold=True))),
    ("DELETE", "/v1/packages/{package_id}", OPERATE, 200,
     lambda s, o: (f"/v1/packages/{new_package(s, o, final=True)['id']}", {"params": {"reason": "expired"}})),
    ("GET", "/v1/tokens", OPERATE, 200, lambda s, o: ("/v1/tokens", {})),
    ("POST", "/v1/tokens", OPERATE, 201,
     lambda s, o: ("/v1/tokens", {"json": {"name": "new", "role": "producer", "producers": [o]}})),
    ("DELETE", "/v1/tokens/{token_id}", OPERATE, 200,
     lambda s, o: (f"/v1/tokens/{s.tokens.create(name='old', role='reader', actor='test')[0].id}", {})),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]} {c[1]}" for c in CASES])
def test_every_role_against_every_endpoint(secured, case):
    server, store, tokens = secured
    method, route, need, success, make = case
    assert auth.need_of(method, route) is need
    got = {}
    for column in COLUMNS:
        token = tokens.get("producer" if column == "producer_other" else column)
        owner = "theirs" if column == "producer_other" else "mine"
        path, kwargs = make(store, owner)
        response = requests.request(method, server.url + path, headers=bearer(token), timeout=30, **kwargs)
        got[column] = OK if response.status_code == success else response.status_code
        if response.status_code in (401, 403) and method != "HEAD":  # a HEAD answer has no body
            assert_problem(response, response.status_code)
    assert got == EXPECTED[need]


def test_every_route_of_the_app_has_a_row(secured):
    server, _, _ = secured
    missing = []
    for rule in server.app.url_map.iter_rules():
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            if (method, auth.route_of(rule.rule)) not in auth.POLICY:
                missing.append(f"{method} {rule.rule}")
    assert missing == []


def test_a_route_without_a_row_needs_an_operator(settings):
    store = Store(dataclasses.replace(settings, auth="on"))
    app = create_app(store=store)
    app.add_url_rule("/v1/forgotten", "forgotten", lambda: "secret")
    client = app.test_client()
    reader, operator = make_token(store, "reader"), make_token(store, "operator")
    assert client.get("/v1/forgotten", headers=bearer(reader)).status_code == 403
    assert client.get("/v1/forgotten", headers=bearer(operator)).status_code == 200
    store.close()


def test_401_body_and_headers_and_its_audit(secured):
    server, store, tokens = secured
    missing = requests.post(f"{server.url}/v1/packages", json={"producer": "mine"})
    body = assert_problem(missing, 401)
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="artifact-store"'
    assert body["reason"] == "missing" and body["request_id"] == missing.headers["X-Request-Id"]
    unknown = requests.get(f"{server.url}/v1/audit", headers=bearer("as_" + "x" * 43))
    assert assert_problem(unknown, 401)["reason"] == "unknown"
    assert unknown.headers["WWW-Authenticate"] == 'Bearer realm="artifact-store", error="invalid_token"'
    malformed = requests.get(f"{server.url}/v1/audit", headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert assert_problem(malformed, 401)["reason"] == "malformed"
    denials = store.audit.feed(action="auth.denied").items
    assert [(e.actor, e.details["status"], e.details["outcome"], e.details["reason"], e.details["route"])
            for e in denials] == [("anonymous", 401, "unauthenticated", "missing", "/v1/packages"),
                                  ("anonymous", 401, "unauthenticated", "unknown", "/v1/audit"),
                                  ("anonymous", 401, "unauthenticated", "malformed", "/v1/audit")]
    assert denials[0].details["request_id"] == missing.headers["X-Request-Id"]


def test_403_body_names_the_reason_and_is_audited_with_the_token(secured):
    server, store, tokens = secured
    theirs = new_package(store, "theirs")
    response = requests.put(f"{server.url}/v1/packages/{theirs['id']}/files/x", data=b"x",
                            headers=bearer(tokens["producer"]))
    body = assert_problem(response, 403)
    assert body["reason"] == "producer" and "theirs" in body["detail"] and "WWW-Authenticate" not in response.headers
    hold = requests.post(f"{server.url}/v1/packages/{theirs['id']}/holds", json={"reason": "r"},
                         headers=bearer(tokens["producer"]))
    assert assert_problem(hold, 403)["reason"] == "role"
    denials = store.audit.feed(action="auth.denied").items
    assert [(e.actor, e.package_id, e.details["outcome"], e.details["reason"]) for e in denials] == [
        ("ci-mine", theirs["id"], "forbidden", "producer"), ("ci-mine", theirs["id"], "forbidden", "role")]
    assert store.files.list(theirs["id"]).items[0].path == "a.txt" and len(store.files.list(theirs["id"]).items) == 1


def test_expired_and_revoked_tokens_are_refused(secured):
    server, store, tokens = secured
    token, secret = store.tokens.create(name="short", role="reader", actor="test",
                                        expires_at=utcnow() + timedelta(hours=1))
    assert requests.get(f"{server.url}/v1/audit", headers=bearer(secret)).status_code == 200
    with store.db.engine.begin() as conn:  # an hour passes
        conn.execute(text("UPDATE api_token SET expires_at = :t WHERE id = :i"),
                     {"t": utcnow() - timedelta(seconds=1), "i": token.id})
    expired = requests.get(f"{server.url}/v1/audit", headers=bearer(secret))
    assert assert_problem(expired, 401)["reason"] == "expired"
    assert 'error="invalid_token"' in expired.headers["WWW-Authenticate"]

    operator = tokens["operator"]
    assert requests.get(f"{server.url}/v1/audit", headers=bearer(operator)).status_code == 200
    operator_id = next(t.id for t in store.tokens.list() if t.name == "olga")
    store.tokens.revoke(operator_id, actor="test")
    revoked = requests.get(f"{server.url}/v1/audit", headers=bearer(operator))
    assert assert_problem(revoked, 401)["reason"] == "revoked"


def test_the_audit_actor_is_the_token_and_x_actor_is_only_a_note(secured):
    server, store, tokens = secured
    created = requests.post(f"{server.url}/v1/packages", json={"producer": "mine"},
                            headers={**bearer(tokens["producer"]), "X-Actor": "cli:root@prod-host"})
    assert created.status_code == 201
    event = store.audit.feed(package_id=created.json()["id"]).items[0]
    assert event.actor == "ci-mine"
    request = event.details["request"]
    assert request["note"] == "cli:root@prod-host" and request["request_id"] == created.headers["X-Request-Id"]
    assert request["token_id"].startswith("tok_")


def test_anonymous_read_lets_people_follow_links_and_nothing_more(settings):
    store = Store(dataclasses.replace(settings, auth="on", anonymous_read=True))
    server = LiveServer(store)
    try:
        pkg = new_package(store, "mine", final=True)["id"]
        base = f"{server.url}/v1/packages/{pkg}"
        for url in (f"{server.url}/v1/packages", base, f"{base}/manifest", f"{base}/files", f"{base}/files/a.txt"):
            assert requests.get(url).status_code == 200, url
        assert requests.get(f"{base}/files/a.txt").content == CONTENT
        for url in (f"{server.url}/v1/audit", f"{base}/events", f"{server.url}/v1/eligibility",
                    f"{base}/retention", f"{server.url}/metrics"):
            assert_problem(requests.get(url), 401)
        assert_problem(requests.post(f"{server.url}/v1/packages", json={"producer": "mine"}), 401)
        assert_problem(requests.delete(base, params={"reason": "x"}), 401)
        assert_problem(requests.post(f"{base}/holds", json={"reason": "x"}), 401)
    finally:
        server.close()
        store.close()


def test_health_is_anonymous_with_status_only(secured):
    server, _, tokens = secured
    assert requests.get(f"{server.url}/v1/health").json() == {"status": "ok"}
    detailed = requests.get(f"{server.url}/v1/health", headers=bearer(tokens["reader"])).json()
    assert detailed["status"] == "ok" and detailed["database"]["status"] == "ok"


def test_auth_failures_are_audited_within_a_budget(secured):
    server, store, _ = secured
    store.tokens.denials.per_window = 5
    for _ in range(12):
        assert requests.get(f"{server.url}/v1/audit").status_code == 401
    assert len(store.audit.feed(action="auth.denied").items) == 5
    store.tokens.denials.window_s = 0  # the window ends: the next refusal is written with the count
    assert requests.get(f"{server.url}/v1/audit").status_code == 401
    rows = store.audit.feed(action="auth.denied").items
    assert len(rows) == 6 and rows[-1].details["suppressed_before"] == 7


def test_the_database_holds_no_token_secret(secured):
    server, store, tokens = secured
    secrets = list(tokens.values())
    assert all(re.fullmatch(r"as_[A-Za-z0-9_-]{43}", s) for s in secrets)
    dump = []
    with store.db.engine.connect() as conn:
        if store.db.is_sqlite:
            tables = [r[0] for r in conn.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))]
        else:
            tables = [r[0] for r in conn.execute(text(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"))]
        for table in tables:
            dump.extend(str(row) for row in conn.execute(text(f'SELECT * FROM "{table}"')))
    everything = "\n".join(dump)
    assert "api_token" in tables and len(store.tokens.list()) == 4
    for secret in secrets:
        assert secret not in everything and secret[3:] not in everything
    if store.db.is_sqlite:  # and not in the file's free pages either
        path = store.settings.database_url.split("///", 1)[1]
        store.db.engine.dispose()
        raw = b"".join(Path(p).read_bytes() for p in (path, path + "-wal") if Path(p).exists())
        assert all(s[3:].encode() not in raw for s in secrets)


def test_operators_manage_tokens_over_http(secured):
    server, store, tokens = secured
    operator = bearer(tokens["operator"])
    made = requests.post(f"{server.url}/v1/tokens", headers=operator,
                         json={"name": "ci-7", "role": "producer", "producers": ["mine"], "expires_in_days": 7})
    assert made.status_code == 201
    secret, token_id = made.json()["token"], made.json()["id"]
    assert made.json()["expires_at"] is not None and made.json()["created_by"] == "olga"
    assert requests.post(f"{server.url}/v1/packages", json={"producer": "mine"},
                         headers=bearer(secret)).status_code == 201
    listed = requests.get(f"{server.url}/v1/tokens", headers=operator).json()["items"]
    assert [t["name"] for t in listed] == ["rita", "ci-mine", "olga", "prometheus", "ci-7"]
    assert all("token" not in t for t in listed)
    revoked = requests.delete(f"{server.url}/v1/tokens/{token_id}", headers=operator)
    assert revoked.status_code == 200 and revoked.json()["revoked_by"] == "olga"
    assert_problem(requests.get(f"{server.url}/v1/packages", headers=bearer(secret)), 401)
    assert_problem(requests.delete(f"{server.url}/v1/tokens/tok_nope", headers=operator), 404)
    bad = requests.post(f"{server.url}/v1/tokens", headers=operator, json={"name": "x", "role": "reader",
                                                                          "producers": ["mine"]})
    assert assert_problem(bad, 422)["detail"] == "only producer tokens carry producer names"
    events = [(e.action, e.actor) for e in store.audit.feed(action="token.created").items[-1:]]
    assert events == [("token.created", "olga")]
    assert [(e.actor, e.subject) for e in store.audit.feed(action="token.revoked").items] == [("olga", token_id)]


def test_token_commands(settings):
    created = cli(settings, "token", "create", "--role", "producer", "--name", "ci-guide-board",
                  "--producer", "guide-board", "--expires-in", "30")
    assert created.returncode == 0, created.stderr
    line = json.loads(created.stdout)
    assert set(line) >= {"id", "name", "role", "token"} and line["role"] == "producer"
    assert line["token"].startswith("as_") and line["producers"] == ["guide-board"]
    listed = [json.loads(x) for x in cli(settings, "token", "list").stdout.splitlines()]
    assert [(t["id"], t["name"], t["revoked_at"]) for t in listed] == [(line["id"], "ci-guide-board", None)]
    assert all("token" not in t and "secret_sha256" not in t for t in listed)
    assert listed[0]["expires_at"] is not None and listed[0]["created_at"] is not None
    revoked = cli(settings, "token", "revoke", line["id"])
    assert revoked.returncode == 0 and json.loads(revoked.stdout)["revoked_at"] is not None
    bad = cli(settings, "token", "create", "--role", "producer", "--name", "cli:root@host", "--producer", "x")
    assert bad.returncode == 2 and "token name" in bad.stderr
    store = Store(settings)
    events = [(e.action, e.actor.startswith("cli:"), e.subject) for e in store.audit.feed().items]
    store.close()
    assert events == [("token.created", True, line["id"]), ("token.revoked", True, line["id"])]


@pytest.mark.parametrize("host, required", [
    ("127.0.0.1", False), ("127.0.0.2", False), ("::1", False), ("[::1]", False), ("localhost", False),
    ("0.0.0.0", True), ("::", True), ("10.1.2.3", True), ("store.internal", True)])
def test_auth_is_on_unless_bound_to_loopback_only(settings, host, required):
    assert auth.resolve(dataclasses.replace(settings, host=host)).required is required
    assert auth.resolve(dataclasses.replace(settings, host=host, auth="on")).required is True


def test_serve_refuses_auth_off_on_a_network_address(settings):
    env = {"ARTIFACT_STORE_DATA_DIR": settings.data_dir, "ARTIFACT_STORE_DATABASE_URL": settings.database_url,
           "ARTIFACT_STORE_AUTH": "off", "PATH": "/usr/bin:/bin"}
    refused = cli(env, "serve", "--host", "0.0.0.0", "--port", "1", timeout=60)
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0
    assert refused.stderr.startswith("error: refusing to start: ARTIFACT_STORE_AUTH=off")


def test_docs_security_lists_every_row_of_the_table():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "security.md").read_text()
    rows = set(re.findall(r"^\| `(\w+)` \| `([^`]+)` \| ([^|]+?) \|$", doc, re.M))
    assert rows == {(m, r, n.value) for (m, r), n in auth.POLICY.items()}
