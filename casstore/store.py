"""The Store: one object that wires settings to the database, the backend and the services.

The API and the CLI build one Store and call its services; nothing else
opens a database or a backend.
"""

from __future__ import annotations

from .cas import BlobStore
from .config import Settings
from .db import Database
from .services.archive import ArchiveService
from .services.audit import AuditService
from .services.blobinfo import BlobInfoService
from .services.eligibility import EligibilityService
from .services.files import FileService
from .services.gc import GcService
from .services.health import HealthService
from .services.packages import PackageService
from .services.retention import RetentionService
from .services.tokens import TokenService
from .services.verify import VerifyService
from .storage import Storage, open_storage


class Store:
    def __init__(self, settings: Settings, storage: Storage | None = None, db: Database | None = None) -> None:
        self.settings = settings
        self.db = db or Database(settings.database_url)
        self.storage = storage or open_storage(settings.storage_url, s3=settings.s3)
        self.blobs = BlobStore(self.storage, self.db)
        self.packages = PackageService(self.db, self.blobs, settings.default_retention_class)
        self.files = FileService(self.db, self.blobs)
        self.health = HealthService(self.db, self.storage, lambda: self.capabilities)
        self.verify = VerifyService(self.db, self.storage, self.blobs)
        self.retention = RetentionService(self.db)
        self.eligibility = EligibilityService(self.db, self.blobs)
        self.gc = GcService(self.db, self.storage, self.blobs)
        self.audit = AuditService(self.db)
        self.archives = ArchiveService(self.db, self.blobs)
        self.blob_info = BlobInfoService(self.db)
        self.tokens = TokenService(self.db)
        self._capabilities: dict | None = None

    @property
    def capabilities(self) -> dict:
        """What the backend really does with conditional writes, probed once (at start-up)."""
        if self._capabilities is None:
            try:
                self._capabilities = self.storage.probe()
            except Exception as exc:  # a backend that is down at start-up: report it, probe again later
                return {"error": f"{type(exc).__name__}: {exc}"[:300]}
        return self._capabilities

    def missing_blobs(self, digests: list[str]) -> list[str]:
        """Which digests the store lacks (answered by the database, fresh)."""
        with self.db.read() as session:
            return self.blobs.missing(session, digests)

    def close(self) -> None:
        self.db.dispose()
