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
from ..times import iso

SCHEMA = "artifact-store.manifest/v1"


def canonical_json(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def build(package: Package, files: list[dict], finalized_at: datetime | None = None) -> bytes:
    """The manifest bytes for a package and its files ({path, sha256, blake3, size, media_type}),
    finalized at ``finalized_at`` (default: the package's own finalized_at)."""
    document = {
        "schema": SCHEMA,
        "package": {
            "id": package.id,
            "producer": package.producer,
            "run_id": package.run_id,
            "target_profile": package.target_profile,
            "assessment_profile": package.assessment_profile,
            "created_at": iso(package.created_at),
            "finalized_at": iso(finalized_at or package.finalized_at),
            "metadata": package.producer_metadata,
        },
        "file_count": len(files),
        "total_bytes": sum(f["size"] for f in files),
        "files": sorted(files, key=lambda f: f["path"]),
    }
    return canonical_json(document)
