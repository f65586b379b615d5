"""A local cache of file digests, so re-ingesting an unchanged run does not re-hash it.

Keyed by absolute path, size, mtime (ns), inode and device: any change to the
file changes one of them. Kept outside the run directory (default
$XDG_CACHE_HOME/artifact-store/hashes.sqlite3) so the run is never modified.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

from .rundir import LocalFile


def default_cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "artifact-store" / "hashes.sqlite3"


class HashCache:
    def __init__(self, path: Path | None) -> None:
        self._lock = threading.Lock()
        self._db = None
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("""CREATE TABLE IF NOT EXISTS digest (
            path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, inode INTEGER, device INTEGER, sha256 TEXT)""")

    def lookup(self, files: list[LocalFile]) -> dict[str, str]:
        """sha256 by logical path for every file whose cached stat still matches."""
        if self._db is None:
            return {}
        rows = {}
        with self._lock:
            for i in range(0, len(files), 500):  # 500 a query: one statement, not one per file
                chunk = [f.abspath for f in files[i:i + 500]]
                rows.update((r[0], r[1:]) for r in self._db.execute(
                    "SELECT path, size, mtime_ns, inode, device, sha256 FROM digest WHERE path IN "
                    f"({','.join('?' * len(chunk))})", chunk))
        found = {}
        for f in files:
            row = rows.get(f.abspath)
            if row and row[:4] == (f.size, f.mtime_ns, f.inode, f.device):
                found[f.path] = row[4]
        return found

    def store(self, items: list[tuple[LocalFile, str]]) -> None:
        if self._db is None or not items:
            return
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO digest VALUES (?, ?, ?, ?, ?, ?)",
                                 [(f.abspath, f.size, f.mtime_ns, f.inode, f.device, d) for f, d in items])
            self._db.commit()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
