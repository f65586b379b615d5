"""The curl flow in docs/ingestion.md, run exactly as documented against a live server."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess

import pytest

from casstore.store import Store
from tests.helpers import ROOT, LiveServer, bearer, doc_block, make_token

DOC = ROOT / "docs" / "ingestion.md"


def documented_script() -> str:
    return doc_block(DOC, "curl-flow")


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


def test_documented_curl_flow_makes_the_package_the_cli_makes(server, example_run, tmp_path):
    """The same run ingested by the documented curl flow and by `artifact-store ingest` (each under
    its own run id) gives packages that differ only in that id: fields, metadata, class and files."""
    import json
    import sys

    if not shutil.which("curl") or not shutil.which("sha256sum"):
        pytest.skip("curl and sha256sum are needed")
    runs = {}
    for how in ("curl", "cli"):
        run = tmp_path / how
        shutil.copytree(example_run, run)
        meta = json.loads((run / "run.json").read_text())
        meta["run_id"] = f"{meta['run_id']}-{how}"
        (run / "run.json").write_text(json.dumps(meta, indent=2))
        runs[how] = run
    script = tmp_path / "flow.sh"
    script.write_text(documented_script())
    proc = subprocess.run(["bash", str(script)], env={**os.environ, "URL": server.url, "RUN": str(runs["curl"])},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    by_curl = proc.stdout.strip().splitlines()[-1]
    cli = subprocess.run([sys.executable, "-m", "artifact_store.cli", "ingest", str(runs["cli"]), "--url", server.url,
                          "--no-cache", "--quiet"], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    by_cli = json.loads(cli.stdout)["package_id"]

    def shape(package_id: str, how: str) -> tuple[dict, dict]:
        package = server.http.get(f"{server.url}/v1/packages/{package_id}").json()
        fields = {k: package[k] for k in ("status", "producer", "target_profile", "assessment_profile",
                                          "retention_class", "file_count", "metadata")}
        text = json.dumps(fields).replace(f"-{how}", "")
        manifest = server.http.get(f"{server.url}/v1/packages/{package_id}/manifest").json()
        files = {f["path"]: f if f["path"] != "run.json" else {"media_type": f["media_type"]}
                 for f in manifest["files"]}
        return json.loads(text), files

    curl_fields, curl_files = shape(by_curl, "curl")
    cli_fields, cli_files = shape(by_cli, "cli")
    assert curl_fields == cli_fields
    assert curl_fields["target_profile"] and curl_fields["metadata"]["run"]
    assert curl_files == cli_files
