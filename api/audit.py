"""/v1/audit: the fleet-wide audit feed, filtered and paginated."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import RAISE

from . import context
from .schemas import AuditPage, AuditQuery

blp = Blueprint("audit", __name__, url_prefix="/v1/audit", description="Audit events")


@blp.route("")
class Audit(MethodView):
    @blp.arguments(AuditQuery, location="query", unknown=RAISE)
    @blp.response(200, AuditPage)
    def get(self, query):
        """Audit events oldest first, filtered by package, actor, action and time [since, until)."""
        return context.store().audit.feed(**query)
