"""Helpers every test module shares (and the only module tests import besides conftest).

- HTTP: ``LiveServer`` (the app under a real threaded server, in process) and
  ``ServerProcess`` (``artifact-store serve`` under gunicorn, for tests that kill it);
- answers: ``assert_problem``, ``counts``;
- bodies: ``sha``, ``make_tar``;
- commands: ``cli`` (an operator command as a process), ``environment`` (the
  settings of a process over PostgreSQL and S3);
- backends: ``S3_SERVERS`` (SeaweedFS as "s3", Ceph RGW as "rgw", each named by
  ARTIFACT_STORE_TEST_<NAME>_ENDPOINT), ``BACKENDS``, ``S3_PARAMS``, ``make_storage``,
  ``remaining_keys``, ``leave_stray_write``, ``s3_url``;
- load: ``PackageChurn``, the workload of the gc race tests;
- tokens: ``make_token`` (through the service), ``bearer`` (the header).
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, text
from werkzeug.serving import WSGIRequestHandler, make_server

from api import create_app
from casstore.config import S3Options
from casstore.storage import LocalStorage, S3Storage, open_storage
from casstore.store import Store

ROOT = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("ARTIFACT_STORE_TEST_DATABASE_URL", "")
EXAMPLE_RUN = ROOT.parent / "shared" / "guide-board" / "example-cmis-pilot-run"
PROBLEM = "application/problem+json"


def pg_url(name: str) -> str:
    """The URL of database ``name`` on the test PostgreSQL server."""
    return PG_URL.rsplit("/", 1)[0] + "/" + name


@contextmanager
def pg_database(prefix: str, template: str | None = None) -> Iterator[str]:
    """A new database on the test PostgreSQL server (a copy of ``template`` if given), dropped
    (connections and all) afterwards; yields its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
        yield name
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_problem(response, status):
    """The answer is an RFC 9457 problem with this status; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == PROBLEM
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


def counts(store):
    """Rows per table that a refused request must leave unchanged."""
    with store.db.engine.connect() as conn:
        return {t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar()
                for t in ("package", "file_entry", "blob", "audit_event")}


def requests_by_route(server) -> dict[tuple[str, str], float]:
    """(method, route) -> requests answered so far, from the served /metrics."""
    counts: dict[tuple[str, str], float] = {}
    for line in server.http.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith("artifact_store_http_requests_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            key = (labels["method"], labels["route"])
            counts[key] = counts.get(key, 0) + float(line.rsplit(" ", 1)[1])
    return counts


def make_tar(files: dict[str, bytes], pax: dict[str, dict] | None = None) -> bytes:
    """A PAX tar of these files (with optional per-member PAX headers), made by tarfile."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.pax_headers = (pax or {}).get(path, {})
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class CommandResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """Both streams, for a failing assertion's message."""
        return self.stdout + self.stderr


def invoke(args: list[str], env: dict[str, str | None] | None = None) -> CommandResult:
    """``artifact-store ARGS`` run in this process (artifact_store.cli.main), with these environment
    variables set (None: unset) for its duration; its exit status and what it printed."""
    from artifact_store.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = {name: os.environ.get(name) for name in env or {}}
    _set_environ(env or {})
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:
                code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    finally:
        _set_environ(saved)
    return CommandResult(code, out.getvalue(), err.getvalue())


