"""Which database and storage an operator command acts on, and whether that database is ready.

Operator commands take their database from the environment (by default
./var under the current directory). Run in the wrong place, they must not
make an empty database there and report on it: they name what they act on
(credentials hidden) and refuse, in one line, a database that does not
exist, cannot be opened, or lacks the newest schema. Only ``db upgrade``
(and ``serve``, which runs it) creates or migrates a schema.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from casstore.config import Settings


class NotReady(Exception):
    """The database cannot be used by an operator command; the message says why, in one line."""


def redacted_database(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable database URL>"


def redacted_storage(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def describe(settings: Settings) -> str:
    """One line naming the database and the storage, credentials hidden."""
    return f"database {redacted_database(settings.database_url)}; storage {redacted_storage(settings.storage_url)}"


def head_revisions(url: str) -> set[str]:
    from alembic.script import ScriptDirectory

    from casstore.db import alembic_config

    return set(ScriptDirectory.from_config(alembic_config(url)).get_heads())


def check(settings: Settings) -> None:
    """Raise NotReady unless the database exists and carries the newest schema; creates nothing."""
    url = settings.database_url
    shown = redacted_database(url)
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise NotReady(f"ARTIFACT_STORE_DATABASE_URL is not a database URL: {exc}") from exc
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database or ""
        if not path or path == ":memory:" or path.startswith("file:"):
            raise NotReady(f"{shown}: an operator command needs a database file, not an in-memory database")
        if not os.path.isfile(path):
            raise NotReady(f"no database at {os.path.abspath(path)} (set ARTIFACT_STORE_DATA_DIR or "
                           f"ARTIFACT_STORE_DATABASE_URL; `artifact-store db upgrade` creates one)")
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                raise NotReady(f"{shown} has no artifact-store schema (run `artifact-store db upgrade` "
                               f"if this is the right database)")
            current = set(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc) or exc).strip().splitlines()[0][:300]
        raise NotReady(f"cannot open {shown}: {reason}") from exc
    finally:
        engine.dispose()
    heads = head_revisions(url)
    if current != heads:
        raise NotReady(f"{shown} is at schema {sorted(current) or 'none'}, this version needs {sorted(heads)}: "
                       f"run `artifact-store db upgrade`")
