"""Prometheus metrics: what the service counts, and GET /metrics to scrape them.

Under several gunicorn workers each worker counts in its own process, so
the numbers must be merged: prometheus-client's multiprocess mode does that
through files in PROMETHEUS_MULTIPROC_DIR, which ``artifact-store serve``
sets to a fresh temporary folder before any worker starts (it must be set
before prometheus_client is imported). Without it (one process: the tests'
in-process server) the default registry is served.

Labels stay few and bounded: ``route`` is the matched route template
("/v1/packages/{package_id}"), never a raw path; unmatched requests are
"unmatched"; an unusual method is "other".
"""

from __future__ import annotations

import os

from flask import Response
from flask.views import MethodView
from flask_smorest import Blueprint
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUESTS = Counter("artifact_store_http_requests", "HTTP requests answered", ["route", "method", "status"])
DURATION = Histogram("artifact_store_http_request_duration_seconds",
                     "Time from a request's arrival to the last byte of its answer", ["route", "method"],
                     buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
BYTES_IN = Counter("artifact_store_http_request_bytes", "Request body bytes read", ["route", "method"])
BYTES_OUT = Counter("artifact_store_http_response_bytes", "Response body bytes sent", ["route", "method"])
DEDUPLICATED = Counter("artifact_store_deduplicated_bytes",
                       "Bytes of files added to packages that the store already held (not stored again)")
AUTH_FAILURES = Counter("artifact_store_auth_failures", "Requests refused with 401 or 403",
                        ["status", "reason"])

METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"}
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def observe(route: str | None, method: str, status: int, seconds: float, bytes_in: int, bytes_out: int) -> None:
    route = route or "unmatched"
    method = method if method in METHODS else "other"
    REQUESTS.labels(route, method, str(status)).inc()
    DURATION.labels(route, method).observe(seconds)
    if bytes_in:
        BYTES_IN.labels(route, method).inc(bytes_in)
    if bytes_out:
        BYTES_OUT.labels(route, method).inc(bytes_out)


def deduplicated(nbytes: int) -> None:
    if nbytes:
        DEDUPLICATED.inc(nbytes)


def exposition() -> bytes:
    """Every process's metrics (multiprocess mode) or this process's."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


blp = Blueprint("metrics", __name__, url_prefix="/metrics", description="Prometheus metrics")


@blp.route("")
class Metrics(MethodView):
    @blp.response(200, content_type="text/plain",
                  description="Prometheus text format (needs an operator or metrics token when auth is on)")
    def get(self):
        """Request counts, durations and bytes by route, method and status; deduplicated bytes; auth failures."""
        return Response(exposition(), mimetype=CONTENT_TYPE_LATEST.split(";")[0],
                        headers={"Content-Type": CONTENT_TYPE_LATEST})
