"""Media types guessed from a logical path, when the producer gave none.

Python's table (mimetypes) lacks the evidence files people open most: logs
and markdown. Those, and JSON and XML, get a type a browser shows as text
instead of offering to save.
"""

from __future__ import annotations

import mimetypes
import posixpath

DEFAULT = "application/octet-stream"
TEXT_TYPES = {
    ".log": "text/plain", ".out": "text/plain", ".err": "text/plain", ".txt": "text/plain",
    ".md": "text/markdown", ".markdown": "text/markdown",
    ".json": "application/json", ".xml": "application/xml",
}


def guess(path: str) -> str:
    """The media type for a logical path: the text types above first, then Python's table."""
    suffix = posixpath.splitext(path)[1].lower()
    if suffix in TEXT_TYPES:
        return TEXT_TYPES[suffix]
    kind, _ = mimetypes.guess_type(path, strict=False)
    return kind or DEFAULT


def for_response(media_type: str) -> str:
    """The Content-Type to send: text without a charset is declared UTF-8 (a browser would
    otherwise read it as windows-1252 and garble every non-ASCII character of a log)."""
    if media_type.lower().startswith("text/") and "charset" not in media_type.lower():
        return f"{media_type}; charset=utf-8"
    return media_type
