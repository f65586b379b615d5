"""/v1/packages/<id>/archive: a whole finalized package as one tar (or zip) stream."""

from __future__ import annotations

from flask import Response, request
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import RAISE

from . import context
from .schemas_consumers import ArchiveQuery

BINARY = {"schema": {"type": "string", "format": "binary"}}
TAR_LAYOUT = ("tar: `<id>.manifest.json` (the exact manifest bytes), then every file as `<id>/<logical path>` "
              "in manifest order; the same bytes on every request (zip: the same members)")

blp = Blueprint("archive", __name__, url_prefix="/v1/packages", description="Whole-package archives")


def _wanted_range(etag: str):
    """The single byte range asked for, unless If-Range names other bytes (then the whole archive)."""
    if not request.range or len(request.range.ranges) != 1:
        return None
    if_range = request.headers.get("If-Range")
    if if_range is not None and if_range.strip() != etag:
        return None
    return request.range.ranges[0]


@blp.route("/<string:package_id>/archive")
class PackageArchive(MethodView):
    @blp.arguments(ArchiveQuery, location="query", unknown=RAISE)
    @blp.response(200, content_type="application/x-tar", description=TAR_LAYOUT)
    @blp.alt_response(206, description="the requested byte range of the tar")
    @blp.alt_response(304, description="If-None-Match named this archive")
    @blp.doc(responses={
        "200": {"description": TAR_LAYOUT, "content": {"application/x-tar": BINARY, "application/zip": BINARY}},
        "206": {"description": "the requested byte range of the tar", "content": {"application/x-tar": BINARY}},
    })
    def get(self, query, package_id):
        """Download a finalized package as one uncompressed tar (default) or zip (stored, zip64).

        The archive has an exact Content-Length and an ETag; the tar serves one byte range
        (Range, If-Range), so an interrupted download resumes. The zip has no ranges.
        """
        archives = context.store().archives
        if query["format"] == "zip":
            archive = archives.zip(package_id)
        else:
            whole = archives.tar(package_id)  # the layout only: no byte is read until iterated
            archive = whole.ranged(_wanted_range(f'"{whole.etag}"'))
        return archive_response(archive)


def archive_response(archive) -> Response:
    etag = f'"{archive.etag}"'
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes" if archive.format.value == "tar" else "none",
        "Content-Disposition": f'attachment; filename="{archive.filename}"',
        "X-Manifest-Digest": archive.manifest_digest,
        "Content-Length": str(archive.end - archive.start),
    }
    if request.headers.get("If-None-Match") in (etag, "*"):
        headers.pop("Content-Length")
        return Response(status=304, headers=headers)
    status = 200
    if (archive.start, archive.end) != (0, archive.size):
        status = 206
        headers["Content-Range"] = f"bytes {archive.start}-{archive.end - 1}/{archive.size}"
    return Response(archive.chunks, status=status, headers=headers, content_type=archive.media_type,
                    direct_passthrough=True)
