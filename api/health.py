"""/v1/health: database and backend, each with its latency; 503 when either is down."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from . import context
from .problems import problem
from .schemas import HealthOut

blp = Blueprint("health", __name__, url_prefix="/v1/health", description="Service health")


@blp.route("")
class Health(MethodView):
    @blp.response(200, HealthOut)
    def get(self):
        """Probe the database (SELECT 1) and the backend (write, read, delete one object).

        503 when either is down: a problem+json whose database and storage members are the report.
        """
        report = context.store().health.check()
        if report["status"] == "ok":
            return report
        down = [part for part in ("database", "storage") if report[part]["status"] != "ok"]
        return problem(503, "Service Unavailable", f"{' and '.join(down)} down",
                       extra={"database": report["database"], "storage": report["storage"]})
