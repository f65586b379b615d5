"""Pages for people: server-rendered HTML, no JavaScript.

``/`` lists recent packages (filtered by run id, profiles, producer, status);
``GET /v1/packages/<id>`` answers a browser (Accept: text/html) with the
package's page instead of its JSON (api/packages.py asks ``wants_html``, so
the page passes through the same view, and the same access rule, as the JSON): metadata, retention, holds, events, and
its files with sizes, digests and download links that work for any name
(every link is built by api/links.py, percent-encoded). Every other client
keeps getting JSON from the same URL, the one Statehub records.
"""

from __future__ import annotations

from flask import Blueprint, Response, render_template, request
from marshmallow import EXCLUDE, ValidationError

from casstore.errors import InvalidInput

from . import context, links
from .schemas import PackageQuery

bp = Blueprint("pages", __name__, template_folder="templates")

PACKAGE_ENDPOINT = "packages.PackageItem"
PAGE_SIZE = 50
FILES_PAGE = 1000
PAGE_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; connect-src 'self'"
FILTERS = ("run_id", "target_profile", "assessment_profile", "producer", "status")


def wants_html() -> bool:
    """True when the client prefers HTML to JSON (a browser), False for */* (curl, libraries)."""
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


@bp.route("/")
def index():
    """Recent packages, newest first, with filters."""
    try:
        query = PackageQuery(unknown=EXCLUDE).load({k: v for k, v in request.args.items() if v})
    except ValidationError as exc:
        raise InvalidInput(f"bad filter: {exc.messages}") from exc
    query["limit"] = min(query["limit"], PAGE_SIZE)
    limit, cursor = query.pop("limit"), query.pop("cursor", None)
    page = context.store().packages.list(query, cursor=cursor, limit=limit)
    filters = {k: request.args.get(k, "") for k in FILTERS}
    return _html(render_template("index.html", page=page, filters=filters, links=links,
                                 next_query={**{k: v for k, v in filters.items() if v}, "cursor": page.next_cursor}))


def package_page(package_id: str) -> Response:
    store = context.store()
    package = store.packages.get(package_id)
    files = store.files.list(package_id, cursor=request.args.get("cursor") or None, limit=FILES_PAGE)
    return _html(render_template(
        "package.html", package=package, files=files, links=links,
        retention=store.retention.status(package_id), holds=store.retention.holds(package_id),
        events=store.retention.events(package_id)))


def _html(body: str) -> Response:
    response = Response(body, mimetype="text/html")
    response.headers["Vary"] = "Accept"
    # No script runs on these pages; a file served by the store never runs with their origin either.
    response.headers["Content-Security-Policy"] = PAGE_POLICY
    return response


def _vary(response: Response) -> Response:
    if request.endpoint == PACKAGE_ENDPOINT:
        response.vary.add("Accept")
    return response


def size(n: int | None) -> str:
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


def when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else ""


def register(app) -> None:
    app.register_blueprint(bp)
    app.after_request(_vary)
    app.jinja_env.filters["size"] = size
    app.jinja_env.filters["when"] = when
