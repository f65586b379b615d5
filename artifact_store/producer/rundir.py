"""A guide-board run directory: its files, its links, and the metadata it declares.

The contract is shared/guide-board/RUN-LAYOUT.md: everything under the run
directory is stored at its relative path; symbolic links are reported and
skipped, never followed; run.json is required; report paths must exist in
the package; unknown files and keys are preserved.
"""

from __future__ import annotations

import json
import os
import stat
from collections import namedtuple
from pathlib import Path

from casstore.errors import InvalidPath
from casstore.paths import validate_path

RUN_SCHEMA = "guide-board.run/v1"
RUN_FIELDS = ("run_id", "target_profile", "assessment_profile", "started_at", "finished_at", "status",
              "guide_board_version", "source_commits", "reports")


class RunDirError(Exception):
    """The run directory cannot be ingested as it is (exit status 2, nothing uploaded)."""


class ChangedWhileReading(RunDirError):
    """A file's bytes changed between hashing and uploading (exit status 2; run again)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what}; let the run finish writing, then run the same command again")


class LocalFile(namedtuple("LocalFile", "path abspath size mtime_ns inode device")):
    """A regular file of the run as scanned: its logical ``path`` (relative, POSIX), ``abspath``,
    and ``size``, ``mtime_ns``, ``inode`` and ``device`` as ``lstat`` gave them.

    A tuple, as 1,500 of them are made by every ingest; collections' namedtuple, not typing's,
    as importing typing costs 4 ms of every start of the command."""

    __slots__ = ()


class RunDir:
    """A scanned run directory: its files, the links and special files skipped, run.json and the
    package metadata made of it."""

    def __init__(self, root: Path, files: list[LocalFile], links: list[str], run: dict, metadata: dict,
                 retention_wish: dict | None = None, skipped_other: list[str] | None = None) -> None:
        self.root, self.files, self.links, self.run, self.metadata = root, files, links, run, metadata
        self.retention_wish = retention_wish
        self.skipped_other = skipped_other or []

    @property
    def run_id(self) -> str:
        return self.run["run_id"]


def scan(root: Path) -> tuple[list[LocalFile], list[str], list[str]]:
    """Every regular file under ``root`` (never following links); the links; other special files."""
    files: list[LocalFile] = []
    links: list[str] = []
    other: list[str] = []
    stack = [(str(root), "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            raise RunDirError(f"cannot read folder {folder}: {exc.strerror}") from exc
        for entry in entries:
            rel = f"{prefix}{entry.name}"
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                links.append(rel)
            elif stat.S_ISDIR(st.st_mode):
                stack.append((entry.path, f"{rel}/"))
            elif stat.S_ISREG(st.st_mode):
                files.append(LocalFile(_logical(rel), entry.path, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev))
            else:
                other.append(rel)
    files.sort(key=lambda f: f.path)
    return files, sorted(links), sorted(other)


def _logical(rel: str) -> str:
    try:
        rel.encode("utf-8")
        return validate_path(rel)
    except (UnicodeEncodeError, InvalidPath) as exc:
        detail = getattr(exc, "detail", "the name is not valid UTF-8")
        raise RunDirError(f"file {rel.encode('utf-8', 'backslashreplace').decode()!r} cannot be stored: "
                          f"{detail}") from exc


def _read_json(root: Path, name: str, required: bool) -> dict | None:
    path = root / name
    if path.is_symlink() or not path.is_file():
        if required:
            raise RunDirError(f"{name} is missing from {root} (a guide-board run directory needs it)")
        return None
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{name} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise RunDirError(f"{name} must hold a JSON object")
    return value


def read_run(root: Path) -> dict:
    """The run directory's run.json, checked (RunDirError): its run_id can be used before the scan."""
    root = Path(root)
    if not root.is_dir():
        raise RunDirError(f"{root} is not a directory")
    run = _read_json(root, "run.json", required=True)
    run_id = run.get("run_id")
    if not isinstance(run_id, str) or not run_id.strip() or len(run_id) > 256:
        raise RunDirError("run.json needs a run_id: a non-empty string of at most 256 characters")
    if run.get("schema") not in (None, RUN_SCHEMA):
        raise RunDirError(f"run.json schema is {run.get('schema')!r}; this helper reads {RUN_SCHEMA!r}")
    return run


def load(root: Path) -> RunDir:
    """Scan and check a run directory; RunDirError explains anything that stops ingestion."""
    root = Path(root)
    run = read_run(root)
    files, links, other = scan(root)
    present = {f.path for f in files}
    reports = run.get("reports") or {}
    if not isinstance(reports, dict):
        raise RunDirError("run.json 'reports' must be an object of name -> relative path")
    missing = sorted(f"{name}: {path}" for name, path in reports.items() if path not in present)
    if missing:
        raise RunDirError("run.json names reports that are not in the run directory: " + "; ".join(missing))
    for name in ("target_profile", "assessment_profile"):
        if run.get(name) is not None and not isinstance(run.get(name), str):
            raise RunDirError(f"run.json '{name}' must be a string")
    wish = _read_json(root, "retention-summary.json", required=False)
    assessment = _read_json(root, "assessment/assessment-package.json", required=False) or {}
    metadata = {field_: run.get(field_) for field_ in RUN_FIELDS}
    metadata.update({
        "evidence_results": assessment.get("evidence_results"),
        "finding_counts": assessment.get("findings"),
        "retention_wish": wish,
        "run": run,  # the whole run.json as given, unknown keys included
    })
    return RunDir(root, files, links, run, metadata, wish, other)
