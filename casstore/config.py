"""Settings, read once from the environment (every name is in the README).

| variable                                | default                                  |
|-----------------------------------------|------------------------------------------|
| ARTIFACT_STORE_DATA_DIR                 | ./var                                    |
| ARTIFACT_STORE_DATABASE_URL             | sqlite:///<data dir>/artifact-store.db   |
| ARTIFACT_STORE_STORAGE_URL              | file://<data dir>/objects                |
| ARTIFACT_STORE_HOST / ARTIFACT_STORE_PORT | 127.0.0.1 / 8080                       |
| ARTIFACT_STORE_DEFAULT_RETENTION_CLASS  | raw-evidence (for producers with no default of their own) |
| ARTIFACT_STORE_PUBLIC_URL               | http://<host>:<port> (links in answers)  |
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    data_dir: str
    database_url: str
    storage_url: str
    host: str = "127.0.0.1"
    port: int = 8080
    default_retention_class: str = "raw-evidence"
    public_url: str = ""
    storage_options: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: dict | None = None, **overrides) -> "Settings":
        env = os.environ if env is None else env
        data_dir = os.path.abspath(env.get("ARTIFACT_STORE_DATA_DIR", "./var"))
        host = env.get("ARTIFACT_STORE_HOST", "127.0.0.1")
        port = int(env.get("ARTIFACT_STORE_PORT", "8080"))
        values = dict(
            data_dir=data_dir,
            database_url=env.get("ARTIFACT_STORE_DATABASE_URL")
            or f"sqlite:///{os.path.join(data_dir, 'artifact-store.db')}",
            storage_url=env.get("ARTIFACT_STORE_STORAGE_URL")
            or Path(os.path.join(data_dir, "objects")).as_uri(),
            host=host,
            port=port,
            default_retention_class=env.get("ARTIFACT_STORE_DEFAULT_RETENTION_CLASS", "raw-evidence"),
            public_url=env.get("ARTIFACT_STORE_PUBLIC_URL", ""),
        )
        values.update(overrides)
        return cls(**values)

    @property
    def base_url(self) -> str:
        return self.public_url.rstrip("/") or f"http://{self.host}:{self.port}"
