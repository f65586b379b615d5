"""What every request meets before a view parses it: a size cap on bodies, strict JSON.

Registered once (``install``) as a before_request hook, so an endpoint added
later is covered without doing anything. Views that stream their body (file
uploads, tar batches, chunked files) say so with ``@streams_body`` and are left
alone: their bytes are never held in memory. A streaming view that forgets to
say so fails safe: its bodies over 2 MiB are refused (413), never buffered.

For every other request:
* the body is capped at MAX_JSON_BODY (2 MiB) before a byte of it is parsed: a larger
  Content-Length is refused at once, a chunked body once it passes the cap
  (413, nothing read further);
* a body shorter than its Content-Length, or with a malformed chunked
  encoding, is 400 (the JSON that did arrive might parse - and be wrong);
* a JSON body is parsed here, strictly: NaN and Infinity are refused, so are
  lone surrogates, nesting deeper than MAX_JSON_DEPTH, more than
  MAX_JSON_MEMBERS keys and items in all, or an array or object of more
  than MAX_JSON_ITEMS (422); malformed JSON is 400. The
  view's own parsing (webargs) then reuses the cached bytes.

Measured (tests/test_hostile.py, /tmp scripts in the closing note): the 100 MB
body that cost 400 MiB is refused unread; 3.7 MiB of a 1.9-million-item list
cost 157 MiB parsed and is now refused before parsing (members counted on the
raw bytes); what passes costs a worker at most a few tens of MiB.
"""

from __future__ import annotations

from flask import Flask, current_app, request
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge

from casstore.errors import InvalidInput
from casstore.jsonvalues import check_json, count_members, strict_loads

MAX_JSON_BODY = 2 << 20  # metadata is at most 1 MiB; 10,000 attach items or digests fit
MAX_JSON_DEPTH = 64
MAX_JSON_MEMBERS = 100_000
# No list of this API takes more (digests, attach items); a longer one would only make the
# schema build one error per item (99,000 bad digests: 62 MiB and 1.2 s before this cap).
MAX_JSON_ITEMS = 10_000


def streams_body(method):
    """Mark a view method whose request body is streamed by the view itself (no cap, no parsing here)."""
    method.streams_body = True
    return method


def _view_method():
    view = current_app.view_functions.get(request.endpoint or "")
    cls = getattr(view, "view_class", None)
    return getattr(cls, request.method.lower(), None) if cls is not None else view


def guard_request() -> None:
    if getattr(_view_method(), "streams_body", False):
        return
    # One byte over the cap: werkzeug stops a chunked body silently at the limit, so reading
    # MAX + 1 bytes is how "more than MAX" is told from "exactly MAX".
    request.max_content_length = MAX_JSON_BODY + 1
    if not request.is_json:
        return
    data = _read_body()
    if len(data) > MAX_JSON_BODY:
        raise RequestEntityTooLarge(f"a JSON body is at most {MAX_JSON_BODY} bytes")
    if request.content_length is not None and len(data) != request.content_length:
        raise BadRequest(f"the body ended after {len(data)} of the {request.content_length} bytes "
                         "Content-Length announced; nothing was recorded")
    if not data:
        return
    if count_members(data) > MAX_JSON_MEMBERS:  # before json.loads builds them all
        raise InvalidInput(f"the JSON body has more than {MAX_JSON_MEMBERS} members (keys and items)")
    try:
        value = strict_loads(data)
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8/16/32
        raise BadRequest(f"the body is not valid JSON: {str(exc)[:200]}") from exc
    check_json(value, what="the JSON body", max_depth=MAX_JSON_DEPTH, max_members=MAX_JSON_MEMBERS,
               max_items=MAX_JSON_ITEMS)


def _read_body() -> bytes:
    """The whole (capped) body; 413 at once when Content-Length is over the cap.

    Whatever else goes wrong while reading - a chunk size that is not hex, a chunk without
    its terminator (the WSGI server's parser raises its own exception types) - is the
    client's malformed body: 400, not a server error. A stalled body stays a timeout (408).
    """
    try:
        return request.get_data(cache=True)
    except (HTTPException, TimeoutError):
        raise
    except Exception as exc:
        raise BadRequest(f"the request body is malformed: {type(exc).__name__}: {str(exc)[:200]}") from exc


def install(app: Flask) -> None:
    app.before_request(guard_request)
