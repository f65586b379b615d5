"""artifact-store download against a real server: every file at its logical path, checked against the
manifest; resumes; names every file whose bytes on the backend were damaged."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.helpers import invoke, make_tar

FILES = {
    "run.json": b'{"run_id": "dl"}',
    "raw/x": b"x itself",
    "raw/x.part": b"a file whose name ends like a partial download",
    "raw/logs/a b.log": b"alpha\n" * 50,
    "raw/logs/#2?.log": b"beta\n",
    "raw/logs/x%20y.log": b"gamma\n",
    "caf\u00e9/\u2603 snow.txt": "snow\n".encode(),
    "empty": b"",
    "dup/a b.log": b"alpha\n" * 50,
}
BIG = {"raw/captures/dump.bin": os.urandom(2 * (1 << 20) + 7)}


@pytest.fixture
def package(server):
    pkg = server.create(run_id="download")["id"]
    r = server.http.post(f"{server.url}/v1/packages/{pkg}/tar", data=make_tar(FILES),
                         headers={"Content-Type": "application/x-tar"})
    assert r.status_code == 201
    for path, data in BIG.items():
        assert server.put(pkg, path, data).status_code == 201
    done = server.http.post(f"{server.url}/v1/packages/{pkg}/finalize").json()
    return done


def download(server, pkg: str, dest: Path, *extra: str):
    result = invoke(["download", pkg, str(dest), "--url", server.url, *extra])
    line = json.loads(result.stdout) if result.stdout.strip() else None
    return result, line


def tree(dest: Path) -> dict[str, bytes]:
    return {str(p.relative_to(dest)): p.read_bytes() for p in dest.rglob("*") if p.is_file()}


def test_download_writes_every_file_at_its_path_and_verifies_it(server, package, tmp_path):
    dest = tmp_path / "out"
    result, line = download(server, package["id"], dest)
    assert result.returncode == 0, result.output
    assert tree(dest) == {**FILES, **BIG}
    assert line == {"package_id": package["id"], "manifest_digest": package["manifest_digest"],
                    "files": len(FILES) + len(BIG), "bytes": package["total_bytes"], "verified": True,
                    "downloaded": len(FILES) + len(BIG), "kept": 0, "failed": 0}
    # again: nothing is fetched, everything is checked and kept
    again, line = download(server, package["id"], dest)
    assert again.returncode == 0 and line["kept"] == len(FILES) + len(BIG) and line["downloaded"] == 0


def test_download_resumes_a_cut_file_and_replaces_a_wrong_one(server, package, tmp_path, caplog):
    dest = tmp_path / "out"
    big_path, big = next(iter(BIG.items()))
    (dest / ".artifact-store-partial").mkdir(parents=True)  # left by an interrupted run
    (dest / ".artifact-store-partial" / hashlib.sha256(big_path.encode()).hexdigest()).write_bytes(big[:1000])
    (dest / "raw/logs").mkdir(parents=True)
    (dest / "raw/logs/a b.log").write_bytes(b"tampered")
    result, line = download(server, package["id"], dest)
    assert result.returncode == 0, result.output
    assert tree(dest) == {**FILES, **BIG}
    assert line["verified"] is True and line["downloaded"] == len(FILES) + len(BIG)
    resumed = [r.getMessage() for r in caplog.records if "captures/dump.bin" in r.getMessage()]
    assert len(resumed) == 1 and '" 206 ' in resumed[0]  # only the missing part was fetched
    assert not (dest / ".artifact-store-partial").exists()


def damage(store, path_in_package: str, package_id: str) -> None:
    """Flip the bytes of one file's blob on the backend (same size), where its location says they are."""
    with store.db.engine.connect() as conn:
        key, offset, length = conn.execute(text(
            "SELECT l.object_key, l.offset, l.length FROM storage_location l JOIN file_entry f "
            "ON f.blob_sha256 = l.blob_sha256 WHERE f.package_id = :p AND f.path = :path"),
            {"p": package_id, "path": path_in_package}).one()
    root = Path(store.storage.root)
    with open(root / key, "r+b") as f:
        f.seek(offset)
        data = f.read(length)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))


def test_download_names_every_file_damaged_on_the_backend(server, store, package, tmp_path):
    if not hasattr(store.storage, "root"):
        pytest.skip("damages objects on the local backend")
    damage(store, "raw/captures/dump.bin", package["id"])  # a loose object
    damage(store, "raw/logs/#2?.log", package["id"])  # a slice of a pack
    dest = tmp_path / "out"
    result, line = download(server, package["id"], dest)
    assert result.returncode == 1
    assert line["verified"] is False and line["failed"] == 2
    damaged = sorted(m for m in result.stderr.splitlines() if m.startswith("mismatch: "))
    assert [d.split(": sha256 ")[0] for d in damaged] == ["mismatch: raw/captures/dump.bin",
                                                           "mismatch: raw/logs/#2?.log"]
    assert hashlib.sha256(b"beta\n").hexdigest() in damaged[1]  # the manifest's digest is named
    # the damaged files are not left in place; every other file is, verified
    good = {p: d for p, d in {**FILES, **BIG}.items() if p not in ("raw/captures/dump.bin", "raw/logs/#2?.log")}
    assert tree(dest) == good


def test_download_refuses_a_manifest_that_does_not_match_its_digest(server, store, package, tmp_path):
    if not hasattr(store.storage, "root"):
        pytest.skip("damages objects on the local backend")
    digest = package["manifest_digest"].removeprefix("sha256:")
    with store.db.engine.connect() as conn:
        key, offset = conn.execute(text("SELECT object_key, \"offset\" FROM storage_location "
                                        "WHERE blob_sha256 = :d"), {"d": digest}).one()
    with open(Path(store.storage.root) / key, "r+b") as f:
        f.seek(offset + 2)
        f.write(b"X")
    dest = tmp_path / "out"
    result, line = download(server, package["id"], dest)
    assert result.returncode == 1 and line is None
    assert result.stderr.startswith(f"error: the manifest of {package['id']} hashes to sha256:")
    assert not dest.exists()


def test_download_of_an_unknown_or_open_package(server, tmp_path):
    result, line = download(server, "pkg_nope", tmp_path / "a")
    assert result.returncode == 2 and line is None and "pkg_nope" in result.stderr
    pkg = server.create()["id"]
    result, _ = download(server, pkg, tmp_path / "b")
    assert result.returncode == 2 and "only a finalized package" in result.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
