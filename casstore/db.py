"""The metadata database: engine, transactions, and migrations.

Two kinds of transaction, chosen by the caller:

* ``db.read()``  - a plain transaction (SQLite: deferred BEGIN; readers never block in WAL).
* ``db.write()`` - a transaction that changes state. On SQLite it starts with
  BEGIN IMMEDIATE, so writers queue for the single write lock instead of
  failing half-way with "database is locked"; on PostgreSQL the services take
  row locks (SELECT ... FOR UPDATE) on what they change.

SQLite runs in WAL mode with synchronous=NORMAL: durable across process
crashes, and a 1,500-row batch costs milliseconds (see FACTS.md).

SQLite writers also queue at a gate before BEGIN IMMEDIATE: a thread lock,
then an flock on ``<database>.writer`` for the other processes. SQLite's own
busy handler polls with sleeps growing to 100 ms, so two concurrent batches
cost a sleep each; the gate hands the lock over the moment it is released,
and the kernel releases it when a process dies.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlmodel import Session

MIGRATIONS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "migrations")


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (pysqlite's own is broken)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        mode = "BEGIN IMMEDIATE" if conn.get_execution_options().get("casstore_write") else "BEGIN"
        conn.exec_driver_sql(mode)


class WriterGate:
    """One SQLite writer at a time across threads and processes, woken at once (not polled)."""

    def __init__(self, lock_path: str) -> None:
        self._path = lock_path
        self._thread_lock = threading.Lock()
        self._fd, self._pid = -1, 0

    def _fd_here(self) -> int:
        """This process's own open file (a forked child must not share its parent's flock)."""
        if self._pid != os.getpid():
            self._fd, self._pid = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600), os.getpid()
        return self._fd

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        try:
            fcntl.flock(self._fd_here(), fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def __exit__(self, *exc) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def close(self) -> None:
        if self._pid == os.getpid():
            os.close(self._fd)
        self._pid = 0


def _sqlite_path(url: str) -> str | None:
    path = url.split("///", 1)[1] if "///" in url else ""
    return path.split("?", 1)[0] if path and not path.startswith(":memory:") else None


def make_engine(url: str) -> Engine:
    """An engine for a SQLAlchemy URL, with SQLite tuned for concurrent writers."""
    if url.startswith("sqlite"):
        path = _sqlite_path(url)
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 60})
        _sqlite_setup(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


class Database:
    """One engine and the two transaction kinds over it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        path = _sqlite_path(url) if self.is_sqlite else None
        self._gate = WriterGate(os.path.abspath(path) + ".writer") if path else None

    @contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction that commits on success and rolls back on any exception."""
        with self._gate or nullcontext(), self._transaction() as session:
            yield session

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(casstore_write=True)
            with Session(bind=conn, expire_on_commit=False) as session:
                try:
                    yield session
                    session.commit()
                except BaseException:
                    session.rollback()
                    raise

    def for_update(self, stmt):
        """Add FOR UPDATE where the database has row locks (SQLite's write lock covers it)."""
        return stmt if self.is_sqlite else stmt.with_for_update()

    def upgrade(self) -> None:
        """Bring the schema to the newest migration (the only way tables are made)."""
        from alembic import command

        command.upgrade(alembic_config(self.url), "head")

    def dispose(self) -> None:
        self.engine.dispose()
        if self._gate is not None:
            self._gate.close()
            self._gate = None


def insert_for(session: Session):
    """The dialect's INSERT, which knows ON CONFLICT DO NOTHING."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def alembic_config(url: str):
    """An Alembic config for ``url`` that needs no alembic.ini on disk."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", MIGRATIONS_DIR)
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg
