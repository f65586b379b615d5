"""/v1/eligibility: which packages could be deleted, and what deleting them would free. Nothing is deleted."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import RAISE

from . import context
from .schemas import EligibilityOut, EligibilityQuery

blp = Blueprint("eligibility", __name__, url_prefix="/v1/eligibility", description="Deletion eligibility")


@blp.route("")
class Eligibility(MethodView):
    @blp.arguments(EligibilityQuery, location="query", unknown=RAISE)
    @blp.response(200, EligibilityOut)
    def get(self, query):
        """Expired packages without holds at as_of (default now), with reclaimable and shared bytes."""
        return context.store().eligibility.report(query.get("as_of"))
