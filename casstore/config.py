"""Settings, read once from the environment (every name is in the README).

| variable                                | default                                  |
|-----------------------------------------|------------------------------------------|
| ARTIFACT_STORE_DATA_DIR                 | ./var                                    |
| ARTIFACT_STORE_DATABASE_URL             | sqlite:///<data dir>/artifact-store.db   |
| ARTIFACT_STORE_STORAGE_URL              | file://<data dir>/objects                |
| ARTIFACT_STORE_HOST / ARTIFACT_STORE_PORT | 127.0.0.1 / 8080                       |
| ARTIFACT_STORE_DEFAULT_RETENTION_CLASS  | raw-evidence (for producers with no default of their own) |
| ARTIFACT_STORE_PUBLIC_URL               | http://<host>:<port> (links in answers)  |
| ARTIFACT_STORE_S3_*                     | S3 / Ceph RGW settings (see S3Options)   |
| ARTIFACT_STORE_AUTH                     | on, except off when bound to loopback only (api/auth.py) |
| ARTIFACT_STORE_ANONYMOUS_READ           | false: anonymous clients may read packages, manifests, files |
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class S3Options:
    """S3 / Ceph RGW settings; unset values fall back to the AWS_* variables obstore reads."""

    endpoint: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    path_style: bool = True
    allow_http: bool | None = None
    part_size: int = 8 << 20
    concurrency: int = 4
    timeout_s: float = 60
    retries: int = 5

    def __repr__(self) -> str:  # never print the secret
        return f"S3Options(endpoint={self.endpoint!r}, region={self.region!r}, path_style={self.path_style})"


    @classmethod
    def from_env(cls, env) -> "S3Options":
        secret = env.get("ARTIFACT_STORE_S3_SECRET_ACCESS_KEY")
        secret_file = env.get("ARTIFACT_STORE_S3_SECRET_ACCESS_KEY_FILE")
        if secret_file:
            with open(secret_file) as f:
                secret = f.read().strip()
        allow = env.get("ARTIFACT_STORE_S3_ALLOW_HTTP")
        addressing = env.get("ARTIFACT_STORE_S3_ADDRESSING", "path")
        if addressing not in ("path", "virtual"):
            raise ValueError("ARTIFACT_STORE_S3_ADDRESSING is 'path' or 'virtual'")
        return cls(
            endpoint=env.get("ARTIFACT_STORE_S3_ENDPOINT") or None,
            region=env.get("ARTIFACT_STORE_S3_REGION") or None,
            access_key_id=env.get("ARTIFACT_STORE_S3_ACCESS_KEY_ID") or None,
            secret_access_key=secret or None,
            path_style=addressing == "path",
            allow_http=None if allow is None else allow.lower() in ("1", "true", "yes"),
            part_size=int(float(env.get("ARTIFACT_STORE_S3_PART_SIZE_MIB", "8")) * (1 << 20)),
            concurrency=int(env.get("ARTIFACT_STORE_S3_CONCURRENCY", "4")),
            timeout_s=float(env.get("ARTIFACT_STORE_S3_TIMEOUT", "60")),
            retries=int(env.get("ARTIFACT_STORE_S3_RETRIES", "5")),
        )


@dataclass(frozen=True)
class Settings:
    data_dir: str
    database_url: str
    storage_url: str
    host: str = "127.0.0.1"
    port: int = 8080
    default_retention_class: str = "raw-evidence"
    public_url: str = ""
    auth: str | None = None  # "on", "off", or None: decided by the bind address (api/auth.py)
    anonymous_read: bool = False
    s3: S3Options = field(default_factory=S3Options)

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
            auth=_auth_mode(env.get("ARTIFACT_STORE_AUTH")),
            anonymous_read=_flag(env.get("ARTIFACT_STORE_ANONYMOUS_READ"), "ARTIFACT_STORE_ANONYMOUS_READ"),
            s3=S3Options.from_env(env),
        )
        values.update(overrides)
        return cls(**values)

    @property
    def base_url(self) -> str:
        return self.public_url.rstrip("/") or f"http://{self.host}:{self.port}"


def _auth_mode(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    if value.strip().lower() not in ("on", "off"):
        raise ValueError(f"ARTIFACT_STORE_AUTH is 'on' or 'off', not {value!r}")
    return value.strip().lower()


def _flag(value: str | None, name: str) -> bool:
    if value is None or not value.strip():
        return False
    if value.strip().lower() not in ("1", "true", "yes", "0", "false", "no"):
        raise ValueError(f"{name} is 'true' or 'false', not {value!r}")
    return value.strip().lower() in ("1", "true", "yes")
