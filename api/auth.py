"""Who may call what: one table of (method, route) -> what the request needs, applied once.

``authorize`` runs before every request (a Flask before_request hook). It finds the
row of the matched route in ``POLICY``; a route that has no row needs an
operator token (fail closed), and ``tests/test_auth.py`` fails until the row is
added. Adding an endpoint means adding a row here (and to docs/security.md).

Roles (casstore.models.Role): reader < producer < operator; ``metrics`` is a
scrape token that reads /metrics and nothing else. A producer token carries
producer names: it may create packages only for those names, and write only
to packages whose producer is one of them.

Whether tokens are needed at all (``AuthConfig``): ARTIFACT_STORE_AUTH=on or
off; unset, they are needed unless the service binds loopback addresses only
(the embedded single-user default). off on a non-loopback address is refused
at start-up (``resolve`` raises ``StartupRefused``).
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass
from enum import Enum

from flask import current_app, g, request

from casstore import auditlog as audit
from casstore.config import Settings
from casstore.errors import Forbidden, Unauthenticated
from casstore.models import Role
from casstore.services.tokens import Principal

from . import metrics, problems

log = logging.getLogger(__name__)


class Need(Enum):
    """What a request must present. Every row of POLICY is one of these."""

    PUBLIC = "anyone"
    ANONYMOUS_READ = "reader; anonymous too with ANONYMOUS_READ"
    READ = "reader"
    PRODUCE = "producer"
    PRODUCE_OWN_NAME = "producer, for its own producer names"
    PRODUCE_OWN_PACKAGE = "producer, for its own producers' packages"
    OPERATE = "operator"
    SCRAPE = "operator or metrics"


# (method, route) -> need. Routes are Flask rules with the converters taken out ("{package_id}").
# HEAD and OPTIONS use the GET row of their route.
POLICY: dict[tuple[str, str], Need] = {
    ("GET", "/v1/health"): Need.PUBLIC,  # status only, unless authenticated (api/health.py)
    ("GET", "/openapi.json"): Need.PUBLIC,
    ("GET", "/docs"): Need.PUBLIC,
    ("GET", "/static/{filename}"): Need.PUBLIC,
    ("GET", "/docs/assets/{filename}"): Need.PUBLIC,
    ("GET", "/metrics"): Need.SCRAPE,
    # packages, manifests, files: what a Statehub link points at
    ("GET", "/v1/packages"): Need.ANONYMOUS_READ,
    ("GET", "/v1/packages/{package_id}"): Need.ANONYMOUS_READ,
    ("GET", "/v1/packages/{package_id}/manifest"): Need.ANONYMOUS_READ,
    ("GET", "/v1/packages/{package_id}/files"): Need.ANONYMOUS_READ,
    ("GET", "/v1/packages/{package_id}/files/{logical_path}"): Need.ANONYMOUS_READ,
    ("GET", "/v1/packages/{package_id}/archive"): Need.ANONYMOUS_READ,
    ("GET", "/"): Need.ANONYMOUS_READ,  # the HTML list of packages
    # the rest of what can be read: readers (tokens) only
    ("GET", "/v1/packages/{package_id}/retention"): Need.READ,
    ("GET", "/v1/packages/{package_id}/holds"): Need.READ,
    ("GET", "/v1/packages/{package_id}/events"): Need.READ,
    ("GET", "/v1/audit"): Need.READ,
    ("GET", "/v1/eligibility"): Need.READ,
    ("GET", "/v1/retention-classes"): Need.READ,
    ("GET", "/v1/blobs/{sha256}"): Need.READ,  # which packages hold these bytes: not for anonymous clients
    # ingestion
    ("POST", "/v1/packages"): Need.PRODUCE_OWN_NAME,
    ("POST", "/v1/blobs/missing"): Need.PRODUCE,
    ("POST", "/v1/chunks/missing"): Need.PRODUCE,
    ("POST", "/v1/packages/{package_id}/chunked/{logical_path}"): Need.PRODUCE_OWN_PACKAGE,
    ("PUT", "/v1/packages/{package_id}/files/{logical_path}"): Need.PRODUCE_OWN_PACKAGE,
    ("POST", "/v1/packages/{package_id}/tar"): Need.PRODUCE_OWN_PACKAGE,
    ("POST", "/v1/packages/{package_id}/attach"): Need.PRODUCE_OWN_PACKAGE,
    ("POST", "/v1/packages/{package_id}/finalize"): Need.PRODUCE_OWN_PACKAGE,
    # retention and deletion
    ("POST", "/v1/packages/{package_id}/retention/extend"): Need.OPERATE,
    ("POST", "/v1/packages/{package_id}/holds"): Need.OPERATE,
    ("DELETE", "/v1/packages/{package_id}/holds/{hold_id}"): Need.OPERATE,
    ("DELETE", "/v1/packages/{package_id}"): Need.OPERATE,
    # tokens
    ("GET", "/v1/tokens"): Need.OPERATE,
    ("POST", "/v1/tokens"): Need.OPERATE,
    ("DELETE", "/v1/tokens/{token_id}"): Need.OPERATE,
}

RANK = {Role.READER: 1, Role.PRODUCER: 2, Role.OPERATOR: 3, Role.METRICS: 0}
MINIMUM = {Need.READ: Role.READER, Need.ANONYMOUS_READ: Role.READER, Need.PRODUCE: Role.PRODUCER,
           Need.PRODUCE_OWN_NAME: Role.PRODUCER, Need.PRODUCE_OWN_PACKAGE: Role.PRODUCER,
           Need.OPERATE: Role.OPERATOR}
_CONVERTER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def route_of(rule: str) -> str:
    """'/v1/packages/<string:package_id>' -> '/v1/packages/{package_id}' (the OpenAPI form)."""
    return _CONVERTER.sub(r"{\1}", rule)


def need_of(method: str, route: str) -> Need:
    if method in ("HEAD", "OPTIONS"):
        method = "GET"
    need = POLICY.get((method, route))
    if need is None:  # not in the table: operators only (fail closed)
        log.warning("no access rule for %s %s: operators only", method, route)
        return Need.OPERATE
    return need


def allows(principal: Principal, need: Need) -> bool:
    """The role check (producer names are checked separately, against the request)."""
    if need is Need.PUBLIC:
        return True
    if need is Need.SCRAPE:
        return principal.role in (Role.OPERATOR, Role.METRICS)
    return RANK[principal.role] >= RANK[MINIMUM[need]]


# ---------------------------------------------------------------- the bind rules

class StartupRefused(Exception):
    """The settings would serve the store open to the network; the message is one line."""


@dataclass(frozen=True)
class AuthConfig:
    required: bool
    anonymous_read: bool
    why: str


def is_loopback(host: str) -> bool:
    """True only for addresses that cannot be reached from another machine."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def resolve(settings: Settings) -> AuthConfig:
    loopback = is_loopback(settings.host)
    if settings.auth == "off" and not loopback:
        raise StartupRefused(f"refusing to start: ARTIFACT_STORE_AUTH=off with the non-loopback bind address "
                             f"{settings.host!r} would let anyone on the network change the store")
    if settings.auth == "on":
        return AuthConfig(True, settings.anonymous_read, "ARTIFACT_STORE_AUTH=on")
    if settings.auth == "off":
        return AuthConfig(False, True, "ARTIFACT_STORE_AUTH=off on a loopback address")
    if loopback:
        return AuthConfig(False, True, f"bound to the loopback address {settings.host} only "
                                       "(set ARTIFACT_STORE_AUTH=on to require tokens)")
    return AuthConfig(True, settings.anonymous_read, f"bound to {settings.host}")


