"""Every request and response shape of the HTTP API (marshmallow), in one place.

Requests refuse unknown fields (a typo must not pass silently); responses
write times as RFC 3339 UTC with a 'Z'.
"""

from __future__ import annotations

from datetime import datetime, timezone

from marshmallow import INCLUDE, RAISE, Schema, ValidationError, fields, validate

from casstore.errors import InvalidInput
from casstore.jsonvalues import check_name
from casstore.models import PackageStatus
from casstore.paths import MAX_PATH_BYTES

from . import links

SHA256_HEX = validate.Regexp(r"^(sha256:)?[0-9a-fA-F]{64}$", error="not a SHA-256 digest")
PACKAGE_ID = r"^pkg_[0-9A-HJKMNP-TV-Z]{26}$"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
MAX_LIST = 10_000  # digests per /v1/blobs/missing, files per attach
MAX_AUDIT_ID = 2 ** 31 - 1  # audit_event.id is INTEGER: int4 on PostgreSQL


# The characters a name may not hold, as a JSON Schema pattern (ECMA-262) the spec publishes; lone
# surrogates, which a pattern cannot name portably, are refused by Printable below.
NOT_PRINTABLE = "\\x00-\\x1f\\x7f-\\x9f\\u061c\\u200e\\u200f\\u202a-\\u202e\\u2066-\\u2069"
NAME_PATTERN = f"^[^{NOT_PRINTABLE}]*$"
# A logical path (casstore/paths.py) as a pattern: segments that are not '.' or '..', no empty
# segment, no leading '/', no backslash or control character. Byte lengths are checked by the service.
_SEGMENT_CHAR = f"[^/\\\\{NOT_PRINTABLE}]"
_NO_DOT = f"[^./\\\\{NOT_PRINTABLE}]"
_SEGMENT = f"(?:{_NO_DOT}{_SEGMENT_CHAR}*|\\.{_NO_DOT}{_SEGMENT_CHAR}*|\\.\\.{_SEGMENT_CHAR}+)"
PATH_PATTERN = f"^{_SEGMENT}(?:/{_SEGMENT})*$"


class Printable(validate.Validator):
    """No control, lone surrogate or bidirectional formatting character (names end up in audit trails)."""

    error = "must not contain control or bidirectional formatting characters"

    def __call__(self, value: str) -> str:
        try:
            return check_name(value, "value")
        except InvalidInput as exc:
            raise ValidationError(exc.detail) from exc


def name(max_len: int = 256) -> list:
    return [validate.Length(min=1, max=max_len), Printable(),
            validate.Regexp(NAME_PATTERN, error="must not contain control or bidirectional formatting characters")]


NAME = name()
REASON = name(4000)


class Strict(Schema):
    class Meta:
        unknown = RAISE


