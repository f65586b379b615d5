"""The HTTP layer: ``create_app(settings)`` builds the Flask app over one Store.

api/ parses requests, calls one casstore service per view and serializes the
answer; it never touches the database or the backend itself.
"""

from __future__ import annotations

from flask import Flask
from werkzeug.routing import PathConverter

from casstore import chunking
from casstore.config import Settings
from casstore.paths import MAX_PATH_BYTES
from casstore.store import Store

from . import (
    archive,
    audit,
    auth,
    blob_lookup,
    blobs,
    chunks,
    docs_assets,
    eligibility,
    files,
    guards,
    health,
    metrics,
    packages,
    pages,
    problems,
    retention,
    retention_classes,
    schemas,
    tokens,
)
from .observe import Observe


class AnyPathConverter(PathConverter):
    """Like ``path`` but also matches '' and a leading '/', so bad paths get a 422, not a 404."""

    regex = r"[\s\S]*"  # '.' would stop at a newline; those must reach validation too
    part_isolating = False  # werkzeug would infer True from a regex without '/'


def create_app(settings: Settings | None = None, store: Store | None = None) -> Flask:
    """The app; raises auth.StartupRefused when the settings would serve the store open to the network."""
    settings = settings or (store.settings if store else Settings.from_env())
    access = auth.resolve(settings)
    app = Flask("artifact-store")
    app.config.update(
        API_TITLE="artifact-store",
        API_VERSION="v1",
        OPENAPI_VERSION="3.1.0",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL=docs_assets.url(settings),  # served by this app: /docs works offline
        MAX_FORM_MEMORY_SIZE=1 << 20,
    )
    app.json.sort_keys = False  # producer metadata comes back in the order it was given
    app.url_map.merge_slashes = False  # 'a//b' must reach validation, not be rewritten
    app.url_map.converters["anypath"] = AnyPathConverter
    app.extensions["casstore"] = store = store or Store(settings)
    store.capabilities  # probe the backend's conditional writes now, not on the first request
    chunking.require_compiled()  # large PUTs are cut here: no worker starts on the pure-Python chunker
    api = problems.ProblemApi(app, spec_kwargs={"info": {"description": DESCRIPTION}})
    api.register_converter(AnyPathConverter, lambda _converter: {
        "type": "string", "minLength": 1, "maxLength": MAX_PATH_BYTES, "pattern": schemas.PATH_PATTERN,
        "description": "the logical path, percent-encoded (all but '/'); at most 1024 UTF-8 bytes"})
    app.extensions["openapi"] = api
    problems.register(app)
    guards.install(app)
    auth.install(app, api, access)
    for module in (packages, files, archive, retention, blobs, blob_lookup, chunks, eligibility, audit,
                   retention_classes, health, metrics, tokens):
        api.register_blueprint(module.blp)
    pages.register(app)
    docs_assets.register(app)
    app.wsgi_app = Observe(app.wsgi_app)
    return app


DESCRIPTION = (
    "artifact-store keeps QA evidence: a producer registers a run directory as one package; "
    "file bytes are deduplicated into SHA-256 blobs; a finalized package has a canonical manifest "
    "whose SHA-256 is its manifest digest. Every error is application/problem+json (RFC 9457)."
)
