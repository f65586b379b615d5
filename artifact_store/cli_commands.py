"""What each ``artifact-store`` command does (cli.py declares their arguments and parses them).

Each function takes the parsed arguments and returns the exit status (or
raises SystemExit); its docstring is the command's help. Every import is made
inside the command that needs it: a producer's ``ingest`` loads none of the
server's stack.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager


class UsageError(Exception):
    """Arguments the parser took but the command cannot (exit status 2, with the usage)."""


def _echo(text: str = "", err: bool = False) -> None:
    """One line, written at once (a finding of a long verify is not held back by a pipe's buffer)."""
    print(text, file=sys.stderr if err else sys.stdout, flush=True)


def _settings(**overrides):
    from casstore.config import Settings

    return Settings.from_env(**overrides)


def _base_url(url: str | None) -> str:
    """--url, else ARTIFACT_STORE_URL, else the address the settings serve on."""
    import os

    return url or os.environ.get("ARTIFACT_STORE_URL") or _settings().base_url


# ---------------------------------------------------------------- producers and consumers

def ingest(args) -> int:
    """Register a guide-board RUN_DIR as one package; print one JSON line with its id.

    Exit status: 0 done; 2 the run directory or the request is wrong (nothing
    uploaded, or a finalized run differs); 1 the service failed or could not
    be reached (run the same command again to resume).
    """
    import json
    from pathlib import Path

    from .producer import run_ingest

    code, result, message = run_ingest(
        Path(args.run_dir), _base_url(args.url), retention_class=args.retention_class, jobs=args.jobs,
        progress=not args.quiet and sys.stderr.isatty(),
        cache_path=None if args.no_cache else (Path(args.cache_path) if args.cache_path else "default"))
    if message:
        _echo(message, err=True)
    if result is not None:
        _echo(json.dumps(result))
    return code


def download(args) -> int:
    """Download a finalized package into DEST, every file checked against the manifest.

    Files already in DEST with the right bytes are kept (run again to resume).
    Prints one JSON line. Exit status: 0 every file verified; 1 a file or the
    manifest did not match (each named on stderr) or the service failed;
    2 the package cannot be downloaded (unknown, not finalized).
    """
    import json
    from pathlib import Path

    from .download import download as run_download

    code, result, messages = run_download(_base_url(args.url), args.package_id, Path(args.dest), args.jobs)
    for line in messages:
        _echo(line, err=True)
    if result is not None:
        _echo(json.dumps(result))
    return code


# ---------------------------------------------------------------- the service

def serve(args) -> int:
    """Run the HTTP API under gunicorn (migrating the database first).

    Bearer tokens are required unless the address is loopback only (or
    ARTIFACT_STORE_AUTH=off, which a non-loopback address refuses).
    """
    import os
    import shutil
    import tempfile

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = _settings(**overrides)
    # Every worker counts in files here and /metrics merges them: a fresh folder per server, so a
    # previous run's counts never mix in. prometheus-client reads the variable when it is imported,
    # so it is set before api/ is.
    metrics_dir = tempfile.mkdtemp(prefix="artifact-store-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    server = os.getpid()
    try:
        _serve(settings, args)
    finally:
        # A gunicorn worker is a fork of this process and leaves by SystemExit through here too:
        # only the server removes the folder, never a worker its siblings and successor still use.
        if os.getpid() == server:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _serve(settings, args) -> None:
    from api.auth import StartupRefused, describe, resolve

    try:
        access = resolve(settings)
    except StartupRefused as exc:
        _echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    if not args.no_upgrade:
        _upgrade(settings)
    _configure_logging()
    from .dbcheck import describe as describe_backends

    _echo(f"artifact-store listening on http://{settings.host}:{settings.port} "
          f"({describe_backends(settings)}); {describe(access)}", err=True)
    from .server import run

    run(settings, workers=args.workers, threads=args.threads, header_timeout=args.header_timeout,
        io_timeout=args.io_timeout, keepalive=args.keepalive, max_connections=args.max_connections)


def _configure_logging() -> None:
    """The access log (one JSON line per request) and the app's warnings go to stderr, like gunicorn's."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access = logging.getLogger("artifact_store.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False
    app_handler = logging.StreamHandler(sys.stderr)
    app_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("api", "casstore"):
        logging.getLogger(name).addHandler(app_handler)
        logging.getLogger(name).setLevel(logging.INFO)


def db_upgrade(args) -> int:
    """Apply every pending Alembic migration (the only command that creates a schema)."""
    from .dbcheck import redacted_database

    settings = _settings()
    _upgrade(settings)
    _echo(f"database {redacted_database(settings.database_url)} is at the newest schema", err=True)
    return 0


def _upgrade(settings) -> None:
    from casstore.db import Database

    database = Database(settings.database_url)
    try:
        database.upgrade()
    finally:
        database.dispose()


# ---------------------------------------------------------------- the operator's tools

def _store():
    """The Store an operator command acts on: named on stderr, refused (exit 2) unless migrated."""
    from casstore.store import Store

    from .dbcheck import NotReady, check, describe

    settings = _settings()
    try:
        check(settings)
    except NotReady as exc:
        _echo(f"error: {exc}", err=True)  # one line; nothing was created
        raise SystemExit(2) from None
    _echo(f"artifact-store: {describe(settings)}", err=True)
    return Store(settings)


def _actor() -> str:
    import getpass
    import socket

    return f"cli:{getpass.getuser()}@{socket.gethostname()}"


@contextmanager
def _refused():
    """A store error (a refusal: not eligible, unknown class, ...) ends the command with its
    one-line detail on stderr and exit status 2, never a traceback."""
    from casstore.errors import CasstoreError

    try:
        yield
    except CasstoreError as exc:
        _echo(f"error: {exc.detail}", err=True)
        raise SystemExit(2) from None


def _when(value: str | None):
    from datetime import datetime, timezone

    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise UsageError(f"not an ISO 8601 time: {value}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _duration(text: str):
    """'90s', '15m', '6h', '7d' (or plain seconds) -> timedelta."""
    from datetime import timedelta

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1:] in units:
            return timedelta(seconds=float(text[:-1]) * units[text[-1]])
        return timedelta(seconds=float(text))
    except ValueError as exc:
        raise UsageError(f"not a duration (like 90s, 15m, 6h, 7d): {text}") from exc


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _days(args) -> int | None:
    """--days N or --never, exactly one of them: the duration in days (None: never expires)."""
    if (args.days is None) == (not args.never):
        raise UsageError("give exactly one of --days N or --never")
    return None if args.never else args.days


def retention_classes(args) -> int:
    """List retention classes (or change one with `set`)."""
    for cls in _store().retention.classes():
        days = "never expires" if cls.days is None else f"{cls.days} days"
        _echo(f"{cls.name:<20} {days:<16} {cls.description}")
    return 0


def retention_classes_set(args) -> int:
    """Change a class's duration for packages created or finalized from now on."""
    days = _days(args)
    with _refused():
        cls = _store().retention.set_class_days(args.name, days, actor=_actor(), reason=args.reason)
    _echo(f"{cls.name}: {'never expires' if cls.days is None else f'{cls.days} days'}")
    return 0


def retention_classes_create(args) -> int:
    """Add a retention class (audited as retention_class.created)."""
    days = _days(args)
    with _refused():
        cls = _store().retention.create_class(args.name, days, actor=_actor(), reason=args.reason,
                                              description=args.description)
    _echo(f"{cls.name}: {'never expires' if cls.days is None else f'{cls.days} days'}")
    return 0


def _echo_json(value) -> None:
    import json

    from casstore.services.manifest import iso

    _echo(json.dumps(value, default=lambda v: iso(v) if hasattr(v, "strftime") else str(v)))


def _hold_json(hold) -> dict:
    return {"id": hold.id, "package_id": hold.package_id, "reason": hold.reason, "placed_by": hold.placed_by,
            "placed_at": hold.placed_at, "released_at": hold.released_at, "released_by": hold.released_by,
            "release_reason": hold.release_reason}


def hold_add(args) -> int:
    """Place a hold on a package; prints the hold as one JSON line (its id releases it)."""
    with _refused():
        placed = _store().retention.place_hold(args.package_id, actor=_actor(), reason=args.reason)
    _echo_json(_hold_json(placed))
    return 0


def hold_release(args) -> int:
    """Release one hold of a package."""
    with _refused():
        released = _store().retention.release_hold(args.package_id, args.hold_id, actor=_actor(),
                                                   reason=args.reason)
    _echo_json(_hold_json(released))
    return 0


def retention_extend(args) -> int:
    """Extend a package's retention; a change that would shorten it is refused (exit 2)."""
    if sum(v is not None for v in (args.days, args.until, args.retention_class)) != 1:
        raise UsageError("give exactly one of --days N, --until T or --class C")
    with _refused():
        status = _store().retention.extend(args.package_id, actor=_actor(), reason=args.reason, days=args.days,
                                           expires_at=_when(args.until), retention_class=args.retention_class)
    _echo_json({"package_id": status["package_id"], "retention_class": status["retention_class"],
                "expires_at": status["expires_at"], "eligible": status["eligible"],
                "not_eligible_because": status["not_eligible_because"]})
    return 0


def eligibility(args) -> int:
    """Report packages eligible for deletion and the bytes deleting them would free. Deletes nothing."""
    import json

    from casstore.times import iso

    as_of = _when(args.as_of)
    report = _store().eligibility.report(as_of)
    if args.as_json:
        _echo(json.dumps({
            "as_of": iso(report.as_of), "reclaimable_bytes": report.reclaimable_bytes,
            "shared_bytes": report.shared_bytes,
            "packages": [{**p.__dict__, "expires_at": iso(p.expires_at)} for p in report.packages]}))
        return 0
    _echo(f"eligible for deletion as of {iso(report.as_of)}: {len(report.packages)} package(s)")
    if report.packages:
        _echo(f"{'package':<31} {'run_id':<32} {'class':<17} {'expired':<20} {'reclaimable':>12} {'shared':>12}")
        for p in report.packages:
            _echo(f"{p.package_id:<31} {(p.run_id or '-')[:32]:<32} {p.retention_class:<17} "
                  f"{iso(p.expires_at)[:19]:<20} {_size(p.reclaimable_bytes):>12} {_size(p.shared_bytes):>12}")
    _echo(f"total reclaimable {_size(report.reclaimable_bytes)}, shared with retained packages "
          f"{_size(report.shared_bytes)}. Nothing was deleted: use `artifact-store delete`.")
    return 0


def delete(args) -> int:
    """Delete an eligible package (a tombstone stays). Its bytes go at the next `gc`."""
    with _refused():
        package = _store().eligibility.delete(args.package_id, actor=_actor(), reason=args.reason)
    _echo(f"{package.id} deleted; run `artifact-store gc` to free blobs nothing else holds")
    return 0


def gc(args) -> int:
    """Remove the bytes of blobs and chunks no live file references, repack mostly dead packs;
    safe while ingestion runs."""
    import json

    orphan_grace, repack_grace = _duration(args.orphan_grace), _duration(args.repack_grace)
    with _refused():
        report = _store().gc.run(actor=_actor(), orphan_grace=orphan_grace, repack_grace=repack_grace)
    if args.as_json:
        _echo(json.dumps({k: v for k, v in report.__dict__.items() if k != "removed"}))
    else:
        _echo(f"removed {report.blobs_removed} blob(s), {_size(report.bytes_freed)}; "
              f"{report.orphans_removed} orphan object(s), {_size(report.orphan_bytes_freed)}; "
              f"{report.chunks_removed} chunk(s); {report.packs_repacked} pack(s) repacked "
              f"({_size(report.repack_bytes_copied)} copied), {report.retired_removed} retired pack(s) "
              f"deleted, {_size(report.retired_bytes_freed)}; "
              f"{report.stray_writes_removed} leftover(s) of killed uploads; "
              f"{report.skipped} candidate(s) taken back by writers")
    return 0


def verify(args) -> int:
    """Check every invariant; one line per finding; exit 1 on any discrepancy."""
    staging_age = _duration(args.repair_staging) if args.repair_staging else None
    budget = _duration(args.max_duration).total_seconds() if args.max_duration else None
    store = _store()
    if staging_age is not None:
        for key in store.verify.repair_staging(staging_age):
            _echo(f"removed\t{key}\tstale staging object")
    report = store.verify.run(deep=args.deep, max_duration=budget)
    for finding in report.findings:
        _echo(finding.line())
    state = "complete" if report.complete else "stopped at --max-duration; the next run resumes"
    _echo(f"checked {report.blobs_checked} blobs, {report.packages_checked} finalized packages; "
          f"re-hashed {report.blobs_rehashed} blobs ({_size(report.bytes_rehashed)}), {state}; "
          f"{len(report.findings)} finding(s)", err=True)
    return 0 if report.ok else 1


def _token_json(t) -> dict:
    from casstore.services.manifest import iso

    return {"id": t.id, "name": t.name, "role": t.role, "producers": list(t.producers),
            "created_at": iso(t.created_at), "created_by": t.created_by, "expires_at": iso(t.expires_at),
            "revoked_at": iso(t.revoked_at)}


def token_create(args) -> int:
    """Create a token; print one JSON line with its id, name, role and the token itself (shown only now)."""
    import json

    from casstore.services.tokens import expiry_in_days

    with _refused():
        created, secret = _store().tokens.create(name=args.name, role=args.role, producers=list(args.producers),
                                                 expires_at=expiry_in_days(args.expires_in), actor=_actor())
    _echo(json.dumps({**_token_json(created), "token": secret}))
    return 0


def token_list(args) -> int:
    """Every token, one JSON object a line (never the secret: the store does not have it)."""
    import json

    for t in _store().tokens.list():
        _echo(json.dumps(_token_json(t)))
    return 0


def token_revoke(args) -> int:
    """Revoke a token: its next request is refused (401), on every server."""
    import json

    with _refused():
        revoked = _store().tokens.revoke(args.token_id, actor=_actor())
    _echo(json.dumps(_token_json(revoked)))
    return 0
