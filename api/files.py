"""/v1/packages/<id>/files: stream bytes in, attach by reference, download with ranges."""

from __future__ import annotations

from flask import Response, request
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import RAISE

from casstore import media
from casstore.body import RequestBody
from casstore.digests import content_digest_header, parse_content_digest, parse_sha256
from casstore.errors import InvalidDigest

from . import context, metrics
from .guards import streams_body
from .schemas import AttachRequest, AttachResult, FileEntryOut, FilePage, FileQuery, TarResult, UploadQuery

blp = Blueprint("files", __name__, url_prefix="/v1/packages", description="Files of a package")

UNSPECIFIED_TYPES = {"", "application/x-www-form-urlencoded"}  # what curl sends when told nothing
PATH_PREFIX_SEGMENTS = 4  # /v1/packages/<id>/files/<logical path>


def request_body() -> RequestBody:
    """The raw request body, held to its Content-Length (a body that ends early is refused)."""
    return RequestBody(request.stream, request.content_length)


def expected_digest() -> str | None:
    """The SHA-256 the client announced (Content-Digest or X-Checksum-Sha256), if any."""
    announced = []
    if "Content-Digest" in request.headers:
        announced.append(parse_content_digest(request.headers["Content-Digest"]))
    if "X-Checksum-Sha256" in request.headers:
        announced.append(parse_sha256(request.headers["X-Checksum-Sha256"]))
    announced = [a for a in announced if a]
    if len(set(announced)) > 1:
        raise InvalidDigest("Content-Digest and X-Checksum-Sha256 announce different digests")
    return announced[0] if announced else None


def media_type() -> str | None:
    """The Content-Type the client sent, unless it is what curl sends when told nothing."""
    value = (request.mimetype or "").lower()
    return None if value in UNSPECIFIED_TYPES else request.headers.get("Content-Type")


@blp.route("/<string:package_id>/files")
class Files(MethodView):
    @blp.arguments(FileQuery, location="query", unknown=RAISE)
    @blp.response(200, FilePage)
    def get(self, query, package_id):
        """A package's files in path order."""
        return context.store().files.list(package_id, cursor=query.get("cursor"), limit=query["limit"])


@blp.route("/<string:package_id>/attach")
class Attach(MethodView):
    @blp.arguments(AttachRequest)
    @blp.response(200, AttachResult)
    def post(self, body, package_id):
        """Attach blobs the store already holds, by digest; the answer names the missing ones."""
        attached, missing = context.store().files.attach(package_id, body["files"], actor=context.actor(),
                                                         replace=body["replace"])
        metrics.deduplicated(sum(e.size for e in attached))  # attached by digest: bytes the store held
        return {"attached": attached, "missing": missing}


@blp.route("/<string:package_id>/tar")
class TarUpload(MethodView):
    @streams_body
    @blp.arguments(UploadQuery, location="query", unknown=RAISE)
    @blp.response(201, TarResult)
    @blp.doc(requestBody={"content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}})
    def post(self, query, package_id):
        """Upload many files as one uncompressed tar stream, committed in one transaction.

        Content-Digest (or X-Checksum-Sha256), if sent, is the whole body's: 422 if it differs.
        """
        added = context.store().files.put_tar(package_id, request_body(), actor=context.actor(),
                                              replace=query["replace"], expected_sha256=expected_digest())
        metrics.deduplicated(sum(e.deduplicated for e in added))
        return {"added": added}


@blp.route("/<string:package_id>/files/<anypath:logical_path>")
class FileItem(MethodView):
    @streams_body
    @blp.arguments(UploadQuery, location="query", unknown=RAISE)
    @blp.response(201, FileEntryOut, description="the file was added (or replaced)")
    @blp.alt_response(200, schema=FileEntryOut, description="the path already held exactly these bytes")
    @blp.doc(requestBody={"content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}})
    def put(self, query, package_id, logical_path):
        """Stream one file in; the server hashes it (422 if it differs from Content-Digest).

        A body shorter than its Content-Length, or a chunked body cut off, is 400 and records nothing.
        Sending the same bytes to the same path again answers 200 with the entry (a safe retry).
        """
        entry, changed = context.store().files.put(
            package_id, context.raw_logical_path(PATH_PREFIX_SEGMENTS), request_body(),
            actor=context.actor(), media_type=media_type(), expected_sha256=expected_digest(),
            expected_size=request.content_length, replace=query["replace"])
        metrics.deduplicated(entry.deduplicated)
        return entry, 201 if changed else 200

    @blp.response(200, content_type="application/octet-stream", description="the file's bytes")
    @blp.alt_response(206, description="the requested byte range")
    def get(self, package_id, logical_path):
        """Download a file, whole or one byte range (HEAD: headers only)."""
        ranges = request.range  # a unit other than bytes is ignored (RFC 9110 14.2): the whole file
        byte_range = ranges.ranges[0] if ranges and ranges.units == "bytes" and len(ranges.ranges) == 1 else None
        download = context.store().files.download(
            package_id, context.raw_logical_path(PATH_PREFIX_SEGMENTS), byte_range,
            body=request.method != "HEAD")
        return file_response(download, partial=byte_range is not None)


@blp.route("/<string:package_id>/chunked/<anypath:logical_path>")
class ChunkedFile(MethodView):
    @streams_body
    @blp.arguments(UploadQuery, location="query", unknown=RAISE)
    @blp.response(201, FileEntryOut, description="the file was added (or replaced)")
    @blp.alt_response(200, schema=FileEntryOut, description="the path already held exactly these bytes")
    @blp.doc(requestBody={"content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}})
    def post(self, query, package_id, logical_path):
        """Add a large file as its chunk list, sending only the chunks the store lacks.

        The body is an uncompressed tar: first `recipe.json` (`{"chunker", "chunks": [[id, size], ...],
        "media_type"}`), then one member per chunk the store lacks (`POST /v1/chunks/missing`), named
        by its id, in recipe order, once each time it occurs. The server derives every sent chunk's id
        from its bytes and computes the file's SHA-256 and BLAKE3 itself (422 if they differ from
        X-Checksum-Sha256); 409 with `missing_chunks` if a chunk was neither sent nor held.
        """
        entry, changed = context.store().files.put_chunked(
            package_id, context.raw_logical_path(PATH_PREFIX_SEGMENTS), request_body(), actor=context.actor(),
            expected_sha256=expected_digest(), replace=query["replace"])
        metrics.deduplicated(entry.deduplicated)
        return entry, 201 if changed else 200


def file_response(download, partial: bool) -> Response:
    entry = download.entry
    etag = f'"{entry.sha256}"'
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Repr-Digest": content_digest_header(entry.sha256),
        "X-Checksum-Sha256": entry.sha256,
        "X-Checksum-Blake3": download.blake3,
        "Content-Length": str(download.end - download.start),
        # Stored evidence (an HTML report, an SVG) is shown, never run with the store's origin.
        "Content-Security-Policy": "sandbox",
        "X-Content-Type-Options": "nosniff",
    }
    if request.headers.get("If-None-Match") in (etag, "*"):
        headers.pop("Content-Length")
        return Response(status=304, headers=headers)
    status = 200
    if partial:
        status = 206
        headers["Content-Range"] = f"bytes {download.start}-{download.end - 1}/{entry.size}"
    return Response(download.chunks, status=status, headers=headers, content_type=media.for_response(entry.media_type),
                    direct_passthrough=True)
