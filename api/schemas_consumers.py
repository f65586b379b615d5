"""Request and response shapes of the consumer endpoints: archives and search by checksum."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from . import links
from .schemas import Strict


class ArchiveQuery(Strict):
    format = fields.String(load_default="tar", validate=validate.OneOf(["tar", "zip"]),
                           metadata={"description": "tar (default; byte ranges served) or zip (stored, zip64)"})


class BlobQuery(Strict):
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    cursor = fields.String(validate=validate.Length(max=4200))
    include_deleted = fields.Boolean(load_default=False,
                                     metadata={"description": "also list entries of deleted packages (tombstones)"})


class HolderOut(Schema):
    package_id = fields.String()
    path = fields.String()
    package_status = fields.String()
    run_id = fields.String(allow_none=True)
    media_type = fields.String()
    url = fields.Function(lambda h: links.file_url(h.package_id, h.path),
                          metadata={"description": "where the file downloads"})


class BlobInfoOut(Schema):
    sha256 = fields.String()
    size = fields.Integer()
    blake3 = fields.String()
    state = fields.String(metadata={"description": "present, deleting (being collected) or missing (found lost)"})
    refcount = fields.Integer(metadata={"description": "live file entries and manifests holding these bytes"})
    holders = fields.List(fields.Nested(HolderOut))
    next_cursor = fields.String(allow_none=True)
