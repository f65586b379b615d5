"""A local cache of file digests, so re-ingesting an unchanged run does not re-hash it.

Keyed by absolute path, size, mtime (ns), inode and device: any change to the
file changes one of them. Kept outside the run directory (default
$XDG_CACHE_HOME/artifact-store/hashes.sqlite3) so the run is never modified.

It also remembers which finalized packages were found to hold exactly a run's
files (``matched``): a finalized package never changes, and its manifest
digest names its content, so the same files (the same paths with the same
digests) against the same manifest digest need not be compared again. An
unchanged re-ingest then asks the service for the package only, not for its
manifest (a tenth of its time for 1,500 files).
"""

from __future__ import annotations

import hashlib
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
        self._db.execute("""CREATE TABLE IF NOT EXISTS matched (
            package_id TEXT PRIMARY KEY, manifest_digest TEXT, files TEXT)""")

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

    def matched(self, package_id: str, manifest_digest: str, digests: dict[str, str]) -> bool:
        """Whether package ``package_id``, at ``manifest_digest``, was found to hold exactly these
        files (path -> sha256) before."""
        if self._db is None:
            return False
        with self._lock:
            row = self._db.execute("SELECT manifest_digest, files FROM matched WHERE package_id = ?",
                                   (package_id,)).fetchone()
        return row == (manifest_digest, _listing(digests))

    def store_match(self, package_id: str, manifest_digest: str, digests: dict[str, str]) -> None:
        """Remember that the finalized package holds exactly these files (compared with its manifest)."""
        if self._db is None:
            return
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO matched VALUES (?, ?, ?)",
                             (package_id, manifest_digest, _listing(digests)))
            self._db.commit()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


def _listing(digests: dict[str, str]) -> str:
    """One digest of a set of files: SHA-256 over their sorted (path, sha256) lines (a logical
    path holds no NUL or newline: casstore.paths)."""
    lines = "".join(f"{path}\0{digests[path]}\n" for path in sorted(digests))
    return hashlib.sha256(lines.encode()).hexdigest()
