"""The ``artifact-store`` command: serve, db upgrade, and the operator's tools."""

from __future__ import annotations

import click

from .config import Settings


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
@click.option("--no-upgrade", is_flag=True, help="Do not run database migrations before starting.")
def serve(host: str | None, port: int | None, workers: int, threads: int, no_upgrade: bool) -> None:
    """Run the HTTP API under gunicorn (migrating the database first)."""
    from .server import run

    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    settings = Settings.from_env(**overrides)
    if not no_upgrade:
        _upgrade(settings)
    click.echo(f"artifact-store listening on http://{settings.host}:{settings.port} "
               f"(database {settings.database_url.split('@')[-1]}, storage {settings.storage_url})", err=True)
    run(settings, workers=workers, threads=threads)


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
    """Apply every pending Alembic migration."""
    _upgrade(Settings.from_env())
    click.echo("database is at the newest schema", err=True)


def _upgrade(settings: Settings) -> None:
    from .db import Database

    database = Database(settings.database_url)
    try:
        database.upgrade()
    finally:
        database.dispose()


if __name__ == "__main__":
    main()