def _set_environ(values: dict[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def cli(env_or_settings, *args: str, timeout: float = 600) -> CommandResult | subprocess.CompletedProcess:
    """Run ``artifact-store ARGS`` on a Settings' database and data dir (in process, as nothing
    here needs a process boundary), or as a process with an env dict (for tests where the process
    boundary is the point: several processes over one database)."""
    if isinstance(env_or_settings, dict):
        return subprocess.run([sys.executable, "-m", "artifact_store.cli", *args],
                              env={**os.environ, **env_or_settings}, capture_output=True, text=True, cwd=ROOT,
                              timeout=timeout)
    return invoke(list(args), {"ARTIFACT_STORE_DATA_DIR": env_or_settings.data_dir,
                               "ARTIFACT_STORE_DATABASE_URL": env_or_settings.database_url,
                               "ARTIFACT_STORE_STORAGE_URL": None})


def environment(database_url: str, tmp_path: Path, backend: str = "s3") -> dict:
    """The settings of a server or command process over this database and a fresh prefix of
    the S3 server ``backend`` names (a key of S3_SERVERS: "s3" SeaweedFS, "rgw" Ceph RGW)."""
    return {"ARTIFACT_STORE_DATA_DIR": str(tmp_path / "data"), "ARTIFACT_STORE_DATABASE_URL": database_url,
            **S3_SERVERS[backend].env()}


# ---------------------------------------------------------------- servers

class RawPathHandler(WSGIRequestHandler):
    """Werkzeug's dev server, but PATH_INFO carries the raw percent-decoded bytes as gunicorn's does.

    The dev server decodes the path as UTF-8 with replacement characters before
    the app sees it; gunicorn (what ``artifact-store serve`` runs) does not, and
    the app relies on that to refuse paths that are not UTF-8.
    """

    def make_environ(self):
        from urllib.parse import unquote_to_bytes, urlsplit

        environ = super().make_environ()
        environ["PATH_INFO"] = unquote_to_bytes(urlsplit(self.path).path).decode("latin-1")
        return environ


class LiveServer:
    """The app under a real threaded HTTP server on loopback."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.app = create_app(store=store)
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True,
                                  request_handler=RawPathHandler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        self.http = requests.Session()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.http.close()

    # small conveniences for tests
    def create(self, **body) -> dict:
        body.setdefault("producer", "test")
        response = self.http.post(f"{self.url}/v1/packages", json=body)
        assert response.status_code == 201, response.text
        return response.json()

    def file_url(self, package_id: str, path: str) -> str:
        from urllib.parse import quote

        return f"{self.url}/v1/packages/{package_id}/files/{quote(path, safe='/')}"

    def put(self, package_id: str, path: str, data: bytes, **kwargs) -> requests.Response:
        return self.http.put(self.file_url(package_id, path), data=data, **kwargs)

    def get(self, package_id: str, path: str, **kwargs) -> requests.Response:
        return self.http.get(self.file_url(package_id, path), **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, env: dict, workers: int = 2, port: int | None = None, log_path: str | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.args = args  # more options of `serve`
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env, "ARTIFACT_STORE_PORT": str(self.port), "ARTIFACT_STORE_HOST": "127.0.0.1"}
        self.workers = workers
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> "ServerProcess":
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "artifact_store.cli", "serve", "--workers", str(self.workers), *self.args],
            env=self.env, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                if requests.get(f"{self.url}/v1/health", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.kill()  # never leave a server behind that no test will stop
        raise RuntimeError("server did not become healthy")

    def kill(self) -> None:
        """SIGKILL the whole process group: master and workers die mid-request, no cleanup."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def worker_pids(self) -> list[int]:
        """The gunicorn workers: the server's own child processes."""
        return sorted(pid for pid in _group_pids(self.proc.pid) if _parent_pid(pid) == self.proc.pid)

    def peak_rss_kib(self) -> int:
        """Largest VmHWM among the server's processes (master + workers), in KiB."""
        peak = 0
        for pid in _group_pids(self.proc.pid):
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            peak = max(peak, int(line.split()[1]))
            except OSError:
                pass
        return peak


def _parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


# ---------------------------------------------------------------- backends

@dataclass(frozen=True)
class S3Server:
    """A real S3-compatible server the test command started, named by environment variables
    ARTIFACT_STORE_TEST_<NAME>_ENDPOINT (and _ACCESS_KEY_ID, _SECRET_ACCESS_KEY, _BUCKET).

    ``copy_if_not_exists`` is what its probe must report (measured: SeaweedFS honours
    obstore's conditional multipart copy; Ceph RGW 16 answers its body-less UploadPartCopy
    with 411 and ignores If-None-Match on CompleteMultipartUpload). Both honour
    PutObject with If-None-Match: *.
    """

    name: str
    what: str
    copy_if_not_exists: bool
    default_keys: tuple[str, str]

    def _var(self, suffix: str, default: str = "") -> str:
        return os.environ.get(f"ARTIFACT_STORE_TEST_{self.name.upper()}_{suffix}", default)

    @property
    def endpoint(self) -> str:
        return self._var("ENDPOINT")

    @property
    def bucket(self) -> str:
        return self._var("BUCKET", "test")

    @property
    def keys(self) -> tuple[str, str]:
        return self._var("ACCESS_KEY_ID", self.default_keys[0]), self._var("SECRET_ACCESS_KEY", self.default_keys[1])

    def skip_unless_running(self) -> None:
        if not self.endpoint:
            pytest.skip(f"no {self.what} (set ARTIFACT_STORE_TEST_{self.name.upper()}_ENDPOINT; scripts/test "
                        f"starts one)")

    def options(self, **overrides) -> S3Options:
        access, secret = self.keys
        values = dict(endpoint=self.endpoint, region="us-east-1", access_key_id=access, secret_access_key=secret,
                      allow_http=True, part_size=5 << 20, timeout_s=30, retries=2)
        values.update(overrides)
        return S3Options(**values)

    def url(self, prefix: str | None = None) -> str:
        return f"s3://{self.bucket}/{prefix or 't-' + uuid.uuid4().hex[:12]}"

    def env(self) -> dict:
        """The ARTIFACT_STORE_S3_* settings of a process using a fresh prefix of this server."""
        access, secret = self.keys
        return {"ARTIFACT_STORE_STORAGE_URL": self.url(), "ARTIFACT_STORE_S3_ENDPOINT": self.endpoint,
                "ARTIFACT_STORE_S3_REGION": "us-east-1", "ARTIFACT_STORE_S3_ACCESS_KEY_ID": access,
                "ARTIFACT_STORE_S3_SECRET_ACCESS_KEY": secret, "ARTIFACT_STORE_S3_ALLOW_HTTP": "true",
                "ARTIFACT_STORE_S3_PART_SIZE_MIB": "5"}


S3_SERVERS = {
    "s3": S3Server("s3", "S3-compatible server (SeaweedFS)", True, ("testkey", "testsecret")),
    "rgw": S3Server("rgw", "Ceph RGW", False, ("CEPHTESTACCESSKEY001", "cephtestsecretkey0000000000000000000001")),
}
S3_ENDPOINT = S3_SERVERS["s3"].endpoint  # SeaweedFS, for tests that need any S3 server
BACKENDS = ["local", "memory", *S3_SERVERS]
S3_PARAMS = [pytest.param(name, marks=pytest.mark.skipif(not server.endpoint, reason=f"no {server.what} (set "
                          f"ARTIFACT_STORE_TEST_{name.upper()}_ENDPOINT; scripts/test starts one)"))
             for name, server in S3_SERVERS.items()]


def s3_options(**overrides) -> S3Options:
    return S3_SERVERS["s3"].options(**overrides)


def s3_url(prefix: str | None = None) -> str:
    return S3_SERVERS["s3"].url(prefix)


def make_storage(kind: str, tmp_path, **s3_overrides):
    if kind == "local":
        return LocalStorage(str(tmp_path / "objects"))
    if kind == "memory":
        return open_storage("memory:///")
    if kind in S3_SERVERS:
        server = S3_SERVERS[kind]
        server.skip_unless_running()
        return open_storage(server.url(), s3=server.options(**s3_overrides))
    raise pytest.skip.Exception(f"unknown backend {kind}")


def remaining_keys(storage, folders: bool = False) -> list[str]:
    """Everything still on the backend: objects, writes that never completed (incomplete
    multipart uploads, obstore's local temporaries) and, locally with ``folders``, empty folders
    (obstore leaves the folders of deleted objects)."""
    keys = [info.key for info in storage.list("")]
    root = getattr(storage, "root", None)
    if not root:  # locally the walk below shows obstore's temporaries themselves
        keys += [f"(incomplete) {stray.key}" for stray in storage.stray_writes()]
    if root:
        for dirpath, dirs, files in os.walk(root):
            for name in files:
                rel = os.path.relpath(os.path.join(dirpath, name), root)
                if rel not in keys:
                    keys.append(rel)
            if folders and not dirs and not files and dirpath != root:
                keys.append(os.path.relpath(dirpath, root) + "/ (empty folder)")
    return sorted(keys)


def leave_stray_write(storage, key: str) -> bool:
    """Leave what a killed upload leaves: a started multipart upload (S3), a temporary file (local)."""
    if isinstance(storage, S3Storage):
        client = storage._client()
        full = f"{storage.prefix}/{key}" if storage.prefix else key
        upload = client.create_multipart_upload(Bucket=storage.bucket, Key=full)
        client.upload_part(Bucket=storage.bucket, Key=full, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 100)
        return True
    root = getattr(storage, "root", None)
    if root:
        path = os.path.join(root, key + "#1")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"half a blob")
        return True
    return False


# ---------------------------------------------------------------- load

def make_token(store: Store, role: str, name: str | None = None, producers: list[str] | None = None,
               **kwargs) -> str:
    """A new token's secret, made through the service (as `artifact-store token create` does)."""
    _, secret = store.tokens.create(name=name or f"{role}-{uuid.uuid4().hex[:8]}", role=role,
                                    producers=producers or [], actor="test", **kwargs)
    return secret


def bearer(token: str | None) -> dict:
    return {"Authorization": f"Bearer {token}"} if token else {}


class PackageChurn(threading.Thread):
    """Packages made, finalized and deleted in a loop, sharing blobs (and, with ``big``, the
    chunks of large files: every ``big_every``-th package holds one, a shared base plus its own
    tail, sent alternately by PUT and by the CLI's chunked upload). With tokens, ingestion uses
    ``producer_token`` and deletion ``operator_token``, as a CI runner and an operator would."""

    def __init__(self, urls: list[str], shared: list[bytes], seed: int, stop: threading.Event, errors: list,
                 pace: threading.Semaphore | None = None, keep: int = 2, big: list[bytes] | None = None,
                 big_every: int = 4, workdir: Path | None = None, producer_token: str | None = None,
                 operator_token: str | None = None) -> None:
        super().__init__(daemon=True)
        self.urls, self.shared, self.rng = urls, shared, random.Random(seed)
        self.stop, self.errors, self.pace, self.keep = stop, errors, pace, keep
        self.big, self.big_every, self.workdir = big or [], big_every, workdir
        self.producer_token = producer_token
        self.producer, self.operator = bearer(producer_token), bearer(operator_token)
        self.kept: dict[str, dict[str, bytes]] = {}
        self.done = self.deleted = self.reuploads = self.chunk_races = self.big_files = 0

    def url(self) -> str:
        return self.rng.choice(self.urls)  # several API processes: any may serve any step

    def run(self) -> None:
        http = requests.Session()
        http.headers.update(self.producer)
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
            r = http.post(f"{self.url()}/v1/packages/{pkg}/tar", data=make_tar({p: files[p] for p in upload}),
                          headers={"Content-Type": "application/x-tar"})
            assert r.status_code == 201, r.text
        for path in upload if len(upload) == 1 else []:
            r = http.put(f"{self.url()}/v1/packages/{pkg}/files/{path}", data=files[path],
                         headers={"X-Checksum-Sha256": sha(files[path])})
            assert r.status_code == 201, r.text
        if self.big and self.done % self.big_every == 0:
            files["big/capture.bin"] = self.send_big(http, pkg)
        done = http.post(f"{self.url()}/v1/packages/{pkg}/finalize")
        assert done.status_code == 200 and done.json()["file_count"] == len(files), done.text
        self.kept[pkg] = files
        while len(self.kept) > self.keep:
            oldest = next(iter(self.kept))
            r = http.delete(f"{self.url()}/v1/packages/{oldest}", params={"reason": "churn"},
                            headers=self.operator)
            assert r.status_code == 200, r.text
            del self.kept[oldest]
            self.deleted += 1
        self.done += 1

    def send_big(self, http: requests.Session, pkg: str) -> bytes:
        """A large file (chunked by the store): a shared base and a tail of its own. A 409 naming
        missing chunks (gc took a chunk the upload skipped) is answered by sending again."""
        from artifact_store.producer import chunked
        from artifact_store.producer.client import StoreClient

        data = self.rng.choice(self.big) + os.urandom(self.rng.randint(1, 300_000))
        self.big_files += 1
        if self.big_files % 2 and self.workdir is not None:
            path = self.workdir / f"{self.name}.bin"
            path.write_bytes(data)
            client = StoreClient(self.url(), token=self.producer_token)
            chunked.upload(client, pkg, "big/capture.bin", str(path), sha(data), False,
                           races=self)
            return data
        for _ in range(10):
            r = http.put(f"{self.url()}/v1/packages/{pkg}/files/big/capture.bin", data=data,
                         headers={"X-Checksum-Sha256": sha(data)})
            if r.status_code == 409 and r.json().get("missing_chunks"):
                self.chunk_races += 1
                continue
            assert r.status_code == 201, r.text
            return data
        raise AssertionError("a large file lost its chunks to gc ten times in a row")


# ---------------------------------------------------------------- docs

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH")


@dataclass(frozen=True)
class DocBlock:
    """One fenced block of a markdown file: where it starts, its language, its text, and the name
    of the ``<!-- NAME:start -->`` marker right above it (how tests find the blocks they run)."""

    doc: Path
    line: int
    lang: str
    text: str
    name: str | None

    def __str__(self) -> str:
        return f"{self.doc.name}:{self.line}" + (f" ({self.name})" if self.name else "")


def doc_blocks(doc: Path) -> list[DocBlock]:
    blocks, lines, i = [], doc.read_text().splitlines(keepends=True), 0
    while i < len(lines):
        opening = re.match(r"^(```+)(\S*)\s*$", lines[i])
        if not opening:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].rstrip() == opening.group(1))
        above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = re.match(r"^<!-- ([\w-]+):start -->\s*$", above)
        blocks.append(DocBlock(doc, i + 1, opening.group(2), "".join(lines[i + 1:end]),
                               marker.group(1) if marker else None))
        i = end + 1
    return blocks


