"""An archive's members held compactly: a few dozen bytes a file, plus its path's UTF-8.

A request's memory is its package's layout (services/archive.py), so the layout
must be small: held as one object per member (a name string, a Location, a
dataclass) with every (blob, location) row in a dict beside it, a 100,000-file
package took a worker from 66 to 173 MiB. Here the members are parallel arrays
(``array`` holds machine integers, not objects): sizes, each member's distinct
blob, each blob's (pack key number, offset, length), and all paths in one
buffer, decoded only when a member is reached. The digest -> blob dict lives
only while the rows are read, and the manifest's text is gone by then.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ..cas import Location
from ..errors import ObjectMissing

UNPLACED = -1  # no location row (only right for an empty file)
RECIPE = -2  # a chunked file: read through its recipe


@dataclass(slots=True)
class Member:
    """One member, made when it is reached: its name, its size and where its bytes are."""

    name: str
    size: int
    location: Location | None  # None: an empty file with no recorded location


class Members:
    """Member 0 is the manifest; member i >= 1 is the manifest's file i - 1, in its order."""

    def __init__(self, package_id: str, manifest_at: Location) -> None:
        self.package_id = package_id
        self.manifest_at = manifest_at
        self.sizes = array("q", [0])  # the manifest's: counted as it is read (counted())
        self._paths = bytearray()
        self._ends = array("q", [0])  # member i's path is _paths[_ends[i - 1]:_ends[i]]
        self._blob = array("l", [-1])  # member i's blob number
        # per distinct blob (by number): its key's number in _keys (or UNPLACED, RECIPE), offset, length
        self._key = array("l")
        self._offset = array("q")
        self._length = array("q")
        self._keys: list[str] = []  # one string per object (a pack holds many blobs)
        self._recipes: dict[int, Location] = {}

    def __len__(self) -> int:
        return len(self.sizes)

    def counted(self, manifest: Iterable[bytes]) -> Iterator[bytes]:
        """The manifest's bytes, passed through, their number kept as member 0's size."""
        for chunk in manifest:
            self.sizes[0] += len(chunk)
            yield chunk

    def add_files(self, records: Iterable[dict]) -> dict[bytes, int]:
        """Append the manifest's file records; returns each distinct digest's blob number."""
        numbers: dict[bytes, int] = {}
        for f in records:
            self._paths += f["path"].encode("utf-8", "surrogatepass")
            self._ends.append(len(self._paths))
            self.sizes.append(f["size"])
            number = numbers.setdefault(bytes.fromhex(f["sha256"]), len(numbers))
            if number == len(self._key):
                self._key.append(UNPLACED)
                self._offset.append(0)
                self._length.append(0)
            self._blob.append(number)
        return numbers

    def place(self, numbers: dict[bytes, int], rows: Iterable[tuple]) -> None:
        """Record where each blob is from rows (sha256, size, chunker, object key, offset, length),
        then refuse if a non-empty file has no location."""
        key_numbers: dict[str, int] = {}
        for digest, size, chunker, key, offset, length in rows:
            number = numbers.get(bytes.fromhex(digest))
            if number is None:
                continue
            if chunker is not None:
                self._key[number] = RECIPE
                self._recipes[number] = Location.of_recipe(digest, size)
            elif key is not None:
                if key not in key_numbers:
                    key_numbers[key] = len(self._keys)
                    self._keys.append(key)
                self._key[number], self._offset[number], self._length[number] = key_numbers[key], offset, length
        for i in range(1, len(self)):
            if self.sizes[i] and self._key[self._blob[i]] == UNPLACED:
                digest = next(d for d, n in numbers.items() if n == self._blob[i])
                raise ObjectMissing(f"no location recorded for sha256:{digest.hex()} ({self.path(i)})")

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
        number = self._blob[i]
        key = self._key[number]
        if key >= 0:
            return Location(self._keys[key], self._offset[number], self._length[number])
        return self._recipes[number] if key == RECIPE else None

    def __getitem__(self, i: int) -> Member:
        return Member(self.name(i), self.sizes[i], self.location(i))
