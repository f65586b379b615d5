"""The ``artifact-store`` command: serve, db upgrade, and the operator's tools."""

from __future__ import annotations

from contextlib import contextmanager

import click

from casstore.config import Settings


@click.group()
def main() -> None:
    """artifact-store: the evidence store for QA runs."""


@main.command()
@click.option("--host", default=None, help="Address to bind (default ARTIFACT_STORE_HOST or 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port (default ARTIFACT_STORE_PORT or 8080).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64),
              help="gunicorn worker processes.")
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 256),
              help="Threads per worker (concurrent requests each).")
@click.option("--header-timeout", default=10.0, show_default=True, type=click.FloatRange(0.5, 3600),
              help="Seconds a client has to send a whole request head (else 408, connection closed).")
@click.option("--io-timeout", default=30.0, show_default=True, type=click.FloatRange(0.5, 3600),
              help="Seconds any read of a request body or write of an answer may stall before the "
                   "connection is closed.")
@click.option("--keepalive", default=15, show_default=True, type=click.IntRange(0, 3600),
              help="Seconds an idle kept-alive connection stays open.")
@click.option("--max-connections", default=4096, show_default=True, type=click.IntRange(16, 100000),
              help="Open connections per worker (idle and slow ones cost no thread, only a file descriptor).")
@click.option("--no-upgrade", is_flag=True, help="Do not run database migrations before starting.")
def serve(host: str | None, port: int | None, workers: int, threads: int, header_timeout: float,
          io_timeout: float, keepalive: int, max_connections: int, no_upgrade: bool) -> None:
    """Run the HTTP API under gunicorn (migrating the database first).

    Bearer tokens are required unless the address is loopback only (or
    ARTIFACT_STORE_AUTH=off, which a non-loopback address refuses).
    """
    import os
    import shutil
    import tempfile

    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    settings = Settings.from_env(**overrides)
    # Every worker counts in files here and /metrics merges them: a fresh folder per server, so a
    # previous run's counts never mix in. prometheus-client reads the variable when it is imported,
    # so it is set before api/ is.
    metrics_dir = tempfile.mkdtemp(prefix="artifact-store-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        _serve(settings, workers, threads, no_upgrade, dict(header_timeout=header_timeout, io_timeout=io_timeout,
                                                            keepalive=keepalive, max_connections=max_connections))
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _serve(settings: Settings, workers: int, threads: int, no_upgrade: bool, limits: dict) -> None:
    from api.auth import StartupRefused, describe, resolve

    try:
        access = resolve(settings)
    except StartupRefused as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    if not no_upgrade:
        _upgrade(settings)
    _configure_logging()
    from .dbcheck import describe as describe_backends

    click.echo(f"artifact-store listening on http://{settings.host}:{settings.port} "
               f"({describe_backends(settings)}); {describe(access)}", err=True)
    from .server import run

    run(settings, workers=workers, threads=threads, **limits)


def _configure_logging() -> None:
    """The access log (one JSON line per request) and the app's warnings go to stderr, like gunicorn's."""
    import logging
    import sys

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


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--url", envvar="ARTIFACT_STORE_URL", default=None,
              help="The service (default ARTIFACT_STORE_URL, else http://ARTIFACT_STORE_HOST:ARTIFACT_STORE_PORT).")
@click.option("--retention-class", default=None, help="Override the run's retention wish.")
@click.option("--jobs", default=4, show_default=True, type=click.IntRange(1, 64), help="Parallel hashing/uploads.")
@click.option("--quiet", is_flag=True, help="No progress bar, even on a terminal.")
@click.option("--cache", "cache_path", default=None, type=click.Path(dir_okay=False),
              help="Hash cache file (default $XDG_CACHE_HOME/artifact-store/hashes.sqlite3).")
@click.option("--no-cache", is_flag=True, help="Hash every file, and remember nothing.")
def ingest(run_dir: str, url: str | None, retention_class: str | None, jobs: int, quiet: bool,
           cache_path: str | None, no_cache: bool) -> None:
    """Register a guide-board RUN_DIR as one package; print one JSON line with its id.

    Exit status: 0 done; 2 the run directory or the request is wrong (nothing
    uploaded, or a finalized run differs); 1 the service failed or could not
    be reached (run the same command again to resume).
    """
    import json
    import sys
    from pathlib import Path

    from .producer import run_ingest

    settings = Settings.from_env()
    code, result, message = run_ingest(
        Path(run_dir), url or settings.base_url, retention_class=retention_class, jobs=jobs,
        progress=not quiet and sys.stderr.isatty(),
        cache_path=None if no_cache else (Path(cache_path) if cache_path else "default"))
    if message:
        click.echo(message, err=True)
    if result is not None:
        click.echo(json.dumps(result))
    sys.exit(code)