def describe(config: AuthConfig) -> str:
    if not config.required:
        return f"authentication is OFF: {config.why}; every client may do everything"
    anonymous = "anonymous clients may read packages, manifests and files" if config.anonymous_read \
        else "anonymous clients may read nothing but /v1/health"
    return f"authentication is on ({config.why}): bearer tokens required; {anonymous}"


# ---------------------------------------------------------------- the hook

def install(app, api, config: AuthConfig) -> None:
    """Run ``authorize`` before every request, and describe bearer tokens in the OpenAPI document."""
    app.extensions["artifact_store.auth"] = config
    app.before_request(authorize)
    app.teardown_request(_unbind)
    api.spec.components.security_scheme("bearer", {
        "type": "http", "scheme": "bearer",
        "description": "artifact-store token (as_...); required unless the service binds loopback only. "
                       "Which role each operation needs: docs/security.md"})
    api.spec.options["security"] = [{"bearer": []}, {}]  # {}: health, the spec, and the loopback default


def config() -> AuthConfig:
    return current_app.extensions["artifact_store.auth"]


def principal() -> Principal | None:
    return g.get("principal")


def authorize():
    """Authenticate and authorize the request before its view runs; a problem answer if refused."""
    g.principal = None
    rule = request.url_rule
    route = route_of(rule.rule) if rule is not None else None
    request.environ["artifact_store.route"] = route
    if rule is None:
        return None  # 404 / 405: no view runs
    auth = config()
    note = request.headers.get("X-Actor")
    if not auth.required:
        g.audit_binding = audit.bind_request(request_id=request_id())
        return None
    need = need_of(request.method, route)
    header = request.headers.get("Authorization")
    if header is None and (need is Need.PUBLIC or (need is Need.ANONYMOUS_READ and auth.anonymous_read)):
        return None
    try:
        who = current_app.extensions["casstore"].tokens.authenticate(header)
        g.principal = who
        request.environ["artifact_store.token_name"] = who.name
        if not allows(who, need):
            raise Forbidden(f"a {who.role.value} token may not {request.method} {route} "
                            f"(it needs: {need.value})", reason="role", role=who.role.value)
        if who.role is Role.PRODUCER:
            _check_producer(who, need)
    except (Unauthenticated, Forbidden) as exc:
        return deny(exc, route)
    g.audit_binding = audit.bind_request(request_id=request_id(), token_id=who.token_id,
                                         note=note[:256] if note else None)
    return None


