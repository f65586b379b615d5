"""Logical paths: the names files have inside a package.

A logical path is a relative POSIX path, case-sensitive, compared byte for
byte. It is metadata only: it never becomes a storage key (layout.py builds
keys from digests). The rules keep paths portable and unambiguous when a
package is restored onto a real filesystem:

* non-empty, at most 1024 UTF-8 bytes, each segment at most 255 bytes;
* no leading '/', no empty segments ('a//b', trailing '/'), no '.' or '..';
* no backslash (ambiguous on Windows), no NUL or other control characters, no
  bidirectional formatting characters (U+202E makes 'gpj.exe' display as 'exe.jpg');
* at most 64 segments.

Everything else (spaces, %, #, ?, &, +, quotes, ';', '~', brackets, leading
'-', dotfiles, '..hidden..', any unicode) is allowed and round-trips exactly.
"""

from __future__ import annotations

import re

from .errors import InvalidPath

MAX_PATH_BYTES = 1024
MAX_SEGMENT_BYTES = 255
MAX_DEPTH = 64


# Backslash, Unicode category Cc (exactly U+0000-U+001F and U+007F-U+009F), bidi formatting characters.
_BAD_CHAR = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def validate_path(path: object) -> str:
    """Return ``path`` unchanged if it is a valid logical path, else raise InvalidPath."""
    if not isinstance(path, str) or not path:
        raise InvalidPath("a logical path must be a non-empty string")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidPath("a logical path must be valid UTF-8") from exc
    if len(encoded) > MAX_PATH_BYTES:
        raise InvalidPath(f"a logical path is at most {MAX_PATH_BYTES} UTF-8 bytes")
    if path.startswith("/"):
        raise InvalidPath("a logical path is relative: no leading '/'")
    if _BAD_CHAR.search(path):
        raise InvalidPath("a logical path has no backslash, NUL, control or bidirectional formatting characters")
    segments = path.split("/")
    if len(segments) > MAX_DEPTH:
        raise InvalidPath(f"a logical path has at most {MAX_DEPTH} segments")
    for segment in segments:
        if segment == "":
            raise InvalidPath("a logical path has no empty segments")
        if segment in (".", ".."):
            raise InvalidPath("a logical path has no '.' or '..' segments")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise InvalidPath(f"a path segment is at most {MAX_SEGMENT_BYTES} UTF-8 bytes")
    return path
