"""/v1/health: database and backend, each with its latency; 503 when either is down."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from . import auth, context
from .problems import problem
from .schemas import HealthOut

blp = Blueprint("health", __name__, url_prefix="/v1/health", description="Service health")


@blp.route("")
class Health(MethodView):
    @blp.response(200, HealthOut)
    def get(self):
        """Probe the database (SELECT 1) and the backend (write, read, delete one object).

        503 when either is down: a problem+json whose database and storage members are the report.
        Anonymous clients (when authentication is on) get the status only; any token, the details.
        """
        report = context.store().health.check()
        anonymous = auth.config().required and auth.principal() is None
        if report["status"] == "ok":
            return {"status": report["status"]} if anonymous else report
        down = [part for part in ("database", "storage") if report[part]["status"] != "ok"]
        details = {} if anonymous else {"database": report["database"], "storage": report["storage"]}
        return problem(503, "Service Unavailable", f"{' and '.join(down)} down", extra=details)
