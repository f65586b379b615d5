"""/v1/packages: create, list, read, finalize, manifest."""

from __future__ import annotations

from flask import Response
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import EXCLUDE, RAISE

from . import context, pages
from .schemas import PackageCreate, PackageOut, PackagePage, PackageQuery, ReasonQuery

blp = Blueprint("packages", __name__, url_prefix="/v1/packages", description="Packages: one producer run each")


@blp.route("")
class Packages(MethodView):
    @blp.arguments(PackageQuery, location="query", unknown=RAISE)
    @blp.response(200, PackagePage)
    def get(self, query):
        """List packages, newest first, filtered by any query field."""
        limit, cursor = query.pop("limit"), query.pop("cursor", None)
        return context.store().packages.list(query, cursor=cursor, limit=limit)

    @blp.arguments(PackageCreate)
    @blp.response(201, PackageOut)
    def post(self, body):
        """Create a package (409 if this producer already registered this run_id)."""
        return context.store().packages.create(actor=context.actor(), **body)


@blp.route("/<string:package_id>")
class PackageItem(MethodView):
    @blp.response(200, PackageOut)
    @blp.doc(responses={"200": {
        "description": "the package; a browser (Accept preferring text/html) gets its page instead",
        "content": {"application/json": {"schema": PackageOut}, "text/html": {"schema": {"type": "string"}}}}})
    def get(self, package_id):
        """A package's metadata, counts, retention and manifest digest (a browser gets its page)."""
        if pages.wants_html():
            return pages.package_page(package_id)
        return context.store().packages.get(package_id)

    @blp.arguments(ReasonQuery, location="query", unknown=EXCLUDE)
    @blp.response(200, PackageOut)
    def delete(self, query, package_id):
        """Delete an eligible package (409 naming the hold or the expiry otherwise); it stays as a tombstone."""
        return context.store().eligibility.delete(package_id, actor=context.actor(),
                                                  reason=query.get("reason") or "")


@blp.route("/<string:package_id>/finalize")
class Finalize(MethodView):
    @blp.response(200, PackageOut)
    def post(self, package_id):
        """Write the manifest and make the package immutable (idempotent once finalized)."""
        return context.store().packages.finalize(package_id, actor=context.actor())


@blp.route("/<string:package_id>/manifest")
class Manifest(MethodView):
    @blp.response(200, content_type="application/json",
                  description="the canonical manifest; its SHA-256 is the manifest digest")
    def get(self, package_id):
        """The manifest bytes of a finalized package."""
        digest, size, chunks = context.store().packages.manifest(package_id)
        return Response(chunks, mimetype="application/json",
                        headers={"Content-Length": str(size), "ETag": f'"{digest}"',
                                 "X-Manifest-Digest": f"sha256:{digest}"})
