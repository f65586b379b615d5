"""A small HTTP client for the artifact-store API (http.client, one keep-alive connection per thread).

http.client rather than a larger library: it starts instantly, streams a
file body in 1 MiB blocks, and keeps the producer's memory flat.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import threading
from urllib.parse import quote, urlencode, urlsplit

TYPE_CHECKING = False  # typing costs 4 ms of every start of the command: only a checker imports it
if TYPE_CHECKING:
    from typing import IO, Any

BLOCK = 1 << 20
PRODUCER = "guide-board"  # the producer name this client's ingest writes packages for


class ApiError(Exception):
    """The service answered with an error (its problem+json document is in ``problem``)."""

    def __init__(self, status: int, problem: dict) -> None:
        super().__init__(f"{status} {problem.get('title', '')}: {problem.get('detail', '')}")
        self.status = status
        self.problem = problem


class Unreachable(Exception):
    """The service could not be reached or dropped the connection."""


def token_from_env(env=None) -> str | None:
    """The bearer token: ARTIFACT_STORE_TOKEN, or the first line of ARTIFACT_STORE_TOKEN_FILE.

    Never a command-line argument: those are visible to every user of the
    host (ps, /proc) and land in shell histories.
    """
    env = os.environ if env is None else env
    token, path = env.get("ARTIFACT_STORE_TOKEN", "").strip(), env.get("ARTIFACT_STORE_TOKEN_FILE", "").strip()
    if token and path:
        raise ValueError("set ARTIFACT_STORE_TOKEN or ARTIFACT_STORE_TOKEN_FILE, not both")
    if path:
        with open(path, encoding="utf-8") as f:
            token = f.readline().strip()
        if not token:
            raise ValueError(f"ARTIFACT_STORE_TOKEN_FILE {path} is empty")
    return token or None


class Pending:
    """``call(*args)`` on a daemon thread; ``result()`` waits for its value or raises its error.

    Not a pool's Future: an exit (a run directory refused while a slow service is being
    asked) must not wait for the call, and concurrent.futures would cost an unchanged
    re-ingest 5 ms to import (answer.py)."""

    def __init__(self, call, *args) -> None:
        self._value, self._error = None, None
        self._thread = threading.Thread(target=self._run, args=(call, args), name=call.__name__, daemon=True)
        self._thread.start()

    def _run(self, call, args) -> None:
        try:
            self._value = call(*args)
        except BaseException as exc:  # handed to whoever asks for the result
            self._error = exc

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def _connect(address, *args) -> socket.socket:
    """socket.create_connection, given an ASCII host name as bytes: given a str, getaddrinfo
    imports the idna codec first, 3 ms of every start of the command."""
    host, port = address
    return socket.create_connection((host.encode() if host.isascii() else host, port), *args)


class StoreClient:
    def __init__(self, base_url: str, actor: str = "artifact-store-cli", timeout: float = 600,
                 token: str | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        # The port always given: http.client would read "::1" of http://[::1]/ as host ":", port 1.
        self._scheme, self._host = parts.scheme, parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._prefix = parts.path.rstrip("/")
        self._actor = actor
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = timeout
        self._local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=self._timeout, blocksize=BLOCK)
            conn._create_connection = _connect  # http.client's own hook for how it connects
            self._local.conn = conn
        return conn

    def request(self, method: str, path: str, *, body: bytes | IO[bytes] | None = None,
                json_body: Any = None, headers: dict | None = None, query: dict | None = None) -> Any:
        """Send one request; return the decoded JSON answer, or raise ApiError / Unreachable.

        ``body`` is bytes, a readable file, or an object with ``send_to(socket)`` that sends
        exactly the Content-Length given in ``headers`` itself (a file region, by sendfile)."""
        headers = {"X-Actor": self._actor, **self._auth, **(headers or {})}
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        url = self._prefix + path + (("?" + urlencode(query)) if query else "")
        conn = self._conn()
        try:
            if hasattr(body, "send_to"):  # a file region: the kernel copies it to the socket (sendfile)
                conn.request(method, url, headers=headers)
                body.send_to(conn.sock)
            else:
                conn.request(method, url, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            self._local.conn = None
            raise Unreachable(f"{method} {self.base_url}{path}: {exc}") from exc
        except BaseException:  # the body's own error (a file that shrank): the request is half sent
            conn.close()
            self._local.conn = None
            raise
        if response.status >= 400:
            try:
                problem = json.loads(data)
            except ValueError:
                problem = {"title": response.reason, "detail": data[:300].decode("utf-8", "replace")}
            raise ApiError(response.status, problem)
        return json.loads(data) if data else None

    # the calls the ingest flow makes ------------------------------------------
    def find_package(self, producer: str, run_id: str) -> dict | None:
        """The live package of this run, if any (the newest one not deleted or failed)."""
        page = self.request("GET", "/v1/packages", query={"producer": producer, "run_id": run_id, "limit": 20})
        for item in page["items"]:
            if item["status"] not in ("deleted", "failed"):
                return item
        return None

    def find_package_soon(self, producer: str, run_id: str) -> Pending:
        """find_package on a thread of its own, asked while the caller scans or hashes the run."""
        return Pending(self.find_package, producer, run_id)

    def create_package(self, body: dict) -> dict:
        return self.request("POST", "/v1/packages", json_body=body)

    def package(self, package_id: str) -> dict:
        return self.request("GET", f"/v1/packages/{package_id}")

    def files(self, package_id: str) -> dict[str, dict]:
        entries, cursor = {}, None
        while True:
            query = {"limit": 10000, **({"cursor": cursor} if cursor else {})}
            page = self.request("GET", f"/v1/packages/{package_id}/files", query=query)
            entries.update((e["path"], e) for e in page["items"])
            cursor = page["next_cursor"]
            if not cursor:
                return entries

    def missing(self, digests: list[str]) -> set[str]:
        return set(self.request("POST", "/v1/blobs/missing", json_body={"digests": digests})["missing"])

    def attach(self, package_id: str, items: list[dict], replace: bool) -> dict:
        return self.request("POST", f"/v1/packages/{package_id}/attach",
                            json_body={"files": items, "replace": replace})

    def upload_tar(self, package_id: str, body: bytes, replace: bool) -> dict:
        digest = hashlib.sha256(body).digest()
        return self.request("POST", f"/v1/packages/{package_id}/tar", body=body,
                            headers={"Content-Type": "application/x-tar",
                                     "Content-Digest": f"sha-256=:{base64.b64encode(digest).decode()}:"},
                            query={"replace": "true"} if replace else None)

    def upload_file(self, package_id: str, path: str, stream: IO[bytes], size: int, sha256: str | None,
                    media_type: str | None, replace: bool) -> dict:
        """PUT a file's bytes; with ``sha256``, the server refuses them unless they have that digest."""
        headers = {"Content-Length": str(size)}
        if sha256 is not None:
            headers["X-Checksum-Sha256"] = sha256
        if media_type:
            headers["Content-Type"] = media_type
        return self.request("PUT", f"/v1/packages/{package_id}/files/{quote(path, safe='/')}", body=stream,
                            headers=headers, query={"replace": "true"} if replace else None)

    def missing_chunks(self, ids: list[str]) -> set[str]:
        return set(self.request("POST", "/v1/chunks/missing", json_body={"chunks": ids})["missing"])

    def upload_chunked(self, package_id: str, path: str, body, size: int, sha256: str | None,
                       replace: bool) -> dict:
        """Send a large file as its recipe and the chunks the store lacks (a tar streamed from
        ``body``, an iterable of byte strings of ``size`` bytes in all); with ``sha256``, the
        server refuses the file unless its bytes have that digest."""
        headers = {"Content-Length": str(size), "Content-Type": "application/x-tar"}
        if sha256 is not None:
            headers["X-Checksum-Sha256"] = sha256
        return self.request("POST", f"/v1/packages/{package_id}/chunked/{quote(path, safe='/')}", body=body,
                            headers=headers, query={"replace": "true"} if replace else None)

    def finalize(self, package_id: str) -> dict:
        return self.request("POST", f"/v1/packages/{package_id}/finalize")

    def manifest(self, package_id: str) -> dict:
        return self.request("GET", f"/v1/packages/{package_id}/manifest")

    # reading bytes ------------------------------------------------------------
    def stream(self, path: str, headers: dict | None = None) -> http.client.HTTPResponse:
        """GET ``path`` and return the open response, to be read to its end by the caller.

        An error answer raises ApiError (its body read), a failed connection Unreachable.
        """
        conn = self._conn()
        try:
            conn.request("GET", self._prefix + path, headers={"X-Actor": self._actor, **(headers or {})})
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            self.reset()
            raise Unreachable(f"GET {self.base_url}{path}: {exc}") from exc
        if response.status >= 400:
            data = response.read()
            try:
                problem = json.loads(data)
            except ValueError:
                problem = {"title": response.reason, "detail": data[:300].decode("utf-8", "replace")}
            raise ApiError(response.status, problem)
        return response

    def reset(self) -> None:
        """Drop this thread's connection (after a response that was not read to its end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None
