"""An archive's members held compactly: a few dozen bytes a file, plus its path's UTF-8.

A request's memory is its package's layout (services/archive.py), so the layout
must be small: held as one object per member (a name string, a Location, a
dataclass) with every (blob, location) row in a dict beside it, a 100,000-file
package took a worker from 66 to 173 MiB. Here the members are parallel arrays
(``array`` holds machine integers, not objects): sizes, each member's (object
key number, offset, length), and all paths in one buffer, decoded only when a
member is reached. Locations are looked up BATCH files at a time as the
manifest is parsed, so no dict of every blob is ever held.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Iterator

from ..cas import Location
from ..errors import ObjectMissing

UNPLACED = -1  # no location row (only right for an empty file)
RECIPE = -2  # a chunked file: read through its recipe


class Members:
    """Member 0 is the manifest; member i >= 1 is the manifest's file i - 1, in its order."""

    BATCH = 500  # files whose locations one query looks up (the project's IN-list size)

    def __init__(self, package_id: str, manifest_at: Location) -> None:
        self.package_id = package_id
        self.manifest_at = manifest_at
        self.sizes = array("q", [0])  # the manifest's: counted as it is read (counted())
        self._paths = bytearray()
        self._ends = array("q", [0])  # member i's path is _paths[_ends[i - 1]:_ends[i]]
        # where member i's bytes are: its object key's number in _keys (or UNPLACED, RECIPE), offset, length
        self._key = array("l", [UNPLACED])
        self._offset = array("q", [0])
        self._length = array("q", [0])
        self._keys: list[str] = []  # one string per object (a pack holds many files)
        self._key_numbers: dict[str, int] = {}
        self._recipes: dict[int, Location] = {}  # by member: chunked files (large, so few)

    def __len__(self) -> int:
        return len(self.sizes)

    def counted(self, manifest: Iterable[bytes]) -> Iterator[bytes]:
        """The manifest's bytes, passed through, their number kept as member 0's size."""
        for chunk in manifest:
            self.sizes[0] += len(chunk)
            yield chunk

    def add_files(self, records: Iterable[dict], locate: Callable[[list[str]], Iterable[tuple]]) -> None:
        """Append the manifest's file records, placing them BATCH at a time with ``locate``:
        digests -> rows (sha256, size, chunker, object key, offset, length)."""
        batch: list[str] = []
        for f in records:
            self._paths += f["path"].encode("utf-8", "surrogatepass")
            self._ends.append(len(self._paths))
            self.sizes.append(f["size"])
            batch.append(f["sha256"])
            if len(batch) == self.BATCH:
                self._place(batch, locate)
                batch = []
        self._place(batch, locate)

    def _place(self, digests: list[str], locate: Callable[[list[str]], Iterable[tuple]]) -> None:
        """Record where the last len(digests) members' bytes are; refuse a non-empty file
        with no location."""
        if not digests:
            return
        rows = {row[0]: row for row in locate(sorted(set(digests)))}
        first = len(self) - len(digests)
        for i, digest in enumerate(digests, first):
            key, offset, length = UNPLACED, 0, 0
            row = rows.get(digest)
            if row is not None and row[2] is not None:
                key = RECIPE
                self._recipes[i] = Location.of_recipe(digest, row[1])
            elif row is not None and row[3] is not None:
                key, offset, length = self._key_number(row[3]), row[4], row[5]
            elif self.sizes[i]:
                raise ObjectMissing(f"no location recorded for sha256:{digest} ({self.path(i)})")
            self._key.append(key)
            self._offset.append(offset)
            self._length.append(length)

    def _key_number(self, key: str) -> int:
        number = self._key_numbers.get(key)
        if number is None:
            number = self._key_numbers[key] = len(self._keys)
            self._keys.append(key)
        return number

    def path(self, i: int) -> str:
        return self._paths[self._ends[i - 1]:self._ends[i]].decode("utf-8", "surrogatepass")

    def name(self, i: int) -> str:
        """The member's name in the archive."""
        if i == 0:
            return f"{self.package_id}.manifest.json"
        return f"{self.package_id}/{self.path(i)}"

    def location(self, i: int) -> Location | None:
        if i == 0:
            return self.manifest_at
        key = self._key[i]
        if key >= 0:
            return Location(self._keys[key], self._offset[i], self._length[i])
        return self._recipes[i] if key == RECIPE else None
