"""The README's quick start, run exactly as written against a live server in an empty folder."""

from __future__ import annotations

import shutil

import pytest

from tests.helpers import ROOT, run_doc_block

README = ROOT / "README.md"


def test_quick_start_runs_as_written(server, tmp_path):
    if not shutil.which("curl"):
        pytest.skip("curl is needed")
    work = tmp_path / "fresh"
    work.mkdir()
    proc = run_doc_block(README, "quickstart", work, {"URL": server.url}, script_dir=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    stored = (work / "run.json").read_bytes()
    page = server.http.get(f"{server.url}/v1/packages", params={"producer": "demo"}).json()["items"]
    assert len(page) == 1 and page[0]["status"] == "finalized"
    assert server.get(page[0]["id"], "run.json").content == stored
    assert stored.decode() in proc.stdout
    assert proc.stdout.strip().endswith(f"open {server.url}/v1/packages/{page[0]['id']} in a browser; "
                                        f"{server.url}/ lists every package")
