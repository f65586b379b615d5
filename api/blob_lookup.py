"""/v1/blobs/<sha256>: search by checksum - which packages and paths hold these bytes."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import RAISE

from . import context
from .schemas_consumers import BlobInfoOut, BlobQuery

blp = Blueprint("blob_lookup", __name__, url_prefix="/v1/blobs", description="Search by checksum")


@blp.route("/<string:sha256>")
class BlobItem(MethodView):
    @blp.arguments(BlobQuery, location="query", unknown=RAISE)
    @blp.response(200, BlobInfoOut)
    def get(self, query, sha256):
        """Size, BLAKE3 and the (package, path) pairs holding these bytes, newest package first (paged).

        404 when the store has never held bytes with this SHA-256.
        """
        return context.store().blob_info.lookup(sha256, cursor=query.get("cursor"), limit=query["limit"],
                                                include_deleted=query["include_deleted"])