@main.group()
def db() -> None:
    """Database schema management."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending Alembic migration (the only command that creates a schema)."""
    from .dbcheck import redacted_database

    settings = Settings.from_env()
    _upgrade(settings)
    click.echo(f"database {redacted_database(settings.database_url)} is at the newest schema", err=True)


def _upgrade(settings: Settings) -> None:
    from casstore.db import Database

    database = Database(settings.database_url)
    try:
        database.upgrade()
    finally:
        database.dispose()


def _store():
    """The Store an operator command acts on: named on stderr, refused (exit 2) unless migrated."""
    from casstore.store import Store

    from .dbcheck import NotReady, check, describe

    settings = Settings.from_env()
    try:
        check(settings)
    except NotReady as exc:
        click.echo(f"error: {exc}", err=True)  # one line; nothing was created
        raise SystemExit(2) from None
    click.echo(f"artifact-store: {describe(settings)}", err=True)
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
        click.echo(f"error: {exc.detail}", err=True)
        raise SystemExit(2) from None


def _when(value: str | None):
    from datetime import datetime, timezone

    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise click.BadParameter(f"not an ISO 8601 time: {value}") from exc
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
        raise click.BadParameter(f"not a duration (like 90s, 15m, 6h, 7d): {text}") from exc


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@main.group("retention-classes", invoke_without_command=True)
@click.pass_context
def retention_classes(ctx) -> None:
    """List retention classes (or change one with `set`)."""
    if ctx.invoked_subcommand is None:
        for cls in _store().retention.classes():
            days = "never expires" if cls.days is None else f"{cls.days} days"
            click.echo(f"{cls.name:<20} {days:<16} {cls.description}")


@retention_classes.command("set")
@click.argument("name")
@click.option("--days", type=click.IntRange(min=0), default=None, help="New duration (0 allowed).")
@click.option("--never", is_flag=True, help="Never expire.")
@click.option("--reason", default="", help="Why (kept in the audit event).")
def retention_classes_set(name: str, days: int | None, never: bool, reason: str) -> None:
    """Change a class's duration for packages created or finalized from now on."""
    if (days is None) == (not never):
        raise click.UsageError("give exactly one of --days N or --never")
    with _refused():
        cls = _store().retention.set_class_days(name, None if never else days, actor=_actor(), reason=reason)
    click.echo(f"{cls.name}: {'never expires' if cls.days is None else f'{cls.days} days'}")


@retention_classes.command("create")
@click.argument("name")
@click.option("--days", type=click.IntRange(min=0), default=None, help="Duration in days (0 allowed).")
@click.option("--never", is_flag=True, help="Never expire.")
@click.option("--description", default="", help="What the class is for.")
@click.option("--reason", default="", help="Why (kept in the audit event).")
def retention_classes_create(name: str, days: int | None, never: bool, description: str, reason: str) -> None:
    """Add a retention class (audited as retention_class.created)."""
    if (days is None) == (not never):
        raise click.UsageError("give exactly one of --days N or --never")
    with _refused():
        cls = _store().retention.create_class(name, None if never else days, actor=_actor(), reason=reason,
                                              description=description)
    click.echo(f"{cls.name}: {'never expires' if cls.days is None else f'{cls.days} days'}")


def _echo_json(value) -> None:
    import json

    from casstore.services.manifest import iso

    click.echo(json.dumps(value, default=lambda v: iso(v) if hasattr(v, "strftime") else str(v)))


def _hold_json(hold) -> dict:
    return {"id": hold.id, "package_id": hold.package_id, "reason": hold.reason, "placed_by": hold.placed_by,
            "placed_at": hold.placed_at, "released_at": hold.released_at, "released_by": hold.released_by,
            "release_reason": hold.release_reason}


@main.group()
def hold() -> None:
    """Place and release holds (a held package is never eligible for deletion)."""


@hold.command("add")
@click.argument("package_id")
@click.option("--reason", required=True, help="Why (kept on the hold and in the events).")
def hold_add(package_id: str, reason: str) -> None:
    """Place a hold on a package; prints the hold as one JSON line (its id releases it)."""
    with _refused():
        placed = _store().retention.place_hold(package_id, actor=_actor(), reason=reason)
    _echo_json(_hold_json(placed))


@hold.command("release")
@click.argument("package_id")
@click.argument("hold_id")
@click.option("--reason", required=True, help="Why (kept on the hold and in the events).")
def hold_release(package_id: str, hold_id: str, reason: str) -> None:
    """Release one hold of a package."""
    with _refused():
        released = _store().retention.release_hold(package_id, hold_id, actor=_actor(), reason=reason)
    _echo_json(_hold_json(released))


