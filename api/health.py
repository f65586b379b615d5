"""/v1/health: database and backend, each with its latency; 503 when either is down."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from . import context
from .schemas import HealthOut

blp = Blueprint("health", __name__, url_prefix="/v1/health", description="Service health")


@blp.route("")
class Health(MethodView):
    @blp.response(200, HealthOut)
    @blp.alt_response(503, schema=HealthOut, description="the database or the backend is down")
    def get(self):
        """Probe the database (SELECT 1) and the backend (write, read, delete one object)."""
        report = context.store().health.check()
        return report, (200 if report["status"] == "ok" else 503)
