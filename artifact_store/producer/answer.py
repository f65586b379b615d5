"""What an ingest ends with: the one JSON line it prints, or IngestConflict; and the answer for
a run the store holds already, known from the hash cache and the package alone.

Apart from ingest.py so that an unchanged re-ingest, the most frequent kind (a producer
ingests after every run, and again after any doubt), loads neither the uploader nor its
thread pools (concurrent.futures and the logging it imports, the chunker, tar): about
8 ms, a tenth of it; most of the rest is Python's start and http.client.
"""

from __future__ import annotations

from .hashcache import HashCache
from .rundir import RunDir


class IngestConflict(Exception):
    """The run id is already finalized with other content (exit status 2, nothing changed)."""


def answer(package: dict, run: RunDir, base_url: str, new_bytes: int) -> dict:
    """The line ``ingest`` prints: the package as the service answered, and what this run sent."""
    return {
        "package_id": package["id"],
        "manifest_digest": package["manifest_digest"],
        "run_id": run.run_id,
        "files": package["file_count"],
        "bytes": package["total_bytes"],
        "new_bytes": new_bytes,
        "retention_class": package["retention_class"],
        "expires_at": package["expires_at"],
        "url": package.get("url") or f"{base_url}/v1/packages/{package['id']}",  # the public one
        "skipped_links": len(run.links),
    }


def held_already(run: RunDir, found, cache: HashCache, base_url: str) -> dict | None:
    """The answer for a run whose finalized package was found before to hold exactly its files
    (ingest.py's step 2, where a match is remembered): every file's digest is in the cache and
    the package, looked up by ``found`` (its ``result()``), is finalized at the manifest digest
    of that match. None when any of that is not so: the ingest proper then decides."""
    if found is None:
        return None
    digests = cache.lookup(run.files)
    if len(digests) < len(run.files):
        return None
    package = found.result()
    if package is None or package["status"] != "finalized":
        return None
    if not cache.matched(package["id"], package["manifest_digest"], digests):
        return None
    return answer(package, run, base_url, new_bytes=0)