@main.group()
def retention() -> None:
    """Change a package's retention (extend only)."""


@retention.command("extend")
@click.argument("package_id")
@click.option("--days", type=click.IntRange(1, 100 * 365), default=None, help="Add N days to the expiry.")
@click.option("--until", default=None, help="A new, later expiry (ISO 8601).")
@click.option("--class", "retention_class", default=None, help="Move to a class that keeps longer.")
@click.option("--reason", required=True, help="Why (kept in the retention and audit events).")
def retention_extend(package_id: str, days: int | None, until: str | None, retention_class: str | None,
                     reason: str) -> None:
    """Extend a package's retention; a change that would shorten it is refused (exit 2)."""
    if sum(v is not None for v in (days, until, retention_class)) != 1:
        raise click.UsageError("give exactly one of --days N, --until T or --class C")
    with _refused():
        status = _store().retention.extend(package_id, actor=_actor(), reason=reason, days=days,
                                           expires_at=_when(until), retention_class=retention_class)
    _echo_json({"package_id": status["package_id"], "retention_class": status["retention_class"],
                "expires_at": status["expires_at"], "eligible": status["eligible"],
                "not_eligible_because": status["not_eligible_because"]})


@main.command()
@click.argument("package_id")
@click.argument("dest", type=click.Path(file_okay=False, path_type=str))
@click.option("--url", envvar="ARTIFACT_STORE_URL", default=None,
              help="The service (default ARTIFACT_STORE_URL, else http://ARTIFACT_STORE_HOST:ARTIFACT_STORE_PORT).")
@click.option("--jobs", default=4, show_default=True, type=click.IntRange(1, 64), help="Parallel downloads.")
def download(package_id: str, dest: str, url: str | None, jobs: int) -> None:
    """Download a finalized package into DEST, every file checked against the manifest.

    Files already in DEST with the right bytes are kept (run again to resume).
    Prints one JSON line. Exit status: 0 every file verified; 1 a file or the
    manifest did not match (each named on stderr) or the service failed;
    2 the package cannot be downloaded (unknown, not finalized).
    """
    import json
    import sys
    from pathlib import Path

    from .download import download as run_download

    code, result, messages = run_download(url or Settings.from_env().base_url, package_id, Path(dest), jobs)
    for line in messages:
        click.echo(line, err=True)
    if result is not None:
        click.echo(json.dumps(result))
    sys.exit(code)


@main.command()
@click.option("--as-of", default=None, help="ISO 8601 time (default now).")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
def eligibility(as_of: str | None, as_json: bool) -> None:
    """Report packages eligible for deletion and the bytes deleting them would free. Deletes nothing."""
    import json

    from casstore.times import iso

    report = _store().eligibility.report(_when(as_of))
    if as_json:
        click.echo(json.dumps({
            "as_of": iso(report.as_of), "reclaimable_bytes": report.reclaimable_bytes,
            "shared_bytes": report.shared_bytes,
            "packages": [{**p.__dict__, "expires_at": iso(p.expires_at)} for p in report.packages]}))
        return
    click.echo(f"eligible for deletion as of {iso(report.as_of)}: {len(report.packages)} package(s)")
    if report.packages:
        click.echo(f"{'package':<31} {'run_id':<32} {'class':<17} {'expired':<20} {'reclaimable':>12} {'shared':>12}")
        for p in report.packages:
            click.echo(f"{p.package_id:<31} {(p.run_id or '-')[:32]:<32} {p.retention_class:<17} "
                       f"{iso(p.expires_at)[:19]:<20} {_size(p.reclaimable_bytes):>12} {_size(p.shared_bytes):>12}")
    click.echo(f"total reclaimable {_size(report.reclaimable_bytes)}, shared with retained packages "
               f"{_size(report.shared_bytes)}. Nothing was deleted: use `artifact-store delete`.")


@main.command()
@click.argument("package_id")
@click.option("--reason", required=True, help="Why (kept in the retention and audit events).")
def delete(package_id: str, reason: str) -> None:
    """Delete an eligible package (a tombstone stays). Its bytes go at the next `gc`."""
    with _refused():
        package = _store().eligibility.delete(package_id, actor=_actor(), reason=reason)
    click.echo(f"{package.id} deleted; run `artifact-store gc` to free blobs nothing else holds")


@main.command()
@click.option("--orphan-grace", default="1h", show_default=True,
              help="Leave objects no row knows alone until they are this old (an upload may be finishing).")
