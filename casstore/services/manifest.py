"""Manifests: the canonical, hashable statement of what a finalized package holds.

Canonical JSON: keys sorted, no insignificant white space, UTF-8 (not
ASCII-escaped), files sorted by path (code point order). The same package
always gives the same bytes, so the SHA-256 of those bytes - the manifest
digest - identifies the package's content and anyone can re-derive it.
"""

from __future__ import annotations

import json
from datetime import datetime

from ..models import Package

SCHEMA = "artifact-store.manifest/v1"


def iso(value: datetime | None) -> str | None:
    """RFC 3339 UTC with a 'Z', as every answer of the store writes times."""
    if value is None:
        return None
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def build(package: Package, files: list[dict]) -> bytes:
    """The manifest bytes for a package and its files ({path, sha256, blake3, size, media_type})."""
    document = {
        "schema": SCHEMA,
        "package": {
            "id": package.id,
            "producer": package.producer,
            "run_id": package.run_id,
            "target_profile": package.target_profile,
            "assessment_profile": package.assessment_profile,
            "created_at": iso(package.created_at),
            "finalized_at": iso(package.finalized_at),
            "metadata": package.producer_metadata,
        },
        "file_count": len(files),
        "total_bytes": sum(f["size"] for f in files),
        "files": sorted(files, key=lambda f: f["path"]),
    }
    return canonical_json(document)
