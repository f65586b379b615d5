"""docs/statehub.md: the link check, run as written against a live package and a deleted one;
and what the doc says the link does after deletion."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from sqlalchemy import text

from tests.helpers import ROOT, assert_problem, run_doc_block

DOC = ROOT / "docs" / "statehub.md"


def resolve(tmp_path, link: str, digest: str) -> subprocess.CompletedProcess:
    return run_doc_block(DOC, "statehub-resolve", tmp_path, {"LINK": link, "DIGEST": digest}, timeout=60)


def test_a_recorded_link_resolves_before_and_after_deletion(server, store, tmp_path):
    if not shutil.which("curl") or not shutil.which("sha256sum"):
        pytest.skip("curl and sha256sum are needed")
    with store.db.engine.begin() as conn:
        conn.execute(text("UPDATE retention_class SET days = 0 WHERE name = 'transient'"))
    pkg = server.create(run_id="statehub", retention_class="transient")["id"]
    server.put(pkg, "raw/a.log", b"evidence\n")
    done = server.http.post(f"{server.url}/v1/packages/{pkg}/finalize").json()
    link, digest = done["url"], done["manifest_digest"]
    live = resolve(tmp_path, link, digest)
    assert live.returncode == 0, live.stderr
    assert live.stdout == f"status: finalized\nmanifest matches {digest}\n"
    assert resolve(tmp_path, link, "sha256:" + "0" * 64).returncode == 1

    assert server.http.delete(link, params={"reason": "expired"}).status_code == 200
    gone = resolve(tmp_path, link, digest)
    assert gone.stdout == f"status: deleted\nmanifest matches {digest}\n"
    package = server.http.get(link).json()
    assert package["deleted_at"] and package["run_id"] == "statehub" and package["manifest_digest"] == digest
    assert_problem(server.get(pkg, "raw/a.log"), 410)
    assert_problem(server.http.get(f"{link}/archive"), 410)
    page = server.http.get(link, headers={"Accept": "text/html"}).text
    assert "deleted" in page and digest in page
    assert "package.deleted" in [e["action"] for e in server.http.get(f"{link}/events").json()["items"]]