@click.option("--repack-grace", default="1h", show_default=True,
              help="Delete packs emptied by repacking only once retired this long (reads in flight).")
@click.option("--json", "as_json", is_flag=True)
def gc(orphan_grace: str, repack_grace: str, as_json: bool) -> None:
    """Remove the bytes of blobs and chunks no live file references, repack mostly dead packs;
    safe while ingestion runs."""
    import json

    with _refused():
        report = _store().gc.run(actor=_actor(), orphan_grace=_duration(orphan_grace),
                                 repack_grace=_duration(repack_grace))
    if as_json:
        click.echo(json.dumps({k: v for k, v in report.__dict__.items() if k != "removed"}))
    else:
        click.echo(f"removed {report.blobs_removed} blob(s), {_size(report.bytes_freed)}; "
                   f"{report.orphans_removed} orphan object(s), {_size(report.orphan_bytes_freed)}; "
                   f"{report.chunks_removed} chunk(s); {report.packs_repacked} pack(s) repacked "
                   f"({_size(report.repack_bytes_copied)} copied), {report.retired_removed} retired pack(s) "
                   f"deleted, {_size(report.retired_bytes_freed)}; "
                   f"{report.stray_writes_removed} leftover(s) of killed uploads; "
                   f"{report.skipped} candidate(s) taken back by writers")


@main.command()
@click.option("--deep", is_flag=True, help="Re-hash every blob's bytes (oldest-verified first).")
@click.option("--max-duration", default=None, help="With --deep: stop after this long (90s, 15m, 6h); "
              "the next run resumes where this one stopped.")
@click.option("--repair-staging", default=None, help="Remove staging objects older than this (e.g. 1d).")
def verify(deep: bool, max_duration: str | None, repair_staging: str | None) -> None:
    """Check every invariant; one line per finding; exit 1 on any discrepancy."""
    store = _store()
    if repair_staging:
        for key in store.verify.repair_staging(_duration(repair_staging)):
            click.echo(f"removed\t{key}\tstale staging object")
    budget = _duration(max_duration).total_seconds() if max_duration else None
    report = store.verify.run(deep=deep, max_duration=budget)
    for finding in report.findings:
        click.echo(finding.line())
    state = "complete" if report.complete else "stopped at --max-duration; the next run resumes"
    click.echo(f"checked {report.blobs_checked} blobs, {report.packages_checked} finalized packages; "
               f"re-hashed {report.blobs_rehashed} blobs ({_size(report.bytes_rehashed)}), {state}; "
               f"{len(report.findings)} finding(s)", err=True)
    raise SystemExit(0 if report.ok else 1)


@main.group()
def token() -> None:
    """API bearer tokens: create (the secret is printed once), list, revoke. Audited."""


def _token_json(t) -> dict:
    from casstore.services.manifest import iso

    return {"id": t.id, "name": t.name, "role": t.role, "producers": list(t.producers),
            "created_at": iso(t.created_at), "created_by": t.created_by, "expires_at": iso(t.expires_at),
            "revoked_at": iso(t.revoked_at)}


@token.command("create")
@click.option("--role", required=True, type=click.Choice(["reader", "producer", "operator", "metrics"]),
              help="reader: every GET; producer: reader + ingest for its --producer names; operator: "
                   "everything; metrics: GET /metrics only.")
@click.option("--name", required=True, help="Who holds it: recorded as the actor of what it does.")
@click.option("--producer", "producers", multiple=True, help="A producer name a producer token may write for "
              "(repeat for several).")
@click.option("--expires-in", "expires_in", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Days until it expires (default: never; revoke it when done).")
def token_create(role: str, name: str, producers: tuple[str, ...], expires_in: float | None) -> None:
    """Create a token; print one JSON line with its id, name, role and the token itself (shown only now)."""
    import json

    from casstore.services.tokens import expiry_in_days

    with _refused():
        created, secret = _store().tokens.create(name=name, role=role, producers=list(producers),
                                                 expires_at=expiry_in_days(expires_in), actor=_actor())
    click.echo(json.dumps({**_token_json(created), "token": secret}))


@token.command("list")
def token_list() -> None:
    """Every token, one JSON object a line (never the secret: the store does not have it)."""
    import json

    for t in _store().tokens.list():
        click.echo(json.dumps(_token_json(t)))


@token.command("revoke")
@click.argument("token_id")
def token_revoke(token_id: str) -> None:
    """Revoke a token: its next request is refused (401), on every server."""
    import json

    with _refused():
        revoked = _store().tokens.revoke(token_id, actor=_actor())
    click.echo(json.dumps(_token_json(revoked)))


if __name__ == "__main__":
    main()
