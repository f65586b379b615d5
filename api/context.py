"""Request-scoped helpers shared by the blueprints: the Store, the actor, the logical path."""

from __future__ import annotations

from flask import current_app, request

from casstore.errors import InvalidInput, InvalidPath
from casstore.jsonvalues import check_name
from casstore.store import Store

MAX_ACTOR = 256


def store() -> Store:
    return current_app.extensions["casstore"]


def actor() -> str:
    """Who is acting, as recorded in audit events.

    With authentication on: the name of the request's token; X-Actor cannot
    change it (it is kept as ``details.request.note``, see api/auth.py).
    With it off (loopback only, one user): what the client says in X-Actor.
    """
    from . import auth

    if auth.config().required:
        principal = auth.principal()
        return principal.name if principal is not None else "anonymous"
    value = request.headers.get("X-Actor", "anonymous").strip() or "anonymous"
    if len(value) > MAX_ACTOR:
        raise InvalidInput(f"X-Actor must be at most {MAX_ACTOR} printable characters")
    return check_name(value, "X-Actor")


def raw_logical_path(prefix_segments: int) -> str:
    """The logical path after /v1/packages/<id>/files/, decoded strictly as UTF-8.

    Werkzeug would replace invalid UTF-8 with U+FFFD; an evidence store must
    refuse such a path instead of storing a name the client never sent.
    """
    raw = request.environ.get("PATH_INFO", "")
    try:
        decoded = raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError) as exc:
        raise InvalidPath("the logical path is not valid UTF-8 once percent-decoded") from exc
    parts = decoded.split("/", prefix_segments + 1)
    return parts[prefix_segments + 1] if len(parts) > prefix_segments + 1 else ""
