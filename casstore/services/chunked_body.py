"""The body of a chunked upload, read in file order: recipe parts, and the chunks sent.

The body is an uncompressed tar. A ``recipe.json`` member lists chunks of the
file in order (``{"chunks": [[id, size], ...]}``; the first one also names the
``chunker`` and may give a ``media_type``). The members after it, named by
chunk id, carry the chunks of that list the store lacks, in list order, once
each time they occur; the others are held by the store. Another
``recipe.json`` continues the list::

    recipe.json   [a, b, c, d]        a client that cut the whole file first
    a  c                              sends one recipe and the chunks it lacks;
    recipe.json   [e, f]              a client that cuts as it sends (the CLI)
    f                                 sends a part at a time, so the server
    (end of archive)                  hashes while the client is still cutting.

``chunks_in_order`` turns that into (id, size, bytes or None) in file order,
which the blob writer checks, hashes and stores (writer.add_chunked); a member
that is not the next chunk its recipe part lists, or a malformed recipe, is
InvalidInput and nothing is recorded.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator

from .. import chunking
from ..digests import parse_sha256
from ..errors import InvalidInput
from ..tarstream import BLOCK, Member, TarReader

RECIPE = "recipe.json"
MAX_RECIPE = 16 << 20  # bytes of recipe parts in one body: about 200,000 chunks, a file of some 250 GB


class ChunkedBody:
    """One chunked upload's body: its chunker and the media type given (from the first
    recipe part), then ``chunks_in_order``."""

    def __init__(self, stream) -> None:
        self._tar = TarReader(stream, readahead=BLOCK)  # parts come as the client cuts: take each as it comes
        self._members = iter(self._tar)
        self._recipe_bytes = 0
        first = next(self._members, None)
        if first is None or first.name != RECIPE or first.is_dir:
            raise InvalidInput("a chunked upload starts with its recipe.json member")
        doc = self._read_part(first)
        self.chunker = doc.get("chunker")
        if not isinstance(self.chunker, str):
            raise InvalidInput("the first recipe.json names the chunker the file was cut with")
        self.media_type: str | None = doc.get("media_type")
        self._first = doc["chunks"]

    def chunks_in_order(self) -> Iterator[tuple[str, int, bytes | None]]:
        """(chunk id, size, its bytes if sent here, else None), in file order; the tar is read
        to its end marker once the last is given."""
        waiting = deque(self._first)
        member = next(self._members, None)
        while True:
            if member is not None and member.name == RECIPE and not member.is_dir:
                while waiting:  # what the last part listed and no member carried: held
                    yield (*waiting.popleft(), None)
                waiting.extend(self._read_part(member)["chunks"])
                member = next(self._members, None)
                continue
            if not waiting:
                if member is None:
                    break
                raise InvalidInput(f"tar member {member.name[:80]!r} is not a chunk its recipe part lists next")
            cid, size = waiting.popleft()
            if member is not None and member.name == cid:
                _check_chunk(member)
                yield cid, size, self._tar.read_member()
                member = next(self._members, None)
            else:
                yield cid, size, None
        self._tar.finish()

    def _read_part(self, member: Member) -> dict:
        """A recipe.json member, checked: {"chunks": [(id, size), ...], ...}."""
        self._recipe_bytes += member.size
        if self._recipe_bytes > MAX_RECIPE:
            raise InvalidInput(f"the recipe parts of one upload are at most {MAX_RECIPE} bytes")
        try:
            doc = json.loads(self._tar.read_small())
            doc["chunks"] = [(parse_sha256(cid), size) for cid, size in doc["chunks"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(f"recipe.json is not a recipe: {exc}"[:300]) from exc
        if not doc["chunks"] or any(type(n) is not int or not 0 < n <= chunking.MAX_SIZE for _, n in doc["chunks"]):
            raise InvalidInput(f"a recipe part lists 1 or more chunks of 1 to {chunking.MAX_SIZE} bytes")
        return doc


def _check_chunk(member: Member) -> None:
    if member.is_dir or member.size > chunking.MAX_SIZE or member.size == 0:
        raise InvalidInput(f"tar member {member.name[:80]!r} is not a chunk")
