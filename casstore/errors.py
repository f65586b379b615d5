"""The exceptions casstore raises, and nothing else it lets escape.

The HTTP layer maps each branch to one status, in one place (api/problems.py)::

    CasstoreError                 base; never raised itself
    ├── NotFound                  404: a package, file or blob the caller named does not exist
    │   └── Gone                  410: the package was deleted (its tombstone remains)
    ├── InvalidInput              422: the request is malformed; nothing was changed
    │   ├── InvalidPath           a logical path breaks the path rules (paths.py)
    │   ├── InvalidDigest         a digest is not 64 lowercase hex (or sha256:/base64 forms)
    │   ├── DigestMismatch        the bytes received do not hash to the digest the client sent
    │   └── IncompleteBody        400: the body ended before its Content-Length, or its chunked
    │                             encoding broke off (raised by body.RequestBody)
    ├── Conflict                  409: the request is valid but the current state forbids it
    │   ├── PathExists            the logical path is already in the package (and replace was not asked)
    │   ├── PackageImmutable      the package is finalized, deleted or failed
    │   ├── DuplicateRun          a live package already has this producer + run_id
    │   ├── RetentionConflict     a retention change would shorten expiry, or deletion is not allowed
    │   ├── LeaseHeld             background work is already running elsewhere
    │   └── ChunksMissing         chunks a large file needs are not in the store (never sent, or
    │                             collected meanwhile): send them (``missing_chunks``) and retry
    ├── RangeNotSatisfiable       416: a byte range outside the file
    ├── Unauthenticated           401: no bearer token, or one that is unknown, expired or revoked
    ├── Forbidden                 403: the token's role or producer names do not allow this request
    ├── StorageError              503: the storage backend failed (storage.py maps every obstore and OS
    │   │                         error to it), or a claim could not hold its rows against gc (cas.py)
    │   └── ObjectMissing         an object the caller expected is not on the backend (storage.py),
    │                             or a blob has no recorded location or could not be placed (cas.py),
    │                             or a pack to read is gone (packs.py)
    └── DatabaseUnavailable       503: the database failed or could not be reached (raised only by db.py)
        └── DatabaseFull          507: the database has no room left (SQLite: disk or max_page_count full)

Who raises the others: NotFound/Gone/Conflict and its branches the services
(lookup.py, packages.py, files.py, retention.py, eligibility.py, lease.py);
InvalidInput and its branches the validators they call (paths.py, digests.py,
tarstream.py, jsonvalues.py) and the blob writer (writer.py: DigestMismatch,
IncompleteBody for a short stream); IncompleteBody first of all body.py, the
reader of request bodies; RangeNotSatisfiable files.py; Unauthenticated and
Forbidden the token service (services/tokens.py) and the HTTP layer's access
check (api/auth.py).

A 5xx answer never shows ``detail`` (it names storage keys and OS errors):
the client gets the title and what failed in general terms, the log gets
the detail. Each class carries a human ``detail`` and optional ``extra`` fields that the
problem+json body includes (for example the missing digests, or the existing
package id).
"""

from __future__ import annotations


class CasstoreError(Exception):
    """Base of every error casstore raises on purpose."""

    title = "Error"

    def __init__(self, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class NotFound(CasstoreError):
    """A package, file entry or blob named by the caller does not exist."""

    title = "Not Found"


class Gone(NotFound):
    """The package was deleted: its metadata is kept as a tombstone, its files are not served."""

    title = "Gone"


class InvalidInput(CasstoreError):
    """The request is malformed; the caller must change it, nothing was changed."""

    title = "Unprocessable Content"


class InvalidPath(InvalidInput):
    """A logical path is absolute, has '.', '..' or empty segments, control characters, or is too long."""

    title = "Invalid logical path"


class InvalidDigest(InvalidInput):
    """A digest string is not a well-formed SHA-256."""

    title = "Invalid digest"


class DigestMismatch(InvalidInput):
    """The bytes received hash to something else than the digest the client announced."""

    title = "Digest mismatch"


class IncompleteBody(InvalidInput):
    """The request body is not all there: it ended before the length its Content-Length
    announced, or its chunked encoding was cut off or malformed. Nothing was recorded."""

    title = "Incomplete body"


class Conflict(CasstoreError):
    """The request is valid but the current state of the store forbids it."""

    title = "Conflict"


class PathExists(Conflict):
    """The logical path already exists in the package and replace was not requested."""

    title = "Path already exists"


class PackageImmutable(Conflict):
    """The package is finalized (or deleted, or failed) and can no longer change."""

    title = "Package is immutable"


class DuplicateRun(Conflict):
    """A live package already holds this (producer, run_id); its id is in ``extra``."""

    title = "Run already registered"


class RetentionConflict(Conflict):
    """A retention change would shorten expiry, or a deletion is not allowed yet."""

    title = "Retention conflict"


class LeaseHeld(Conflict):
    """Background work (gc, verify) already runs under a live lease elsewhere."""

    title = "Lease held"


class ChunksMissing(Conflict):
    """A chunked file names chunks the store does not hold: the client sends them and repeats."""

    title = "Chunks Missing"


class RangeNotSatisfiable(CasstoreError):
    """The requested byte range does not overlap the file."""

    title = "Range Not Satisfiable"


class Unauthenticated(CasstoreError):
    """The request carries no valid bearer token; ``extra['reason']`` says which way it failed."""

    title = "Unauthorized"


class Forbidden(CasstoreError):
    """The token is valid, but its role or its producer names do not allow this request."""

    title = "Forbidden"


class StorageError(CasstoreError):
    """The storage backend failed (mapped at the adapter boundary), or a claim gave up on its rows."""

    title = "Storage unavailable"


class ObjectMissing(StorageError):
    """An object expected on the backend is not there."""

    title = "Object missing"


class DatabaseUnavailable(CasstoreError):
    """The database failed (not a constraint: an operational error); raised only by db.py."""

    title = "Database unavailable"


class DatabaseFull(DatabaseUnavailable):
    """The database cannot grow: its disk (or SQLite's max_page_count) is full."""

    title = "Insufficient storage"
