"""zipstream-ng with one fixed timestamp, so the same package always zips to the same bytes.

zipstream-ng (stored entries, data descriptors, zip64 where a size needs it,
and the archive's length known before streaming) stamps each entry with the
current local time and has no option to choose it. Its local header carries
the time in bytes 10-13 (DOS time, DOS date) and its central directory takes
it from the entry's ZipInfo: both are set here to the package's finalization
time, the way reproducible-build tools pin zip timestamps.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from datetime import datetime, timezone

from zipstream import ZIP_STORED, ZipStream

DOS_TIME_AT = slice(10, 14)


class FixedTimeZip(ZipStream):
    def __init__(self, when: datetime) -> None:
        super().__init__(compress_type=ZIP_STORED, sized=True)
        utc = when.astimezone(timezone.utc)
        self._date_time = (max(utc.year, 1980), utc.month, utc.day, utc.hour, utc.minute, utc.second)
        year, month, day, hour, minute, second = self._date_time
        self._dos = struct.pack("<HH", hour << 11 | minute << 5 | second // 2, (year - 1980) << 9 | month << 5 | day)
        self._filelist = _Directory()

    def _gen_file_entry(self, **kwargs):
        first = True
        for chunk in super()._gen_file_entry(**kwargs):
            if first:  # the local file header
                chunk = chunk[:DOS_TIME_AT.start] + self._dos + chunk[DOS_TIME_AT.stop:]
                first = False
            yield chunk
        self._filelist.seal(self._date_time)


class _Directory:
    """The central directory of the entries streamed so far, in the place of ZipStream's
    list of ZipInfo (~500 bytes each): each entry's record (~50 bytes + its name), made once
    its data is written (then final) and kept in one buffer. ZipStream appends, counts and,
    in its footer, iterates it (each item's ``_central_directory_header_data``); its
    info_list() and get_info(), which read ZipInfos, are not used here."""

    PIECE = 1 << 20  # bytes of records the footer is handed at a time

    def __init__(self) -> None:
        self._records = bytearray()
        self._count = 0
        self._pending = None  # the entry just streamed, until its time is pinned

    def append(self, zinfo) -> None:
        self._pending = zinfo

    def seal(self, date_time: tuple) -> None:
        self._pending.date_time = date_time
        self._records += self._pending._central_directory_header_data()
        self._pending = None
        self._count += 1

    def __len__(self) -> int:
        return self._count

    def __iter__(self):
        for at in range(0, len(self._records), self.PIECE):
            yield _Records(bytes(self._records[at:at + self.PIECE]))


class _Records:
    """Central directory records as the footer asks for them."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def _central_directory_header_data(self) -> bytes:
        return self.data


def zip_length(entries: Iterable[tuple[str, int]]) -> int:
    """The length of the zip of these (name, size) entries, counted the way a sized
    ``ZipStream.add`` counts each, but without queueing them: queued, every file held a
    dict and a generator until streamed (~50 MiB for 100,000 files). The stream is then
    fed one file at a time (``ArchiveService._zip_bytes``)."""
    sizer = ZipStream(compress_type=ZIP_STORED, sized=True)
    for name, size in entries:
        sizer._add_size_from_file(name, size)  # what add() calls; there is no public form
    return len(sizer)
