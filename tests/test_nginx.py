"""The TLS reverse proxy of docs/operations.md, as documented, in front of `artifact-store serve`.

The test starts Debian's nginx itself (a temporary folder, a self-signed
certificate made with openssl, loopback ports) and runs the API flow through it:
create, upload (with a length and chunked), a tar batch, finalize, download
whole and by range; errors from the API pass through as they are, and nginx's
own (the backend gone) are problem+json too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.helpers import ROOT, ServerProcess, assert_problem, doc_block, free_port, make_tar

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def documented_conf() -> str:
    return doc_block(ROOT / "docs" / "operations.md", "nginx-conf")


def nginx_conf(tmp: Path, backend_port: int, tls_port: int) -> str:
    """The documented server block, pointed at this test's ports and files, inside a minimal main config."""
    conf = documented_conf()
    for old, new in (("127.0.0.1:8080", f"127.0.0.1:{backend_port}"),
                     ("listen 443 ssl;", f"listen 127.0.0.1:{tls_port} ssl;"),
                     ("/etc/ssl/certs/artifacts.pem", str(tmp / "cert.pem")),
                     ("/etc/ssl/private/artifacts.key", str(tmp / "key.pem"))):
        assert old in conf, old
        conf = conf.replace(old, new)
    temp = " ".join(f"{kind}_temp_path {tmp / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (f"daemon off;\nworker_processes 1;\npid {tmp / 'nginx.pid'};\nerror_log {tmp / 'error.log'};\n"
            f"events {{ worker_connections 256; }}\n"
            f"http {{\naccess_log {tmp / 'access.log'};\n{temp}\n{conf}\n}}\n")


@pytest.fixture
def proxied(settings, tmp_path):
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light; scripts/test installs it when run as root)")
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make the test's certificate")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True)
    server = ServerProcess({"ARTIFACT_STORE_DATA_DIR": str(tmp_path / "data"),
                            "ARTIFACT_STORE_DATABASE_URL": settings.database_url}, workers=1).start()
    tls_port = free_port()
    (tmp_path / "nginx.conf").write_text(nginx_conf(tmp_path, server.port, tls_port))
    nginx = subprocess.Popen([NGINX, "-c", str(tmp_path / "nginx.conf")], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    http = requests.Session()
    http.verify = str(tmp_path / "cert.pem")
    http.trust_env = False  # a REQUESTS_CA_BUNDLE in the environment would override verify
    url = f"https://localhost:{tls_port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                http.get(f"{url}/v1/health", timeout=2)
                break
            except requests.ConnectionError as exc:
                if nginx.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not start ({exc}): {(tmp_path / 'error.log').read_text()[-2000:]}")
                time.sleep(0.1)
        yield url, http, server
    finally:
        nginx.terminate()
        nginx.wait(10)
        server.stop()


def test_api_flow_through_the_tls_proxy(proxied):
    url, http, server = proxied
    assert http.get(f"{url}/v1/health").json()["status"] == "ok"
    pkg = http.post(f"{url}/v1/packages", json={"producer": "proxy", "run_id": "tls-1"}).json()["id"]
    big = os.urandom(24 << 20)
    put = http.put(f"{url}/v1/packages/{pkg}/files/raw/big.bin", data=big,
                   headers={"X-Checksum-Sha256": hashlib.sha256(big).hexdigest()})
    assert put.status_code == 201, put.text
    chunked = http.put(f"{url}/v1/packages/{pkg}/files/raw/chunked.log",
                       data=(b"line %d\n" % i for i in range(10_000)))
    assert chunked.status_code == 201 and chunked.json()["size"] == sum(len(b"line %d\n" % i) for i in range(10_000))
    batch = http.post(f"{url}/v1/packages/{pkg}/tar", data=make_tar({"a.txt": b"alpha", "b/c.txt": b"gamma"}),
                      headers={"Content-Type": "application/x-tar"})
    assert batch.status_code == 201, batch.text
    done = http.post(f"{url}/v1/packages/{pkg}/finalize")
    assert done.status_code == 200 and done.json()["file_count"] == 4
    got = http.get(f"{url}/v1/packages/{pkg}/files/raw/big.bin")
    assert got.status_code == 200 and hashlib.sha256(got.content).digest() == hashlib.sha256(big).digest()
    part = http.get(f"{url}/v1/packages/{pkg}/files/raw/big.bin", headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.content == big[1000:2000]
    manifest = http.get(f"{url}/v1/packages/{pkg}/manifest")
    assert "sha256:" + hashlib.sha256(manifest.content).hexdigest() == done.json()["manifest_digest"]
    # the API's errors pass through untouched
    assert_problem(http.get(f"{url}/v1/packages/{pkg}/files/nope"), 404)
    assert_problem(http.post(f"{url}/v1/packages", json={"producer": "p\u202e"}), 422)
    # the proxy's own: the backend is gone
    server.stop()
    problem = assert_problem(http.get(f"{url}/v1/health"), 502)
    assert problem["title"] == "Bad Gateway"


def test_the_cli_ingests_through_the_tls_proxy(proxied, tmp_path):
    """The CLI over https: a file sent whole goes in 1 MiB reads there (an SSL socket cannot
    sendfile; plain HTTP hands the file to the kernel), and every byte arrives."""
    url, http, _ = proxied
    run = tmp_path / "run"
    files = {"raw/mid.bin": os.urandom(3 << 20), "logs/small.log": b"small" * 100}
    for path, data in files.items():
        (run / path).parent.mkdir(parents=True, exist_ok=True)
        (run / path).write_bytes(data)
    (run / "run.json").write_text(json.dumps({"schema": "guide-board.run/v1", "run_id": "tls-cli"}))
    env = {**os.environ, "ARTIFACT_STORE_URL": url, "SSL_CERT_FILE": str(tmp_path / "cert.pem"),
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "artifact_store.cli", "ingest", str(run), "--quiet"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    pkg = json.loads(proc.stdout)["package_id"]
    for path, data in files.items():
        assert http.get(f"{url}/v1/packages/{pkg}/files/{path}").content == data
