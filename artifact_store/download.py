"""``artifact-store download``: a finalized package onto a local folder, every byte checked.

1. fetch the package and its manifest; the manifest's SHA-256 must be the
   manifest digest the store records (else nothing is written);
2. for every file of the manifest: a file already at its path with the
   manifest's size and SHA-256 is kept (so a second run resumes); otherwise
   its bytes are streamed into ``DEST/.artifact-store-partial/<sha256 of the
   path>`` while hashed (what an interrupted run left there is continued with
   a byte range) and moved into place only when they hash to the manifest's
   SHA-256;
3. print one JSON line; exit 0 when every file is verified, 1 naming every
   file that is not (damaged on the backend, cut short, unwritable).

Paths come from the manifest and are checked by the same rules the store
applies (casstore.paths), and again against escaping DEST, before any write.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from casstore.errors import InvalidPath
from casstore.models import PackageStatus
from casstore.paths import validate_path

from .producer.client import ApiError, StoreClient, Unreachable

BLOCK = 1 << 20
PARTIAL_DIR = ".artifact-store-partial"


class DownloadError(Exception):
    """The package cannot be downloaded at all (exit status 2 for the request, 1 for integrity)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Outcome:
    files: int = 0
    bytes: int = 0
    downloaded: int = 0
    kept: int = 0
    failed: list[str] = field(default_factory=list)  # "path: why"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(BLOCK):
            digest.update(chunk)
    return digest.hexdigest()


class Downloader:
    def __init__(self, client: StoreClient, package_id: str, dest: Path, jobs: int = 4) -> None:
        self.client = client
        self.package_id = package_id
        self.dest = dest
        self.jobs = max(1, jobs)

    def manifest(self) -> tuple[dict, bytes, dict]:
        """(package, manifest bytes, parsed manifest), the bytes checked against the digest."""
        try:
            package = self.client.package(self.package_id)
        except ApiError as exc:
            raise DownloadError(f"package {self.package_id}: {exc}", 2) from exc
        if not package.get("manifest_digest") or package.get("status") != PackageStatus.FINALIZED:
            raise DownloadError(f"package {self.package_id} is {package.get('status')}: only a finalized "
                                f"package can be downloaded", 2)
        response = self.client.stream(f"/v1/packages/{self.package_id}/manifest")
        data = response.read()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if digest != package["manifest_digest"]:
            raise DownloadError(f"the manifest of {self.package_id} hashes to {digest}, not to its manifest digest "
                                f"{package['manifest_digest']}: nothing was written", 1)
        return package, data, json.loads(data)

    def target(self, path: str) -> Path:
        validate_path(path)
        target = (self.dest / path).resolve()
        if not target.is_relative_to(self.dest.resolve()):
            raise InvalidPath(f"{path!r} would be written outside {self.dest}")
        return target

    def one(self, entry: dict) -> str | None:
        """Make the file at ``entry['path']`` hold the manifest's bytes; None, or why it could not."""
        path, want, size = entry["path"], entry["sha256"], entry["size"]
        try:
            target = self.target(path)
            if target.is_file() and target.stat().st_size == size and sha256_of(target) == want:
                return "kept"
            target.parent.mkdir(parents=True, exist_ok=True)
            part = self.partial(path)
            got = self._fetch(path, part, size)
            if got != want:
                part.unlink(missing_ok=True)
                return f"sha256 {got} received, {want} in the manifest"
            os.replace(part, target)
            return "downloaded"
        except (ApiError, Unreachable, OSError, InvalidPath) as exc:
            self.client.reset()
            return f"{type(exc).__name__}: {exc}"

    def partial(self, path: str) -> Path:
        """Where a file's bytes wait until they are checked: named by the path's SHA-256 in a folder
        of DEST (any name beside the file could be another file of the package)."""
        folder = self.dest / PARTIAL_DIR
        folder.mkdir(exist_ok=True)
        return folder / hashlib.sha256(path.encode("utf-8")).hexdigest()

    def _fetch(self, path: str, part: Path, size: int) -> str:
        """Stream the file into ``part`` (continuing what an earlier run left there); its SHA-256."""
        digest = hashlib.sha256()
        have = part.stat().st_size if part.is_file() else 0
        if have > size:
            part.unlink()
            have = 0
        if have:
            with open(part, "rb") as f:
                while chunk := f.read(BLOCK):
                    digest.update(chunk)
        url = f"/v1/packages/{self.package_id}/files/{quote(path, safe='/')}"
        if have == size:  # all there already (or an empty file: nothing to fetch)
            part.touch()
            return digest.hexdigest()
        response = self.client.stream(url, headers={"Range": f"bytes={have}-"} if have else None)
        if response.status != 206 and have:  # the range was not honoured: start again
            digest, have = hashlib.sha256(), 0
        with open(part, "ab" if have else "wb") as out:
            while chunk := response.read(BLOCK):
                digest.update(chunk)
                out.write(chunk)
        return digest.hexdigest()

    def run(self) -> tuple[dict, Outcome]:
        package, _, manifest = self.manifest()
        self.dest.mkdir(parents=True, exist_ok=True)
        outcome = Outcome(files=len(manifest["files"]), bytes=sum(f["size"] for f in manifest["files"]))
        with ThreadPoolExecutor(self.jobs) as pool:
            for entry, result in zip(manifest["files"], pool.map(self.one, manifest["files"])):
                if result == "kept":
                    outcome.kept += 1
                elif result == "downloaded":
                    outcome.downloaded += 1
                else:
                    outcome.failed.append(f"{entry['path']}: {result}")
        try:
            (self.dest / PARTIAL_DIR).rmdir()  # gone once every file is in place
        except OSError:
            pass
        return package, outcome


def download(url: str, package_id: str, dest: Path, jobs: int = 4) -> tuple[int, dict | None, list[str]]:
    """(exit status, the JSON line or None, messages for stderr)."""
    client = StoreClient(url, actor="artifact-store-download")
    try:
        package, outcome = Downloader(client, package_id, dest, jobs).run()
    except DownloadError as exc:
        return exc.status, None, [f"error: {exc}"]
    except Unreachable as exc:
        return 1, None, [f"error: the service could not be reached: {exc}"]
    result = {"package_id": package["id"], "manifest_digest": package["manifest_digest"],
              "files": outcome.files, "bytes": outcome.bytes, "verified": not outcome.failed,
              "downloaded": outcome.downloaded, "kept": outcome.kept, "failed": len(outcome.failed)}
    messages = [f"mismatch: {line}" for line in outcome.failed]
    return (1 if outcome.failed else 0), result, messages
