"""The lower bound of an ingest: plain Python walks, SHA-256s and copies every file into a folder.

    python bench/lower_bound.py SRC DEST

Run as its own process by the benchmarks, timed from outside exactly like
the CLI it is compared with (both pay for starting an interpreter); also
imported by them to time the same work inside an already running process.
Only the standard library, so the process starts as fast as Python can.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import time
from pathlib import Path

BLOCK = 1 << 20


def hash_and_copy(root: Path, dest: Path) -> float:
    """Seconds to hash and copy every file under ``root`` into ``dest`` (emptied first, untimed)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    started = time.perf_counter()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        target = dest / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with open(path, "rb") as src, open(target, "wb") as out:
            while chunk := src.read(BLOCK):
                digest.update(chunk)
                out.write(chunk)
        digest.hexdigest()
    return time.perf_counter() - started


if __name__ == "__main__":
    src, dest = Path(sys.argv[1]), Path(sys.argv[2])
    if len(sys.argv) > 3 and sys.argv[3] == "--prepare":  # empty DEST, then exit: the timed run starts clean
        shutil.rmtree(dest, ignore_errors=True)
    else:
        hash_and_copy(src, dest)
