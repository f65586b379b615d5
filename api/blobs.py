"""/v1/blobs: which digests does the store lack? (How a producer uploads only new bytes.)"""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from casstore.digests import parse_sha256

from . import context
from .schemas import MissingRequest, MissingResult

blp = Blueprint("blobs", __name__, url_prefix="/v1/blobs", description="Content-addressed blobs")


@blp.route("/missing")
class Missing(MethodView):
    @blp.arguments(MissingRequest)
    @blp.response(200, MissingResult)
    def post(self, body):
        """Of these digests (up to 10,000), the ones the store does not hold."""
        digests = list(dict.fromkeys(parse_sha256(d) for d in body["digests"]))
        return {"missing": context.store().missing_blobs(digests)}