def _check_producer(who: Principal, need: Need) -> None:
    """A producer token writes only for the producer names it carries."""
    if need is Need.PRODUCE_OWN_NAME:
        body = request.get_json(force=True, silent=True)  # whatever the Content-Type: never less than the view
        producer = body.get("producer") if isinstance(body, dict) else None
        if isinstance(producer, str) and producer not in who.producers:
            raise Forbidden(f"this token may not create packages for producer {producer[:128]!r}",
                            reason="producer", producers=sorted(who.producers))
    elif need is Need.PRODUCE_OWN_PACKAGE:
        package_id = (request.view_args or {}).get("package_id", "")
        producer = current_app.extensions["casstore"].tokens.producer_of(package_id)
        if producer is not None and producer not in who.producers:  # None: the view answers 404
            raise Forbidden(f"package {package_id} belongs to producer {producer!r}, not to this token",
                            reason="producer", producers=sorted(who.producers))


def deny(exc: Unauthenticated | Forbidden, route: str):
    """The 401/403 problem answer; counted, logged and audited (within the audit budget)."""
    status = problems.status_of(exc)
    reason = exc.extra.get("reason", "unknown")
    metrics.AUTH_FAILURES.labels(status=str(status), reason=reason).inc()
    who = g.get("principal")
    package_id = (request.view_args or {}).get("package_id")
    try:
        current_app.extensions["casstore"].tokens.record_denial(
            actor=who.name if who else "anonymous", status=status, reason=reason,
            package_id=package_id if isinstance(package_id, str) and len(package_id) <= 40 else None,
            method=request.method, route=route, request_id=request_id(),
            token_id=who.token_id if who else exc.extra.get("token_id"), remote_addr=request.remote_addr)
    except Exception:  # the refusal stands even if its audit row cannot be written
        log.exception("could not audit a refused request")
    headers = {}
    if status == 401:
        error = "" if reason == "missing" else ', error="invalid_token"'
        headers["WWW-Authenticate"] = f'Bearer realm="artifact-store"{error}'
    return problems.handle_casstore_error(exc, headers=headers)


def request_id() -> str | None:
    return request.environ.get("artifact_store.request_id")


def _unbind(_exc=None) -> None:
    binding = g.pop("audit_binding", None)
    if binding is not None:
        audit.unbind_request(binding)

