"""Health: is the database answering, and can the backend write, read and delete?"""

from __future__ import annotations

import logging
import time

from sqlalchemy import text

from .. import layout
from ..db import Database
from ..storage import Storage

PROBE = b"artifact-store health probe\n"
log = logging.getLogger(__name__)


def _timed(check) -> dict:
    started = time.perf_counter()
    try:
        detail = check() or {}
        status = "ok"
    except Exception as exc:  # health reports every failure instead of raising it
        # The kind of failure only: its text names storage keys, paths and hosts (the log has it).
        log.error("health check %s failed: %s", getattr(check, "__name__", "?"), exc, exc_info=exc)
        detail = {"error": type(exc).__name__}
        status = "down"
    return {"status": status, "latency_ms": round((time.perf_counter() - started) * 1000, 2), **detail}


class HealthService:
    def __init__(self, db: Database, storage: Storage, capabilities=lambda: {}) -> None:
        self.db = db
        self.storage = storage
        self.capabilities = capabilities

    def check(self) -> dict:
        """{status, database, storage}; status is 'ok' only when both are."""
        database = _timed(self._database)
        storage = _timed(self._storage)
        ok = database["status"] == "ok" and storage["status"] == "ok"
        return {"status": "ok" if ok else "down", "database": database, "storage": storage}

    def _database(self) -> dict:
        with self.db.read() as session:
            session.execute(text("SELECT 1"))
        return {"dialect": self.db.engine.dialect.name}

    def _storage(self) -> dict:
        key = layout.new_health_key()
        try:
            self.storage.put_stream(key, [PROBE])
            if b"".join(self.storage.get(key)) != PROBE:
                raise RuntimeError("probe object read back different bytes")
        finally:
            self.storage.delete(key)
        return {"backend": self.storage.backend, "capabilities": self.capabilities()}
