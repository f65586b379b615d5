"""The shell blocks of docs/consumers.md, run exactly as written against a live server."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.helpers import ROOT, make_tar, run_doc_block, sha

DOC = ROOT / "docs" / "consumers.md"
FILES = {
    "run.json": b'{"run_id": "consumer-doc"}',
    "raw/logs/a b.log": b"alpha\n",
    "raw/logs/#2?.log": b"beta\n",
    "raw/logs/x%20y.log": b"gamma\n",
    "caf\u00e9/\u2603 snow.txt": "snow\n".encode(),
    "empty": b"",
    "-leading dash.md": b"# dash\n",
}


def run_block(name: str, cwd: Path, **env) -> subprocess.CompletedProcess:
    return run_doc_block(DOC, name, cwd, env)


@pytest.fixture
def package(server):
    pkg = server.create(run_id="consumer-doc")["id"]
    r = server.http.post(f"{server.url}/v1/packages/{pkg}/tar", data=make_tar(FILES),
                         headers={"Content-Type": "application/x-tar"})
    assert r.status_code == 201
    return server.http.post(f"{server.url}/v1/packages/{pkg}/finalize").json()


@pytest.fixture(autouse=True)
def tools():
    if not (shutil.which("curl") and shutil.which("sha256sum") and shutil.which("tar")):
        pytest.skip("curl, sha256sum and tar are needed")


def test_archive_block_downloads_and_verifies_with_standard_tools(server, package, tmp_path):
    env = {"URL": server.url, "PKG": package["id"], "DIGEST": package["manifest_digest"]}
    proc = run_block("consumer-archive", tmp_path, **env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == f"verified {package['id']}"
    assert {str(p.relative_to(tmp_path / package["id"])): p.read_bytes()
            for p in (tmp_path / package["id"]).rglob("*") if p.is_file()} == FILES
    # run again on the complete file: curl -C - is told 416, as the comment in the block says
    again = run_block("consumer-archive", tmp_path, **env)
    assert again.returncode == 22 and "416" in again.stderr


def test_archive_block_resumes_a_cut_download(server, package, tmp_path):
    whole = server.http.get(f"{server.url}/v1/packages/{package['id']}/archive").content
    (tmp_path / f"{package['id']}.tar").write_bytes(whole[:3000])
    proc = run_block("consumer-archive", tmp_path, URL=server.url, PKG=package["id"],
                     DIGEST=package["manifest_digest"])
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / f"{package['id']}.tar").read_bytes() == whole


def test_archive_block_fails_on_a_wrong_digest_or_damaged_bytes(server, store, package, tmp_path):
    wrong = run_block("consumer-archive", tmp_path, URL=server.url, PKG=package["id"],
                      DIGEST="sha256:" + "0" * 64)
    assert wrong.returncode == 1 and "FAILED" in wrong.stderr + wrong.stdout
    if not hasattr(store.storage, "root"):
        return
    with store.db.engine.connect() as conn:
        key, offset = conn.execute(text(
            "SELECT l.object_key, l.\"offset\" FROM storage_location l JOIN file_entry f "
            "ON f.blob_sha256 = l.blob_sha256 WHERE f.package_id = :p AND f.path = 'raw/logs/#2?.log'"),
            {"p": package["id"]}).one()
    with open(Path(store.storage.root) / key, "r+b") as f:
        f.seek(offset)
        f.write(b"B")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    damaged = run_block("consumer-archive", fresh, URL=server.url, PKG=package["id"],
                        DIGEST=package["manifest_digest"])
    assert damaged.returncode == 1
    assert f"{package['id']}/raw/logs/#2?.log: FAILED" in damaged.stdout


def test_commands_block(server, package, tmp_path):
    proc = run_block("consumer-commands", tmp_path, URL=server.url, PKG=package["id"])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[0])
    assert result["verified"] is True and result["files"] == len(FILES)
    lookup = json.loads(lines[1])
    assert lookup["sha256"] == sha(FILES["run.json"])
    assert [(h["package_id"], h["path"]) for h in lookup["holders"]] == [(package["id"], "run.json")]