class JsonBool(fields.Boolean):
    """true or false, nothing else: marshmallow's Boolean also takes 1, "yes", "on" - fine in a query, not in JSON."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise ValidationError("not a boolean (true or false)")
        return value


class Time(fields.DateTime):
    """Answers write times as RFC 3339 UTC with microseconds and a 'Z' (documented as date-time)."""

    def _serialize(self, value, attr, obj, **kwargs):
        if value is None:
            return None
        # isoformat, not strftime: strftime writes year 256 as '256', which is not RFC 3339
        return value.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


class UtcTime(fields.AwareDateTime):
    """A time a client sends: RFC 3339 (UTC when it names no offset), refused (422) if it has no UTC equivalent.

    ``9999-12-31T23:59:59-14:00`` is a valid RFC 3339 string whose UTC instant lies
    past year 9999: Python cannot represent it, and it must not reach a query.
    """

    def __init__(self, **kwargs):
        super().__init__(default_timezone=timezone.utc, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs) -> datetime:
        parsed = super()._deserialize(value, attr, data, **kwargs)
        try:
            return parsed.astimezone(timezone.utc)
        except OverflowError as exc:
            raise ValidationError("the time is outside the years 1 to 9999 once converted to UTC") from exc


# ---------------------------------------------------------------- packages
class PackageCreate(Strict):
    producer = fields.String(required=True, validate=name(128))
    run_id = fields.String(validate=NAME, allow_none=True)
    target_profile = fields.String(validate=NAME, allow_none=True)
    assessment_profile = fields.String(validate=NAME, allow_none=True)
    retention_class = fields.String(validate=name(64), allow_none=True)
    # Any JSON object, kept exactly; its size, depth and members are checked by the service.
    metadata = fields.Dict(load_default=dict)


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
    cursor = fields.String(validate=validate.Regexp(PACKAGE_ID, error="not a cursor this API handed out"),
                           metadata={"description": "next_cursor of the previous page"})


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
    cursor = fields.String(validate=[validate.Length(min=1, max=MAX_PATH_BYTES),
                                     validate.Regexp(PATH_PATTERN, error="not a cursor this API handed out")],
                           metadata={"description": "next_cursor of the previous page (a logical path)"})


class FilePage(Schema):
    items = fields.List(fields.Nested(FileEntryOut))
    next_cursor = fields.String(allow_none=True)


class UploadQuery(Strict):
    replace = fields.Boolean(load_default=False)


class AttachItem(Strict):
    path = fields.String(required=True, validate=[validate.Length(min=1, max=MAX_PATH_BYTES),
                                                  validate.Regexp(PATH_PATTERN, error="not a logical path")])
    sha256 = fields.String(required=True, validate=SHA256_HEX)
    media_type = fields.String(validate=validate.Length(min=1, max=255), allow_none=True)


class AttachRequest(Strict):
    files = fields.List(fields.Nested(AttachItem), required=True, validate=validate.Length(min=1, max=MAX_LIST))
    replace = JsonBool(load_default=False)


class AttachResult(Schema):
    attached = fields.List(fields.Nested(FileEntryOut))
    missing = fields.List(fields.String(), metadata={"description": "digests the store lacks: upload them"})


class TarResult(Schema):
    added = fields.List(fields.Nested(FileEntryOut))


# ---------------------------------------------------------------- blobs
class MissingRequest(Strict):
    digests = fields.List(fields.String(validate=SHA256_HEX), required=True,
                          validate=validate.Length(min=0, max=MAX_LIST))


class MissingResult(Schema):
    missing = fields.List(fields.String())


# ---------------------------------------------------------------- health
class HealthOut(Schema):
    status = fields.String()
    database = fields.Dict()
    storage = fields.Dict()


# ---------------------------------------------------------------- retention
class ReasonBody(Strict):
    reason = fields.String(required=True, validate=REASON)


class ReasonQuery(Schema):
    reason = fields.String(validate=REASON, metadata={"description": "why (or a JSON body {\"reason\": ...})"})


class RequiredReasonQuery(Schema):
    reason = fields.String(required=True, validate=REASON)


class ExtendRequest(Strict):
    expires_at = UtcTime()
    days = fields.Integer(validate=validate.Range(min=1, max=100 * 365))
    retention_class = fields.String(validate=name(64))
    reason = fields.String(required=True, validate=REASON)


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
    since = UtcTime()
    until = UtcTime()
    cursor = fields.Integer(validate=validate.Range(min=1, max=MAX_AUDIT_ID),
                            metadata={"description": "next_cursor of the previous page"})
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
    as_of = UtcTime()


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


# ---------------------------------------------------------------- errors
class Problem(Schema):
    """RFC 9457 problem details: every error answer (application/problem+json)."""

    type = fields.String(required=True, metadata={"example": "about:blank"})
    status = fields.Integer(required=True)
    title = fields.String(required=True)
    detail = fields.String(required=True)
    errors = fields.Dict(metadata={"description": "per-location, per-field validation messages (422)"})

    class Meta:
        unknown = INCLUDE  # members naming what the error is about (package_id, missing, ...) come along


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
