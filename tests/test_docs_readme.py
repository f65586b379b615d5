"""The README's quick start, run exactly as written against a live server in an empty folder."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quick_start_runs_as_written(server, tmp_path):
    if not shutil.which("curl"):
        pytest.skip("curl is needed")
    found = re.search(r"<!-- quickstart:start -->\s*```sh\n(.*?)```\s*<!-- quickstart:end -->",
                      README.read_text(), re.S)
    assert found, "README.md lost its quickstart block"
    script = tmp_path / "quickstart.sh"
    script.write_text(found.group(1))
    work = tmp_path / "fresh"
    work.mkdir()
    proc = subprocess.run(["bash", str(script)], cwd=work, env={**os.environ, "URL": server.url},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    stored = (work / "run.json").read_bytes()
    page = server.http.get(f"{server.url}/v1/packages", params={"producer": "demo"}).json()["items"]
    assert len(page) == 1 and page[0]["status"] == "finalized"
    assert server.get(page[0]["id"], "run.json").content == stored
    assert stored.decode() in proc.stdout
    assert proc.stdout.strip().endswith(f"open {server.url}/v1/packages/{page[0]['id']} in a browser; "
                                        f"{server.url}/ lists every package")
