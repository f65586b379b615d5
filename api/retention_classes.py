"""/v1/retention-classes: the classes and their durations (changed with the CLI, audited)."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from . import context
from .schemas import RetentionClassList

blp = Blueprint("retention_classes", __name__, url_prefix="/v1/retention-classes",
                description="Retention classes")


@blp.route("")
class RetentionClasses(MethodView):
    @blp.response(200, RetentionClassList)
    def get(self):
        """Every retention class with its duration in days (null: never expires)."""
        return {"items": context.store().retention.classes()}