def doc_block(doc: Path, name: str) -> str:
    """The text of the block marked ``<!-- name:start -->`` (and closed by ``<!-- name:end -->``)."""
    found = [b for b in doc_blocks(doc) if b.name == name]
    assert len(found) == 1 and f"<!-- {name}:end -->" in doc.read_text(), \
        f"{doc.relative_to(ROOT)} lost its {name} block"
    return found[0].text


def run_doc_block(doc: Path, name: str, cwd: Path, env: dict | None = None, script_dir: Path | None = None,
                  strict: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a marked shell block of a doc with bash, exactly as written, in ``cwd``, with the venv's
    ``artifact-store`` first on PATH. ``strict`` runs it under ``bash -eu -o pipefail`` (for blocks
    that are a list of commands rather than a script with its own ``set -eu``)."""
    script = (script_dir or cwd) / f"{name}.sh"
    script.write_text(doc_block(doc, name))
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    options = ["-eu", "-o", "pipefail"] if strict else []
    return subprocess.run(["bash", *options, str(script)], cwd=cwd, env={**os.environ, "PATH": path, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def _prose(doc: Path) -> str:
    """The text of a doc outside its fenced blocks (the lines of each block blanked)."""
    lines = doc.read_text().splitlines()
    for block in doc_blocks(doc):
        for i in range(block.line - 1, block.line + block.text.count("\n") + 1):
            lines[i] = ""
    return "\n".join(lines)


def inline_code(doc: Path) -> list[str]:
    """Every inline code span of the prose and tables (a span may wrap a line; ``\\|`` in a
    table cell is a ``|``), white space collapsed."""
    return [" ".join(span.replace("\\|", "|").split()) for span in re.findall(r"`([^`\n]+(?:\n[^`\n]+)*)`",
                                                                               _prose(doc))]


def shell_commands(text: str) -> list[list[str]]:
    """The simple commands of a shell text, as words: lines joined at ``\\``, comments and heredoc
    bodies left out, split at pipes, ``;``, ``&&``, ``||`` and ``$( )``, leading ``VAR=value``
    assignments dropped."""
    import shlex

    commands, lines = [], text.replace("\\\n", " ").splitlines()
    heredoc = None
    for line in lines:
        if heredoc:
            heredoc = None if line.strip() == heredoc else heredoc
            continue
        found = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line)
        heredoc = found.group(1) if found else None
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        try:
            words = list(lexer)
        except ValueError:  # not shell (an output line shown in a block)
            continue
        current: list[str] = []
        for word in [*words, ";"]:
            if word and all(c in "|;&()<>" for c in word):
                if current:
                    commands.append(current)
                current = []
            elif not current and re.match(r"^\w+=", word):
                continue  # VAR=value before a command (or "VAR=$" before a substitution)
            else:
                current.append(word)
    return commands


def documented_commands(doc: Path, program: str = "artifact-store",
                        subcommands: frozenset[str] = frozenset()) -> list[tuple[str, list[str], bool]]:
    """Every ``program ...`` command a doc shows: (where, words, literal). Lines of shell blocks are
    literal command lines; inline spans in prose are often synopses (``[--x]``, ``(a | b)``, ``N``).
    A span of two words or more that starts with one of ``subcommands`` (``token revoke ID``,
    ``verify --repair-staging AGE``) is that program's command too."""
    found = []
    for block in doc_blocks(doc):
        if block.lang in ("sh", "bash", "shell", ""):
            found += [(str(block), words, True) for words in shell_commands(block.text) if words[0] == program]
    for span in inline_code(doc):
        words = re.sub(r"^\w+=\S+ ", "", span).split()
        if len(words) > 1 and words[0] in subcommands:
            words = [program, *words]
        if len(words) > 1 and words[0] == program:
            found.append((f"{doc.name}: `{span}`", words, False))
    return found


def _curl_request(words: list[str]) -> tuple[str, str] | None:
    """(method, URL) of a curl command, as curl decides the method."""
    takes_value = {"-o", "--output", "-H", "--header", "-d", "--data", "--data-binary", "--data-raw", "-K",
                   "--config", "-C", "-w", "-u", "-T", "-F", "-X", "--request", "-m", "--max-time", "-A", "-e"}
    method, url, i = None, None, 1
    data = False
    while i < len(words):
        word = words[i]
        if word in ("-X", "--request"):
            method = words[i + 1]
        elif word.startswith("-X") and len(word) > 2:
            method = word[2:]
        elif word in ("-I", "--head"):
            method = "HEAD"
        elif word in ("-d", "--data", "--data-binary", "--data-raw", "-F"):
            data = True
        elif word == "-T":
            method = method or "PUT"
        if word in takes_value:
            i += 2
            continue
        if not word.startswith("-") and url is None:
            url = word
        i += 1
    return (method or ("POST" if data else "GET"), url) if url else None


def documented_requests(doc: Path) -> list[tuple[str, str, str]]:
    """Every HTTP request a doc shows: (where, METHOD, path[?query]). From ``METHOD /path`` spans
    (``GET``/``HEAD /p`` names both), security.md's table rows, and curl commands (``$URL``, a host
    or ``localhost:PORT`` stripped; ``$LINK``, and statehub.md's ``url`` and ``...``, are a package's
    URL, ``/v1/packages/{id}``)."""
    package = "/v1/packages/{id}"
    found = []
    methods = "|".join(HTTP_METHODS)
    prose = _prose(doc)
    for first, second, path in re.findall(rf"`({methods})`/`({methods}) ([^`]+)`", prose):
        found += [(f"{doc.name}: `{m} {path}`", m, path) for m in (first, second)]
    for span in inline_code(doc):
        request = re.match(rf"^({methods}) (\S+)$", span)
        if request:
            found.append((f"{doc.name}: `{span}`", request.group(1), request.group(2)))
    for method, path in re.findall(rf"^\| `({methods})` \| `(/[^`]*)` \|", prose, re.M):
        found.append((f"{doc.name}: table row {method} {path}", method, path))
    spans = [(f"{doc.name}: `{s}`", s) for s in inline_code(doc) if s.startswith("curl ")]
    texts = [(str(b), b.text) for b in doc_blocks(doc) if b.lang in ("sh", "bash", "")] + spans
    for where, shown in texts:
        for words in shell_commands(shown):
            request = _curl_request(words) if words[0] == "curl" else None
            if request:
                method, url = request
                path = re.sub(r"^(https?://[^/]+|\$\{?URL\}?|localhost:\d+|127\.0\.0\.1:\d+)", "", url)
                found.append((f"{where}: curl {method} {url}", method, re.sub(r"^\$\{?LINK\}?", package, path)))
    return [(where, method, re.sub(r"^(url|\.\.\.)(?=/|$)", package, path)) for where, method, path in found]


def documented_variables(doc: Path, prefixes: tuple[str, ...] = ("ARTIFACT_STORE_", "AWS_")) -> list[str]:
    """Every environment variable with one of these prefixes a doc names; a name ending in ``_``
    (``ARTIFACT_STORE_TEST_*``) stands for a family. ``_SUFFIX`` spans on a line naming an
    ``ARTIFACT_STORE_S3_`` variable are shorthand for ``ARTIFACT_STORE_S3_SUFFIX``."""
    names = []
    for line in doc.read_text().splitlines():
        for prefix in prefixes:
            names += re.findall(rf"\b{prefix}[A-Z0-9_]*", line)
        if "ARTIFACT_STORE_S3_" in line:
            names += ["ARTIFACT_STORE_S3" + s for s in re.findall(r"`(_[A-Z0-9_]+)`", line)]
    return sorted(set(names))
