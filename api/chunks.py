"""/v1/chunks: which chunks of large files does the store lack? (How a producer sends only new chunks.)"""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from casstore.chunking import CHUNKER

from . import context
from .schemas import MissingChunksRequest, MissingChunksResult

blp = Blueprint("chunks", __name__, url_prefix="/v1/chunks", description="Chunks of large files")


@blp.route("/missing")
class MissingChunks(MethodView):
    @blp.arguments(MissingChunksRequest)
    @blp.response(200, MissingChunksResult)
    def post(self, body):
        """Of these chunk ids (up to 10,000), the ones the store does not hold; and the chunker it uses."""
        ids = list(dict.fromkeys(body["chunks"]))
        return {"missing": context.store().files.missing_chunks(ids), "chunker": CHUNKER}
