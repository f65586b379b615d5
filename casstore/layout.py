"""Every storage key the store uses, and the only place that builds one.

The key tree, identical on every backend (relative to the storage root)::

    <root>/
      blobs/
        sha256/
          <hex[0:2]>/
            <hex[2:4]>/
              <hex>                 one blob: the exact bytes whose SHA-256 is <hex>
      packs/
        <ulid>                      many small blobs of one upload batch, back to back,
                                    then an index naming each (see packs.py); a blob's
                                    offset and length are also in storage_location
      chunks/
        <ulid>                      the new chunks of one upload of a large file, back to back,
                                    then an index naming each (packs.py); a chunk's offset
                                    is also in its chunk row
      staging/
        <ulid>                      an upload in progress, before its digest is known
      health/
        <ulid>                      a health probe object, written and deleted at once

Keys are built from validated digests (digests.parse_sha256) and server-made
ULIDs only. No name a user sent, such as a logical path, ever becomes a key,
so no request can write outside these folders.
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import StrEnum

from ulid import ULID

from .digests import parse_sha256


class KeyKind(StrEnum):
    """The kinds of key, each its own folder; the value is the folder's prefix."""

    BLOB = "blobs/sha256/"
    PACK = "packs/"
    CHUNK_PACK = "chunks/"
    STAGING = "staging/"
    HEALTH = "health/"


BLOB_PREFIX = KeyKind.BLOB.value
PACK_PREFIX = KeyKind.PACK.value
CHUNK_PACK_PREFIX = KeyKind.CHUNK_PACK.value
STAGING_PREFIX = KeyKind.STAGING.value
HEALTH_PREFIX = KeyKind.HEALTH.value


def kind_of(key: str) -> KeyKind | None:
    """Which kind of key this is, by its folder (None: no key the store makes)."""
    return next((kind for kind in KeyKind if key.startswith(kind.value)), None)


def blob_key(sha256_hex: str) -> str:
    """The final key of the blob with this SHA-256."""
    hex_ = parse_sha256(sha256_hex)
    return f"{BLOB_PREFIX}{hex_[0:2]}/{hex_[2:4]}/{hex_}"


def digest_from_blob_key(key: str) -> str | None:
    """The SHA-256 a final blob key names, or None if the key is not a well-formed blob key."""
    if not key.startswith(BLOB_PREFIX):
        return None
    parts = key[len(BLOB_PREFIX):].split("/")
    if len(parts) != 3:
        return None
    try:
        hex_ = parse_sha256(parts[2])
    except Exception:
        return None
    if parts[0] != hex_[0:2] or parts[1] != hex_[2:4] or parts[2] != hex_:
        return None
    return hex_


def new_pack_key() -> str:
    """A fresh key for one pack. Never reused: the blobs in a pack are fixed by the one
    transaction that records them, so a pack no row references can only shrink to nothing."""
    return f"{PACK_PREFIX}{ULID()}"


def is_pack_key(key: str) -> bool:
    """Whether a key is a pack's (keys under packs/ are only ever made by new_pack_key)."""
    return kind_of(key) is KeyKind.PACK


def pack_key_time(key: str) -> datetime | None:
    """When a pack was made (from its ULID), or None if the key is not a pack's."""
    return _ulid_time(key[len(PACK_PREFIX):]) if key.startswith(PACK_PREFIX) else None


def new_chunk_pack_key() -> str:
    """A fresh key for the chunk pack of one upload (never reused, like a blob pack's)."""
    return f"{CHUNK_PACK_PREFIX}{ULID()}"


def is_chunk_pack_key(key: str) -> bool:
    return kind_of(key) is KeyKind.CHUNK_PACK


def any_pack_key_time(key: str) -> datetime | None:
    """When a blob pack or a chunk pack was made (from its ULID), or None for other keys."""
    kind = kind_of(key)
    if kind in (KeyKind.PACK, KeyKind.CHUNK_PACK):
        return _ulid_time(key[len(kind.value):])
    return None


def new_staging_key() -> str:
    """A fresh staging key for one upload; the ULID keeps keys unique and age-sortable."""
    return f"{STAGING_PREFIX}{ULID()}"


def staging_key_time(key: str) -> datetime | None:
    """When a staging key was made (from its ULID), or None for a foreign key."""
    return _ulid_time(key[len(STAGING_PREFIX):])


def _ulid_time(text: str) -> datetime | None:
    try:
        return ULID.from_str(text).datetime.astimezone(timezone.utc)
    except Exception:
        return None


def new_health_key() -> str:
    """A fresh key for one health probe."""
    return f"{HEALTH_PREFIX}{ULID()}"
