"""Checks on values clients hand the store: JSON documents and names.

Why a module of its own: JSON that Python's parser accepts is not always
JSON another parser accepts. NaN and Infinity are not JSON (RFC 8259), and a
lone surrogate ("\\ud800") cannot be encoded as UTF-8 at all - kept in
producer metadata, it would make every manifest of that package fail to
serialize. Names (producer, run id, reasons) end up in audit trails and
terminals, where control characters and bidi overrides (U+202E) disguise
what is displayed. Every check raises InvalidInput (422), never lets the
value through half-checked.
"""

from __future__ import annotations

import json
import math
import re

from .errors import InvalidInput

# Unicode Cc (C0, DEL, C1), lone surrogates, and the bidirectional formatting characters.
_NOT_IN_NAMES = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def check_name(value: str, what: str) -> str:
    """``value`` unchanged if it holds no control, surrogate or bidi character, else InvalidInput."""
    match = _NOT_IN_NAMES.search(value)
    if match:
        raise InvalidInput(f"{what} must not contain control or bidirectional formatting characters "
                           f"(found U+{ord(match.group()):04X})", field=what)
    return value


def strict_loads(data: bytes | str):
    """json.loads refusing what is not JSON (NaN, Infinity) and nesting Python cannot parse."""
    try:
        return json.loads(data, parse_constant=_refuse_constant)
    except RecursionError as exc:
        raise InvalidInput("the JSON body is nested too deeply") from exc


def _refuse_constant(name: str):
    raise InvalidInput(f"{name} is not a JSON number (RFC 8259)")


def check_json(value, *, what: str, max_depth: int, max_members: int, max_items: int | None = None) -> None:
    """Refuse NaN/Infinity, lone surrogates, nesting over ``max_depth``, more than ``max_members``
    members (object keys plus array items, counted over the whole document) and arrays or objects
    of more than ``max_items``. Iterative (no recursion
    limit to hit) and counting each container before looking inside it (no copy of a huge one)."""
    if not isinstance(value, (dict, list)):
        return _check_scalar(value, what)
    members, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            raise InvalidInput(f"{what} is nested deeper than {max_depth} levels", field=what)
        if max_items is not None and len(item) > max_items:
            raise InvalidInput(f"{what} holds an array or object of more than {max_items} items", field=what)
        members += len(item)
        if members > max_members:
            raise InvalidInput(f"{what} has more than {max_members} members (keys and items)", field=what)
        if isinstance(item, dict):
            for key in item:
                _check_scalar(key, what)
            children = item.values()
        else:
            children = item
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
            else:
                _check_scalar(child, what)


def count_members(data: bytes) -> int:
    """About how many members a JSON text holds, without parsing it: its commas outside strings,
    plus one (exact for a flat object or array; a little under for nested ones). Lets a body
    with a million tiny members be refused before json.loads builds a million objects (3.7 MiB
    of '0,' cost 157 MiB parsed)."""
    return _STRINGS.sub(b"", data).count(b",") + 1


_STRINGS = re.compile(rb'"(?:[^"\\\\]|\\\\.)*"')


def _check_scalar(item, what: str) -> None:
    if isinstance(item, float) and not math.isfinite(item):
        raise InvalidInput(f"{what} holds {item}, which is not a JSON number (RFC 8259)", field=what)
    if isinstance(item, str):
        try:
            item.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidInput(f"{what} holds a lone surrogate (\\u{ord(item[exc.start]):04x}): "
                               f"not a Unicode string", field=what) from exc
