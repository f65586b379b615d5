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
