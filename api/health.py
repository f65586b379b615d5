"""/v1/health: database and backend, each with its latency; 503 when either is down."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from . import auth, context
from .schemas import HealthOut

blp = Blueprint("health", __name__, url_prefix="/v1/health", description="Service health")


@blp.route("")
class Health(MethodView):
    @blp.response(200, HealthOut)
    @blp.alt_response(503, schema=HealthOut, description="the database or the backend is down")
    def get(self):
        """Probe the database (SELECT 1) and the backend (write, read, delete one object).

        Anonymous clients (when authentication is on) get the status only; any token, the details.
        """
        report = context.store().health.check()
        status = 200 if report["status"] == "ok" else 503
        if auth.config().required and auth.principal() is None:
            return {"status": report["status"]}, status  # anonymous: no details of the backend
        return report, status
