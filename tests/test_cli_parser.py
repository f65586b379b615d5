"""The ``artifact-store`` command line itself (argparse): what a script or a person at a terminal
relies on, whatever the command does."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

from artifact_store.cli_commands import _base_url
from tests.helpers import ROOT, invoke


def test_no_command_or_a_group_without_one_lists_what_there_is_and_exits_2():
    top = invoke([])
    assert top.returncode == 2 and top.stdout == ""
    for name in ("serve", "ingest", "download", "retention-classes", "hold", "token", "gc", "verify"):
        assert f"\n    {name} " in top.stderr or f"\n    {name}\n" in top.stderr, name
    hold = invoke(["hold"])
    assert hold.returncode == 2 and hold.stdout == ""
    assert "\n    add " in hold.stderr and "\n    release " in hold.stderr


def test_an_abbreviated_option_is_refused_not_guessed(tmp_path):
    """``--no`` could mean --no-cache today and another option tomorrow."""
    gc = invoke(["gc", "--orphan", "1h"])
    assert gc.returncode == 2 and "unrecognized arguments: --orphan 1h" in gc.stderr
    ingest = invoke(["ingest", str(tmp_path), "--no"])
    assert ingest.returncode == 2 and "unrecognized arguments: --no" in ingest.stderr


def test_the_service_is_the_option_then_the_variable_then_the_settings(monkeypatch):
    monkeypatch.setenv("ARTIFACT_STORE_URL", "http://from-variable:1")
    assert _base_url("http://given:2") == "http://given:2"
    assert _base_url(None) == "http://from-variable:1"
    monkeypatch.setenv("ARTIFACT_STORE_URL", "")  # empty is unset
    monkeypatch.delenv("ARTIFACT_STORE_PUBLIC_URL", raising=False)
    monkeypatch.setenv("ARTIFACT_STORE_HOST", "10.0.0.9")
    monkeypatch.setenv("ARTIFACT_STORE_PORT", "8181")
    assert _base_url(None) == "http://10.0.0.9:8181"


# The command as at a terminal, where Ctrl-C raises KeyboardInterrupt. A shell script's background
# job (CI may run the suite as one) starts with SIGINT ignored, and Python then installs no handler
# of its own; so this child sets it before running the command (no preexec_fn: this process has
# threads, and fork then exec is only safe without Python code in between).
AT_A_TERMINAL = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                 "sys.argv[0] = 'artifact-store'; runpy.run_module('artifact_store.cli', run_name='__main__')")


def test_ctrl_c_ends_an_ingest_with_aborted_and_status_1_not_a_traceback(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"run_id": "interrupted"}))
    (run / "a.log").write_text("a")
    with socket.socket() as silent:  # takes the connection, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        silent.settimeout(30)
        env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
        proc = subprocess.Popen([sys.executable, "-c", AT_A_TERMINAL, "ingest", str(run), "--url",
                                 f"http://127.0.0.1:{silent.getsockname()[1]}"], env=env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        conn, _ = silent.accept()  # the ingest is waiting for the service now
        with conn:
            conn.recv(65536)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out, err) == (1, "", "Aborted!\n")


def store_env(settings) -> dict:
    """The environment of a command run against the test's store."""
    return {**os.environ, "ARTIFACT_STORE_DATA_DIR": settings.data_dir,
            "ARTIFACT_STORE_DATABASE_URL": settings.database_url, "ARTIFACT_STORE_STORAGE_URL": settings.storage_url}


def test_a_closed_output_ends_the_command_quietly_with_status_1(settings):
    """``artifact-store retention-classes | head -1``: the reader went away; no traceback."""
    env = store_env(settings)
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "artifact_store.cli", "retention-classes"], stdout=write,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env, timeout=120)
    finally:
        os.close(write)
    assert proc.returncode == 1
    assert proc.stderr.startswith("artifact-store: database ") and proc.stderr.count("\n") == 1  # which store; no more


def test_help_is_wrapped_as_argparse_wraps_it(monkeypatch):
    """Sized without shutil (cli._columns), help keeps argparse's own width: COLUMNS less 2."""
    import argparse

    from artifact_store.cli import build_parser

    env = {**os.environ, "COLUMNS": "60"}
    ours = subprocess.run([sys.executable, "-m", "artifact_store.cli", "ingest", "--help"], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=60)
    assert ours.returncode == 0
    plain = build_parser("ingest")._subparsers._group_actions[0].choices["ingest"]
    plain.formatter_class = argparse.RawDescriptionHelpFormatter  # argparse's own, sized by shutil
    monkeypatch.setenv("COLUMNS", "60")
    assert ours.stdout == plain.format_help()
    options = ours.stdout.split("options:\n", 1)[1].splitlines()
    assert max(map(len, options)) == 58  # wrapped there, at 60 - 2


def test_a_command_started_with_its_output_closed_still_succeeds(settings):
    """``artifact-store retention-classes >&-``: nothing to print to is not a failure, nor a traceback."""
    env = store_env(settings)
    proc = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, "-m", "artifact_store.cli",
                           "retention-classes"], stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 0
    assert "Traceback" not in proc.stderr
