"""Every request and response shape of the HTTP API (marshmallow), in one place.

Requests refuse unknown fields (a typo must not pass silently); responses
write times as RFC 3339 UTC with a 'Z'.
"""

from __future__ import annotations

from datetime import timezone

from marshmallow import RAISE, Schema, fields, validate

from casstore.models import PackageStatus
from casstore.paths import MAX_PATH_BYTES

from . import links

SHA256_HEX = validate.Regexp(r"^(sha256:)?[0-9a-fA-F]{64}$", error="not a SHA-256 digest")
NAME = validate.Length(min=1, max=256)
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


class Strict(Schema):
    class Meta:
        unknown = RAISE


class Time(fields.DateTime):
    def __init__(self, **kwargs):
        super().__init__(format=TIME_FORMAT, **kwargs)


# ---------------------------------------------------------------- packages
class PackageCreate(Strict):
    producer = fields.String(required=True, validate=validate.Length(min=1, max=128))
    run_id = fields.String(validate=NAME, allow_none=True)
    target_profile = fields.String(validate=NAME, allow_none=True)
    assessment_profile = fields.String(validate=NAME, allow_none=True)
    retention_class = fields.String(validate=validate.Length(min=1, max=64), allow_none=True)
    metadata = fields.Dict(keys=fields.String(), load_default=dict)


class PackageOut(Schema):
    id = fields.String()
    status = fields.String()
    producer = fields.String()
    run_id = fields.String(allow_none=True)
    target_profile = fields.String(allow_none=True)
    assessment_profile = fields.String(allow_none=True)
    retention_class = fields.String()
    expires_at = Time(allow_none=True)
    created_at = Time()
    finalized_at = Time(allow_none=True)
    deleted_at = Time(allow_none=True)
    file_count = fields.Integer()
    total_bytes = fields.Integer()
    manifest_digest = fields.String(allow_none=True)
    metadata = fields.Dict(attribute="producer_metadata")
    url = fields.Function(lambda p: links.package_url(p.id),
                          metadata={"description": "the package's URL (ARTIFACT_STORE_PUBLIC_URL based): "
                                                   "JSON for programs, a page for browsers"})
    archive_url = fields.Function(lambda p: links.archive_url(p.id) if p.status == PackageStatus.FINALIZED else None,
                                  allow_none=True, metadata={"description": "the whole package as one tar"})


class PackageQuery(Strict):
    producer = fields.String(validate=NAME)
    run_id = fields.String(validate=NAME)
    target_profile = fields.String(validate=NAME)
    assessment_profile = fields.String(validate=NAME)
    status = fields.String(validate=validate.OneOf(["created", "uploading", "finalized", "failed", "deleted"]))
    retention_class = fields.String(validate=NAME)
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    cursor = fields.String(validate=validate.Length(max=64))


class PackagePage(Schema):
    items = fields.List(fields.Nested(PackageOut))
    next_cursor = fields.String(allow_none=True)


# ---------------------------------------------------------------- files
class FileEntryOut(Schema):
    path = fields.String()
    sha256 = fields.String()
    size = fields.Integer()
    media_type = fields.String()
    created_at = Time()


class FileQuery(Strict):
    limit = fields.Integer(load_default=1000, validate=validate.Range(min=1, max=10000))
    cursor = fields.String(validate=validate.Length(max=MAX_PATH_BYTES * 4))


class FilePage(Schema):
    items = fields.List(fields.Nested(FileEntryOut))
    next_cursor = fields.String(allow_none=True)


class UploadQuery(Strict):
    replace = fields.Boolean(load_default=False)


class AttachItem(Strict):
    path = fields.String(required=True)
    sha256 = fields.String(required=True, validate=SHA256_HEX)
    media_type = fields.String(validate=validate.Length(min=1, max=255), allow_none=True)


class AttachRequest(Strict):
    files = fields.List(fields.Nested(AttachItem), required=True, validate=validate.Length(min=1, max=10000))
    replace = fields.Boolean(load_default=False)


class AttachResult(Schema):
    attached = fields.List(fields.Nested(FileEntryOut))
    missing = fields.List(fields.String(), metadata={"description": "digests the store lacks: upload them"})


class TarResult(Schema):
    added = fields.List(fields.Nested(FileEntryOut))


# ---------------------------------------------------------------- blobs
class MissingRequest(Strict):
    digests = fields.List(fields.String(validate=SHA256_HEX), required=True,
                          validate=validate.Length(min=0, max=10000))


class MissingResult(Schema):
    missing = fields.List(fields.String())


# ---------------------------------------------------------------- health
class HealthOut(Schema):
    status = fields.String()
    database = fields.Dict()
    storage = fields.Dict()


# ---------------------------------------------------------------- retention
class ReasonBody(Strict):
    reason = fields.String(required=True, validate=validate.Length(min=1, max=4000))


