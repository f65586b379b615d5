"""Every error answer is RFC 9457 application/problem+json, made here and only here.

casstore's exception hierarchy maps to statuses in one table; flask-smorest's
own errors (webargs validation, unknown routes, wrong methods) come through
``ProblemApi.handle_http_exception``.
"""

from __future__ import annotations

import json
import logging

from flask import Response, has_request_context, request
from flask_smorest import Api
from werkzeug.exceptions import HTTPException

from casstore import errors

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

# Most specific first: the first class an error is an instance of decides its status.
STATUS = (
    (errors.Gone, 410),
    (errors.NotFound, 404),
    (errors.IncompleteBody, 400),
    (errors.InvalidInput, 422),
    (errors.Conflict, 409),
    (errors.RangeNotSatisfiable, 416),
    (errors.Unauthenticated, 401),
    (errors.Forbidden, 403),
    (errors.StorageError, 503),
    (errors.DatabaseFull, 507),
    (errors.DatabaseUnavailable, 503),
)

# What a 5xx answer says instead of the error's detail (which names storage keys and OS errors).
PUBLIC_DETAIL = (
    (errors.StorageError, "the storage backend failed; try again later (the server log has the details)"),
    (errors.DatabaseFull, "the database has no room left; an operator must free or add space"),
    (errors.DatabaseUnavailable, "the database failed; try again later (the server log has the details)"),
)


def problem(status: int, title: str, detail: str, headers: dict | None = None, extra: dict | None = None) -> Response:
    """An RFC 9457 answer; ``extra`` members never override the standard ones."""
    body = {**(extra or {}), "type": "about:blank", "status": status, "title": title, "detail": detail}
    if has_request_context() and (request_id := request.environ.get("artifact_store.request_id")):
        body["request_id"] = request_id  # the X-Request-Id of the answer, to find its access-log line
    return Response(json.dumps(body, default=str), status=status, headers=headers, mimetype=PROBLEM_JSON)


def status_of(exc: errors.CasstoreError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def handle_casstore_error(exc: errors.CasstoreError, headers: dict | None = None) -> Response:
    status = status_of(exc)
    if status >= 500:
        log.error("%s %s: %s: %s", request.method, request.path, type(exc).__name__, exc.detail, exc_info=exc)
        detail = next((text for cls, text in PUBLIC_DETAIL if isinstance(exc, cls)), "the server failed")
        return problem(status, exc.title, detail, headers={"Retry-After": "30"} if status == 503 else None)
    headers = dict(headers or {})
    if isinstance(exc, errors.RangeNotSatisfiable) and "size" in exc.extra:
        headers["Content-Range"] = f"bytes */{exc.extra['size']}"
    return problem(status, exc.title, exc.detail, headers=headers, extra=exc.extra)


class ProblemApi(Api):
    """flask-smorest's Api, answering its own errors as problem+json - and documenting them so."""

    def _register_responses(self):
        """Every status's error response in the spec: the Problem schema as application/problem+json."""
        from http import HTTPStatus

        from .schemas import Problem

        for status in HTTPStatus:
            response = {"description": status.phrase}
            if status >= 400:
                response["content"] = {PROBLEM_JSON: {"schema": Problem}}
            self.spec.components.response(status.name, response, lazy=True)
        self.spec.components.response(
            self.DEFAULT_ERROR_RESPONSE_NAME,
            {"description": "an error (RFC 9457 problem details)", "content": {PROBLEM_JSON: {"schema": Problem}}},
            lazy=True)

    def _openapi_json(self):
        from .openapi import document

        return Response(json.dumps(document(self), indent=2), mimetype="application/json")

    def handle_http_exception(self, error: HTTPException):
        if error.code is None or error.code >= 500:
            log.error("unhandled error", exc_info=getattr(error, "original_exception", None) or error)
        extra = {}
        data = getattr(error, "data", None) or {}
        if "messages" in data:  # webargs validation errors: {location: {field: [messages]}}
            extra["errors"] = data["messages"]
        headers = dict(data.get("headers") or {})
        if error.code == 405 and error.valid_methods:
            headers["Allow"] = ", ".join(error.valid_methods)
        detail = data.get("message") or error.description or error.name
        if error.code is None or error.code >= 500:
            detail = "the server failed to handle the request (the server log has the details)"
        if extra.get("errors"):
            detail = "the request failed validation: " + json.dumps(extra["errors"], default=str)[:500]
        return problem(error.code or 500, error.name, detail, headers=headers, extra=extra)


def handle_client_timeout(exc: TimeoutError) -> Response:
    """The server gave up waiting for the client's body (serve --io-timeout): the client stalled."""
    log.info("%s %s: the request body stalled: %s", request.method, request.path, exc)
    return problem(408, "Request Timeout", "the request body stopped arriving; nothing was recorded",
                   headers={"Connection": "close"})


def register(app) -> None:
    app.register_error_handler(errors.CasstoreError, handle_casstore_error)
    app.register_error_handler(TimeoutError, handle_client_timeout)
