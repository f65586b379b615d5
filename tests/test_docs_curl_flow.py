"""The curl flow in docs/ingestion.md, run exactly as documented against a live server."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from casstore.store import Store
from tests.helpers import LiveServer, bearer, make_token

DOC = Path(__file__).resolve().parents[1] / "docs" / "ingestion.md"


def documented_script() -> str:
    text = DOC.read_text()
    block = re.search(r"<!-- curl-flow:start -->\s*```sh\n(.*?)```\s*<!-- curl-flow:end -->", text, re.S)
    assert block, "docs/ingestion.md lost its curl-flow block"
    return block.group(1)


@pytest.fixture(params=["open", "tokens"])
def flow_server(request, settings):
    """The loopback default (no tokens) and a store with authentication on (a producer token)."""
    store = Store(dataclasses.replace(settings, auth="on" if request.param == "tokens" else None))
    server = LiveServer(store)
    env = {}
    if request.param == "tokens":
        server.http.headers.update(bearer(make_token(store, "operator")))
        env["ARTIFACT_STORE_TOKEN"] = make_token(store, "producer", "ci", producers=["guide-board"])
    yield server, env
    server.close()
    store.close()


def test_documented_curl_flow(flow_server, tmp_path):
    server, token_env = flow_server
    if not shutil.which("curl") or not shutil.which("sha256sum"):
        pytest.skip("curl and sha256sum are needed")
    run = tmp_path / "my run"
    (run / "raw" / "logs").mkdir(parents=True)
    (run / "run.json").write_text('{"schema": "guide-board.run/v1", "run_id": "curl-flow-1", "extra": {"k": 1}}')
    files = {"raw/logs/a b.log": b"alpha\n", "raw/logs/#2?.log": b"beta\n", "reports/score card.md": b"# ok\n",
             "raw/logs/dup.log": b"alpha\n", "empty.txt": b""}
    for rel, data in files.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_bytes(data)
    # one file whose bytes the store already holds: it is attached, not uploaded
    other = server.create(producer="seed")["id"]
    server.put(other, "seed", b"# ok\n")

    script = tmp_path / "flow.sh"
    script.write_text(documented_script())
    proc = subprocess.run(["bash", str(script)], env={**os.environ, "URL": server.url, "RUN": str(run), **token_env},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    pkg = lines[-1]
    package = server.http.get(f"{server.url}/v1/packages/{pkg}").json()
    assert package["status"] == "finalized" and package["run_id"] == "curl-flow-1"
    assert lines[0] == package["manifest_digest"]
    assert lines[1].split()[0] == package["manifest_digest"].removeprefix("sha256:")
    expected = {**files, "run.json": (run / "run.json").read_bytes()}
    manifest = server.http.get(f"{server.url}/v1/packages/{pkg}/manifest").json()
    assert {f["path"]: f["sha256"] for f in manifest["files"]} == {
        p: hashlib.sha256(d).hexdigest() for p, d in expected.items()}
    for path, data in expected.items():
        assert server.get(pkg, path).content == data