class ReasonQuery(Schema):
    reason = fields.String(validate=validate.Length(min=1, max=4000))


class ExtendRequest(Strict):
    expires_at = fields.AwareDateTime(default_timezone=timezone.utc)
    days = fields.Integer(validate=validate.Range(min=1, max=100 * 365))
    retention_class = fields.String(validate=validate.Length(min=1, max=64))
    reason = fields.String(required=True, validate=validate.Length(min=1, max=4000))


class HoldOut(Schema):
    id = fields.String()
    package_id = fields.String()
    reason = fields.String()
    placed_by = fields.String()
    placed_at = Time()
    released_at = Time(allow_none=True)
    released_by = fields.String(allow_none=True)
    release_reason = fields.String(allow_none=True)


class RetentionOut(Schema):
    package_id = fields.String()
    retention_class = fields.String()
    expires_at = Time(allow_none=True)
    holds = fields.List(fields.Nested(HoldOut))
    eligible = fields.Boolean()
    not_eligible_because = fields.List(fields.String())


class HoldList(Schema):
    items = fields.List(fields.Nested(HoldOut))


class EventOut(Schema):
    kind = fields.String(metadata={"description": "retention or audit"})
    id = fields.Integer()
    at = Time()
    actor = fields.String()
    action = fields.String()
    subject = fields.String(allow_none=True)
    before = fields.Raw(allow_none=True)
    after = fields.Raw(allow_none=True)
    reason = fields.String(allow_none=True)
    details = fields.Raw(allow_none=True)


class EventList(Schema):
    items = fields.List(fields.Nested(EventOut))


class AuditQuery(Strict):
    package_id = fields.String(validate=validate.Length(max=64))
    actor = fields.String(validate=validate.Length(max=256))
    action = fields.String(validate=validate.Length(max=64))
    since = fields.AwareDateTime(default_timezone=timezone.utc)
    until = fields.AwareDateTime(default_timezone=timezone.utc)
    cursor = fields.Integer(validate=validate.Range(min=0))
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))


class AuditEventOut(Schema):
    id = fields.Integer()
    at = Time()
    actor = fields.String()
    action = fields.String()
    package_id = fields.String(allow_none=True)
    subject = fields.String(allow_none=True)
    details = fields.Raw(allow_none=True)


class AuditPage(Schema):
    items = fields.List(fields.Nested(AuditEventOut))
    next_cursor = fields.String(allow_none=True)


class EligibilityQuery(Strict):
    as_of = fields.AwareDateTime(default_timezone=timezone.utc)


class EligiblePackageOut(Schema):
    package_id = fields.String()
    run_id = fields.String(allow_none=True)
    producer = fields.String()
    retention_class = fields.String()
    expires_at = Time()
    total_bytes = fields.Integer()
    reclaimable_bytes = fields.Integer()
    shared_bytes = fields.Integer()


class EligibilityOut(Schema):
    as_of = Time()
    packages = fields.List(fields.Nested(EligiblePackageOut))
    reclaimable_bytes = fields.Integer()
    shared_bytes = fields.Integer()


class RetentionClassOut(Schema):
    name = fields.String()
    days = fields.Integer(allow_none=True)
    description = fields.String()
    updated_at = Time()


class RetentionClassList(Schema):
    items = fields.List(fields.Nested(RetentionClassOut))


# ---------------------------------------------------------------- chunks
class MissingChunksRequest(Strict):
    chunks = fields.List(fields.String(validate=SHA256_HEX), required=True,
                         validate=validate.Length(min=0, max=10000),
                         metadata={"description": "chunk ids (BLAKE3 derive-key, 64 hex)"})


class MissingChunksResult(Schema):
    missing = fields.List(fields.String(), metadata={"description": "chunk ids the store lacks: send them"})
    chunker = fields.String(metadata={"description": "the chunker (and its settings) this store cuts with"})


# ---------------------------------------------------------------- tokens
class TokenCreate(Strict):
    name = fields.String(required=True, validate=validate.Length(min=1, max=64))
    role = fields.String(required=True, validate=validate.OneOf(["reader", "producer", "operator", "metrics"]))
    producers = fields.List(fields.String(validate=validate.Length(min=1, max=128)), load_default=list,
                            validate=validate.Length(max=100))
    expires_in_days = fields.Float(validate=validate.Range(min=0, min_inclusive=False, max=100 * 365),
                                   allow_none=True)


class TokenOut(Schema):
    id = fields.String()
    name = fields.String()
    role = fields.String()
    producers = fields.List(fields.String())
    created_at = Time()
    created_by = fields.String()
    expires_at = Time(allow_none=True)
    revoked_at = Time(allow_none=True)
    revoked_by = fields.String(allow_none=True)


class TokenCreated(TokenOut):
    token = fields.String(metadata={"description": "the secret: shown only in this answer, never stored"})


class TokenList(Schema):
    items = fields.List(fields.Nested(TokenOut))
