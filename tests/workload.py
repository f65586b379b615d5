"""A client that churns packages: the workload of the gc race tests (threads and processes alike).

Each round it creates a package of the short-lived class, asks which of its
digests the store lacks, attaches the others by reference (re-uploading any
that gc removed in between: the attach answer names them), uploads the rest
(several as one tar batch, so as one pack; one alone with its SHA-256),
finalizes, keeps the newest ``keep`` packages and deletes the older ones - so
shared blobs keep losing their last reference and coming back, which is exactly when gc and writers race.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import tarfile
import threading

import requests


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class PackageChurn(threading.Thread):
    def __init__(self, urls: list[str], shared: list[bytes], seed: int, stop: threading.Event, errors: list,
                 pace: threading.Semaphore | None = None, keep: int = 2) -> None:
        super().__init__(daemon=True)
        self.urls, self.shared, self.rng = urls, shared, random.Random(seed)
        self.stop, self.errors, self.pace, self.keep = stop, errors, pace, keep
        self.kept: dict[str, dict[str, bytes]] = {}
        self.done = self.deleted = self.reuploads = 0

    def url(self) -> str:
        return self.rng.choice(self.urls)  # several API processes: any may serve any step

    def run(self) -> None:
        http = requests.Session()
        try:
            while not self.stop.is_set():
                if self.pace is None or self.pace.acquire(timeout=0.1):
                    self.one(http)
        except Exception as exc:  # surfaced by the test
            self.errors.append(repr(exc))

    def one(self, http: requests.Session) -> None:
        pkg = http.post(f"{self.url()}/v1/packages",
                        json={"producer": "churn", "retention_class": "transient"}).json()["id"]
        files = {f"shared/{i}": d for i, d in enumerate(self.rng.sample(self.shared, 4))}
        files.update({f"own/{i}": os.urandom(self.rng.randint(1, 4000)) for i in range(2)})
        missing = set(http.post(f"{self.url()}/v1/blobs/missing",
                                json={"digests": [sha(d) for d in files.values()]}).json()["missing"])
        known = [{"path": p, "sha256": sha(d)} for p, d in files.items() if sha(d) not in missing]
        upload = [p for p, d in files.items() if sha(d) in missing]
        if known:
            answer = http.post(f"{self.url()}/v1/packages/{pkg}/attach", json={"files": known})
            assert answer.status_code == 200, answer.text
            lost = set(answer.json()["missing"])  # gc took it between our question and the attach
            raced = [i["path"] for i in known if i["sha256"] in lost]
            self.reuploads += len(raced)
            upload += raced
        if len(upload) > 1:  # a tar batch: its new blobs become one pack, racing with gc like any blob
            r = http.post(f"{self.url()}/v1/packages/{pkg}/tar", data=tar_of({p: files[p] for p in upload}),
                          headers={"Content-Type": "application/x-tar"})
            assert r.status_code == 201, r.text
        for path in upload if len(upload) == 1 else []:
            r = http.put(f"{self.url()}/v1/packages/{pkg}/files/{path}", data=files[path],
                         headers={"X-Checksum-Sha256": sha(files[path])})
            assert r.status_code == 201, r.text
        done = http.post(f"{self.url()}/v1/packages/{pkg}/finalize")
        assert done.status_code == 200 and done.json()["file_count"] == len(files), done.text
        self.kept[pkg] = files
        while len(self.kept) > self.keep:
            oldest = next(iter(self.kept))
            r = http.delete(f"{self.url()}/v1/packages/{oldest}", params={"reason": "churn"})
            assert r.status_code == 200, r.text
            del self.kept[oldest]
            self.deleted += 1
        self.done += 1


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
