"""End to end: the `artifact-store ingest` command on generated run directories, against a real server."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.helpers import ServerProcess, requests_by_route

ROOT = Path(__file__).resolve().parents[1]


def run_cli(args: list[str], url: str, cache_home: Path, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "ARTIFACT_STORE_URL": url, "XDG_CACHE_HOME": str(cache_home)}
    return subprocess.run([sys.executable, "-m", "artifact_store.cli", "ingest", *args], env=env, capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout, **kwargs)


def result_of(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout  # exactly one line of JSON on stdout
    return json.loads(lines[0])


def write_run(root: Path, run_id: str, files: dict[str, bytes], **run_fields) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    run = {"schema": "guide-board.run/v1", "run_id": run_id, "target_profile": "cmis-browser-binding",
           "assessment_profile": "opencmis-tck-1.1-full", "status": "completed", **run_fields}
    (root / "run.json").write_text(json.dumps(run))
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def stored_files(server, package_id: str) -> dict[str, bytes]:
    manifest = server.http.get(f"{server.url}/v1/packages/{package_id}/manifest").json()
    out = {}
    for entry in manifest["files"]:
        data = server.get(package_id, entry["path"]).content
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        out[entry["path"]] = data
    return out


def local_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and not p.is_symlink()}


def test_example_run(server, example_run, tmp_path):
    result = result_of(run_cli([str(example_run)], server.url, tmp_path))
    assert result["package_id"].startswith("pkg_") and result["run_id"] == "gb-2026-11-20T0930Z-cmis-7f3c"
    local = local_files(example_run)
    assert result["files"] == len(local) and result["bytes"] == sum(map(len, local.values()))
    assert result["new_bytes"] == result["bytes"] and result["skipped_links"] == 0
    assert result["retention_class"] == "raw-evidence" and result["expires_at"].endswith("Z")
    assert result["url"] == f"{server.url}/v1/packages/{result['package_id']}"
    assert stored_files(server, result["package_id"]) == local
    package = server.http.get(result["url"]).json()
    assert package["manifest_digest"] == result["manifest_digest"]
    assert (package["run_id"], package["target_profile"], package["assessment_profile"]) == (
        "gb-2026-11-20T0930Z-cmis-7f3c", "cmis-browser-binding", "opencmis-tck-1.1-full")
    meta = package["metadata"]
    run_json = json.loads((example_run / "run.json").read_text())
    assert meta["run"] == run_json and meta["run"]["operator_notes"]  # unknown keys preserved
    assert meta["evidence_results"] == {"pass": 212, "fail": 3, "warning": 9, "skipped": 14, "blocked": 0}
    assert meta["finding_counts"]["high"] == 1
    assert meta["source_commits"] == run_json["source_commits"] and meta["reports"] == run_json["reports"]
    assert (meta["started_at"], meta["finished_at"], meta["status"], meta["guide_board_version"]) == (
        "2026-11-20T09:30:12Z", "2026-11-20T10:02:47Z", "completed", "0.9.2")
    assert meta["retention_wish"]["retention_class"] == "raw-evidence"
    for field in ("run_id", "target_profile", "assessment_profile"):
        listed = server.http.get(f"{server.url}/v1/packages", params={field: package[field]}).json()["items"]
        assert [p["id"] for p in listed] == [result["package_id"]]

    again = result_of(run_cli([str(example_run)], server.url, tmp_path))
    assert again["package_id"] == result["package_id"] and again["new_bytes"] == 0
    assert again["manifest_digest"] == result["manifest_digest"]


HOSTILE = {
    "with space/file name.log": b"spaces", "100%/done%20.txt": b"percent", "hash#/tag#1": b"hash",
    "q?/what?.txt": b"question", "ünïcødé/日本語.md": "unicode".encode(), "emoji/🎉🚀.json": b"{}",
    "-leading-dash": b"dash", ".dotfile": b"dot", "..hidden..": b"hidden", "amp&plus+semi;colon": b"amp",
    "/".join(f"deep{i}" for i in range(24)) + "/leaf.txt": b"deep", "empty.log": b"", "dir/empty2": b"",
    "dup/a.bin": b"same content" * 1000, "dup/b.bin": b"same content" * 1000, "dup/c.bin": b"same content" * 1000,
    "raw/captures/big.bin": os.urandom(3 << 20), "raw/captures/big-copy.bin": b"",
}


def test_generated_run_with_hostile_names_links_duplicates_and_empties(server, tmp_path):
    HOSTILE["raw/captures/big-copy.bin"] = HOSTILE["raw/captures/big.bin"]
    run = write_run(tmp_path / "run", "hostile-1", HOSTILE)
    outside = tmp_path / "outside.txt"
    outside.write_text("secret outside the run")
    os.symlink(outside, run / "link-outside")
    os.symlink("with space/file name.log", run / "link-inside")
    os.symlink(tmp_path, run / "link-to-dir")
    proc = run_cli([str(run)], server.url, tmp_path / "cache")
    result = result_of(proc)
    assert result["skipped_links"] == 3
    for link in ("link-outside", "link-inside", "link-to-dir"):
        assert link in proc.stderr
    stored = stored_files(server, result["package_id"])
    assert stored == local_files(run)
    assert "link-outside" not in stored and b"secret outside the run" not in stored.values()
    # duplicates were sent once: new bytes count each distinct content once
    distinct = {hashlib.sha256(d).hexdigest(): len(d) for d in local_files(run).values()}
    assert result["new_bytes"] == sum(distinct.values())


def test_run_json_problems_exit_2_before_any_upload(server, tmp_path):
    cases = {
        "missing": None,
        "invalid": "{not json",
        "not-object": "[1, 2]",
        "no-run-id": json.dumps({"schema": "guide-board.run/v1"}),
        "missing-report": json.dumps({"run_id": "r", "reports": {"scorecard": "reports/scorecard.json"}}),
    }
    for name, content in cases.items():
        run = tmp_path / name
        (run / "logs").mkdir(parents=True)
        (run / "logs" / "a.log").write_text("a")
        if content is not None:
            (run / "run.json").write_text(content)
        proc = run_cli([str(run)], server.url, tmp_path / "cache")
        assert proc.returncode == 2, (name, proc.stderr)
        assert proc.stdout == "" and "error:" in proc.stderr
    assert server.http.get(f"{server.url}/v1/packages").json()["items"] == []


def test_a_run_refused_after_run_json_exits_without_waiting_for_a_silent_service(tmp_path):
    """The package is looked up while the run is scanned; a scan that refuses the run (here a
    name that cannot be stored) exits at once, not when the lookup gives up (600 s)."""
    run = write_run(tmp_path / "run", "silent-1", {"a.txt": b"one", "bad\\name.txt": b"two"})
    with socket.socket() as silent:  # connections are queued by the kernel, never answered
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        started = time.monotonic()
        proc = run_cli([str(run)], f"http://127.0.0.1:{silent.getsockname()[1]}", tmp_path / "cache", timeout=60)
        elapsed = time.monotonic() - started
    assert proc.returncode == 2 and "cannot be stored: a logical path has no backslash" in proc.stderr
    assert elapsed < 10


@pytest.mark.parametrize("size", [9, 9 << 20], ids=["small", "large"])  # a large one is cut only when sent
def test_unreadable_file_exits_2_before_any_upload(server, tmp_path, size):
    run = write_run(tmp_path / "run", "unreadable", {"ok.txt": b"fine", "secret.txt": os.urandom(size)})
    (run / "secret.txt").chmod(0)
    command = [sys.executable, "-m", "artifact_store.cli", "ingest", str(run)]
    if os.geteuid() == 0:  # root reads every file: drop the capabilities that let it
        if shutil.which("setpriv") is None:
            pytest.skip("root without setpriv cannot make a file unreadable to itself")
        caps = "-dac_override,-dac_read_search"
        command = ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", "--", *command]
    env = {**os.environ, "ARTIFACT_STORE_URL": server.url, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "secret.txt" in proc.stderr and proc.stdout == ""
    assert server.http.get(f"{server.url}/v1/packages").json()["items"] == []


def test_changed_content_after_finalization_is_refused(server, tmp_path):
    run = write_run(tmp_path / "run", "changes-1", {"a.txt": b"one", "b.txt": b"two", "c.txt": b"three"})
    first = result_of(run_cli([str(run)], server.url, tmp_path / "cache"))
    (run / "b.txt").write_bytes(b"TWO, changed")
    (run / "d.txt").write_bytes(b"new file")
    (run / "c.txt").unlink()
    proc = run_cli([str(run)], server.url, tmp_path / "cache")
    assert proc.returncode == 2 and proc.stdout == ""
    for path in ("b.txt", "c.txt", "d.txt"):
        assert path in proc.stderr
    assert "a.txt" not in proc.stderr
    packages = server.http.get(f"{server.url}/v1/packages").json()["items"]
    assert [p["id"] for p in packages] == [first["package_id"]]
    assert packages[0]["manifest_digest"] == first["manifest_digest"]


def test_an_unchanged_reingest_asks_for_the_package_not_its_manifest(server, tmp_path):
    """The ingest compares the finalized package with the run once, from its manifest; the same
    files against the same manifest digest are then not compared again (the hash cache remembers
    the match). Without that cache, or with a file changed, the manifest is asked for again."""
    run = write_run(tmp_path / "run", "match-1", {"a.txt": b"one", "logs/b.txt": b"two"})
    manifests = ("GET", "/v1/packages/{package_id}/manifest")
    asked = lambda: requests_by_route(server).get(manifests, 0) - before  # noqa: E731
    before = requests_by_route(server).get(manifests, 0)  # the server serves the whole module
    first = result_of(run_cli([str(run)], server.url, tmp_path / "cache"))
    assert asked() == 1  # after finalizing: it holds what was sent
    again = result_of(run_cli([str(run)], server.url, tmp_path / "cache"))
    assert (again["package_id"], again["manifest_digest"], again["new_bytes"]) == (
        first["package_id"], first["manifest_digest"], 0)
    assert asked() == 1
    result_of(run_cli([str(run)], server.url, tmp_path / "other-cache"))
    assert asked() == 2
    (run / "logs" / "b.txt").write_bytes(b"TWO")
    changed = run_cli([str(run)], server.url, tmp_path / "cache")
    assert changed.returncode == 2 and "logs/b.txt" in changed.stderr
    assert asked() == 3


# What an unchanged re-ingest must not load: it is mostly the command's own start (65-115 ms
# for 1,500 files), and each of these costs milliseconds of it. click and dataclasses bring in
# inspect (with ast, dis, tokenize); concurrent.futures brings in logging; typing costs 4 ms;
# argparse's default help formatter imports shutil, which imports zlib, bz2 and lzma (cli.py);
# a host name given to getaddrinfo as a str imports the idna codec (client.py). The uploader,
# the chunker and the server's stack are never needed to find that nothing changed.
NOT_LOADED_BY_A_REINGEST = ("click", "inspect", "concurrent", "logging", "typing", "shutil", "bz2", "lzma",
                            "encodings.idna", "artifact_store.producer.ingest", "artifact_store.producer.chunked",
                            "pyfastcdc", "blake3", "tqdm", "flask", "sqlalchemy", "sqlmodel", "obstore")


def test_an_unchanged_reingest_loads_only_what_it_needs(server, tmp_path):
    run = write_run(tmp_path / "run", "light-1", {"a.txt": b"one", "big.bin": os.urandom(9 << 20)})
    result_of(run_cli([str(run)], server.url, tmp_path / "cache"))
    env = {**os.environ, "ARTIFACT_STORE_URL": server.url, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "artifact_store.cli", "ingest", str(run)],
                          env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result_of(proc)["new_bytes"] == 0
    loaded = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "artifact_store.producer.answer" in loaded  # the list is read right
    assert sorted(m for m in loaded if any(m == n or m.startswith(n + ".") for n in NOT_LOADED_BY_A_REINGEST)) == []


def test_second_run_sharing_most_bytes_stores_only_the_changes(server, tmp_path):
    common = {f"logs/{i}.log": os.urandom(20_000) for i in range(40)}
    common["captures/big.bin"] = os.urandom(2 << 20)
    run1 = write_run(tmp_path / "run1", "share-1", common)
    changed = {"logs/3.log": os.urandom(20_000), "logs/new.log": os.urandom(5_000)}
    run2 = write_run(tmp_path / "run2", "share-2", {**common, **changed})
    first = result_of(run_cli([str(run1)], server.url, tmp_path / "cache"))
    second = result_of(run_cli([str(run2)], server.url, tmp_path / "cache"))
    assert second["package_id"] != first["package_id"]
    run_json_size = (run2 / "run.json").stat().st_size
    assert second["new_bytes"] == sum(map(len, changed.values())) + run_json_size
    assert stored_files(server, second["package_id"]) == local_files(run2)


def test_retention_class_flag_and_wish(server, tmp_path):
    run = write_run(tmp_path / "run", "ret-1", {"a": b"a"})
    (run / "retention-summary.json").write_text(json.dumps({"retention_class": "summary-evidence"}))
    assert result_of(run_cli([str(run)], server.url, tmp_path / "c"))["retention_class"] == "summary-evidence"
    run2 = write_run(tmp_path / "run2", "ret-2", {"a": b"a"})
    result = result_of(run_cli([str(run2), "--retention-class", "transient"], server.url, tmp_path / "c"))
    assert result["retention_class"] == "transient"
    bad = run_cli([str(write_run(tmp_path / "run3", "ret-3", {"a": b"a"})), "--retention-class", "nope"],
                  server.url, tmp_path / "c")
    assert bad.returncode == 2 and "nope" in bad.stderr


def test_hash_cache_lives_outside_the_run_and_is_used(server, tmp_path):
    run = write_run(tmp_path / "run", "cache-1", {f"f{i}": os.urandom(100) for i in range(20)})
    before = sorted(p.name for p in run.rglob("*"))
    result_of(run_cli([str(run)], server.url, tmp_path / "cache"))
    assert sorted(p.name for p in run.rglob("*")) == before  # nothing written into the run
    import sqlite3

    db = sqlite3.connect(tmp_path / "cache" / "artifact-store" / "hashes.sqlite3")
    assert db.execute("SELECT COUNT(*) FROM digest").fetchone()[0] == 21
    db.close()


def test_unreachable_service_exits_1(tmp_path):
    run = write_run(tmp_path / "run", "nowhere", {"a": b"a"})
    proc = run_cli([str(run)], "http://127.0.0.1:9", tmp_path / "cache")
    assert proc.returncode == 1 and "again" in proc.stderr and proc.stdout == ""


def test_progress_bar_only_on_a_terminal(server, tmp_path):
    import pty

    run = write_run(tmp_path / "run", "tty-1", {f"f{i}": os.urandom(50_000) for i in range(30)})
    quiet = run_cli([str(run)], server.url, tmp_path / "c1")
    assert quiet.stderr == ""  # not a terminal: no progress output
    run2 = write_run(tmp_path / "run2", "tty-2", {f"f{i}": os.urandom(50_000) for i in range(30)})
    main_fd, child_fd = pty.openpty()
    import fcntl
    import struct
    import termios

    fcntl.ioctl(child_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal has a size
    env = {**os.environ, "ARTIFACT_STORE_URL": server.url, "XDG_CACHE_HOME": str(tmp_path / "c2")}
    proc = subprocess.run([sys.executable, "-m", "artifact_store.cli", "ingest", str(run2)], env=env, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=child_fd, timeout=120)
    os.close(child_fd)
    seen = b""
    while True:
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(main_fd)
    assert proc.returncode == 0 and json.loads(proc.stdout)["files"] == 31
    assert b"uploading" in seen or b"hashing" in seen


@pytest.mark.slow
def test_kill_cli_then_resume_finishes_the_same_package(tmp_path, database_url):
    server = ServerProcess({"ARTIFACT_STORE_DATA_DIR": str(tmp_path / "data"),
                            "ARTIFACT_STORE_DATABASE_URL": database_url}, workers=2).start()
    try:
        files = {f"logs/{i:04d}.log": os.urandom(3000) for i in range(600)}
        files.update({f"captures/cap{i}.bin": os.urandom(24 << 20) for i in range(4)})
        run = write_run(tmp_path / "run", "resume-1", files)
        env = {**os.environ, "ARTIFACT_STORE_URL": server.url, "XDG_CACHE_HOME": str(tmp_path / "cache")}
        proc = subprocess.Popen([sys.executable, "-m", "artifact_store.cli", "ingest", str(run), "--jobs", "2"],
                                env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        package = None
        while time.monotonic() < deadline and package is None:
            items = requests.get(f"{server.url}/v1/packages", params={"run_id": "resume-1"}).json()["items"]
            if items and items[0]["file_count"] > 0:
                package = items[0]
            time.sleep(0.02)
        assert package is not None, "the ingestion never started uploading"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        partial = requests.get(f"{server.url}/v1/packages/{package['id']}").json()
        assert partial["status"] == "uploading"

        # the server restarts too, then the same command finishes the same package
        server.kill()
        server.start()
        result = result_of(run_cli([str(run)], server.url, tmp_path / "cache"))
        assert result["package_id"] == package["id"]
        total = sum(map(len, local_files(run).values()))
        assert result["bytes"] == total and result["new_bytes"] < total
        stored = requests.get(f"{server.url}/v1/packages/{package['id']}/manifest").json()
        assert {f["path"]: f["sha256"] for f in stored["files"]} == {
            p: hashlib.sha256(d).hexdigest() for p, d in local_files(run).items()}
        again = result_of(run_cli([str(run)], server.url, tmp_path / "cache"))
        assert again["package_id"] == package["id"] and again["new_bytes"] == 0
    finally:
        server.stop()


def test_the_hash_cache_answers_for_exactly_the_files_whose_stat_is_unchanged(tmp_path):
    """lookup answers for each file of the run (nested folders included) and for no file whose
    size or mtime changed since its digest was stored."""
    from artifact_store.producer.hashcache import HashCache
    from artifact_store.producer.rundir import scan

    run = tmp_path / "run"
    for name in ("a", "sub/b", "sub/deeper/c", "sub/gone", "z"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(name.encode())
    cache = HashCache(tmp_path / "cache.sqlite3")
    try:
        files = scan(run)[0]
        cache.store([(f, f"sha-of-{f.path}") for f in files])
        assert cache.lookup(files) == {f.path: f"sha-of-{f.path}" for f in files}
        os.utime(run / "sub/b", ns=(1, 1))
        (run / "z").write_bytes(b"changed")
        (run / "sub/gone").unlink()
        again = scan(run)[0]
        assert cache.lookup(again) == {"a": "sha-of-a", "sub/deeper/c": "sha-of-sub/deeper/c"}
        assert cache.lookup([]) == {}
    finally:
        cache.close()


def test_the_client_connects_where_the_url_says(tmp_path):
    """An IPv6 literal without a port, and each scheme's default port (no connection is made)."""
    from artifact_store.producer.client import StoreClient

    for url, host, port in (("http://[::1]/", "::1", 80), ("http://[::1]:8080", "::1", 8080),
                            ("https://store.example/", "store.example", 443), ("http://127.0.0.1:9", "127.0.0.1", 9)):
        conn = StoreClient(url)._conn()
        assert (conn.host, conn.port) == (host, port), url
