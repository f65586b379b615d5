"""The OpenAPI document the API serves at /openapi.json, and commits as docs/openapi.json.

flask-smorest builds it from the blueprints; ``document`` then adds, in one
place, the error answers every operation can give (all application/problem+json
with the Problem schema), by rule, so that an endpoint added later is
documented without doing anything:

* every operation: 503 (the database or the backend failed);
* with parameters or a body: 422 (validation);
* with a JSON body: 400 (malformed JSON) and 413 (over the body cap, api/guards.py);
* with {package_id} in its path: 404 and 410 (deleted package);
* every change (POST, PUT, DELETE): 507 (the database is full);
* CONFLICTS below: 409; file downloads: 304 and 416.

It also links the package a create answers to every operation on that package
(OpenAPI links), so a client generator - or schemathesis' stateful phase - can
follow an id from one call to the next.

Regenerate the committed copy after changing an endpoint::

    python -m api.openapi > docs/openapi.json
"""

from __future__ import annotations

import json
import sys

# Operations that can answer 409 Conflict (the state forbids the change).
CONFLICTS = {
    ("post", "/v1/packages"), ("post", "/v1/packages/{package_id}/finalize"),
    ("post", "/v1/packages/{package_id}/attach"), ("post", "/v1/packages/{package_id}/tar"),
    ("put", "/v1/packages/{package_id}/files/{logical_path}"), ("delete", "/v1/packages/{package_id}"),
    ("post", "/v1/packages/{package_id}/retention/extend"), ("post", "/v1/packages/{package_id}/holds"),
    ("delete", "/v1/packages/{package_id}/holds/{hold_id}"),
}
DOWNLOADS = {("get", "/v1/packages/{package_id}/files/{logical_path}")}
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
NEEDS_FINALIZED = ("/manifest", "/archive")  # not linked from a create: a created package has neither yet


def _response(status: int) -> dict:
    from http import HTTPStatus

    if status < 400:
        return {"description": HTTPStatus(status).phrase}
    return {"description": HTTPStatus(status).phrase,
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}


def _statuses(method: str, path: str, operation: dict, shared_params: list) -> set[int]:
    statuses = {503}
    body = operation.get("requestBody", {}).get("content", {})
    if operation.get("parameters") or shared_params or body:
        statuses.add(422)
    if "application/json" in body:
        statuses |= {400, 413}
    if "{package_id}" in path:
        statuses |= {404, 410}
    if method in ("post", "put", "delete", "patch"):
        statuses.add(507)
    if (method, path) in CONFLICTS:
        statuses.add(409)
    if (method, path) in DOWNLOADS:
        statuses |= {304, 416}
    return statuses


def _drop_nulls(node):
    """apispec writes "format": null for custom formats; a null keyword is not valid JSON Schema."""
    if isinstance(node, dict):
        return {k: _drop_nulls(v) for k, v in node.items() if not (k in ("format", "pattern") and v is None)}
    if isinstance(node, list):
        return [_drop_nulls(v) for v in node]
    return node


def document(api) -> dict:
    """The complete OpenAPI document of a flask-smorest Api (see the module doc)."""
    spec = _drop_nulls(api.spec.to_dict())
    for path, item in spec.get("paths", {}).items():
        shared = item.get("parameters", [])
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            for status in sorted(_statuses(method, path, operation, shared)):
                responses.setdefault(str(status), _response(status))
            operation["responses"] = dict(sorted(responses.items()))
    _link_created_package(spec)
    return spec


def _link_created_package(spec: dict) -> None:
    created = spec.get("paths", {}).get("/v1/packages", {}).get("post", {}).get("responses", {}).get("201")
    if created is None:
        return
    links = {}
    for path, item in spec["paths"].items():
        if not path.startswith("/v1/packages/{package_id}") or path.endswith(NEEDS_FINALIZED):
            continue
        for method in METHODS:
            if method in item:
                pointer = path.replace("~", "~0").replace("/", "~1")
                rest = path.replace("/v1/packages/{package_id}", "").replace("{", "").replace("}", "")
                name = (method + rest.replace("/", "_")).rstrip("_")
                links[name] = {"operationRef": f"#/paths/{pointer}/{method}",
                               "parameters": {"package_id": "$response.body#/id"}}
    created["links"] = links


def main() -> None:
    """Print the document of an app over a throwaway store (no database or backend of yours is touched)."""
    import shutil
    import tempfile

    from casstore.config import Settings

    from . import create_app

    data_dir = tempfile.mkdtemp(prefix="artifact-store-openapi-")
    try:
        app = create_app(Settings.from_env({"ARTIFACT_STORE_DATA_DIR": data_dir,
                                            "ARTIFACT_STORE_DATABASE_URL": f"sqlite:///{data_dir}/spec.db",
                                            "ARTIFACT_STORE_STORAGE_URL": "memory:///"}))
        with app.app_context():
            sys.stdout.write(json.dumps(document(app.extensions["openapi"]), indent=2) + "\n")
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
