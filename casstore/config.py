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


def _first(env, *names: str) -> str | None:
    """The first of these variables that is set and not empty."""
    for name in names:
        value = env.get(name)
        if value:
            return value
    return None


def _flag(value: str | None) -> bool | None:
    return None if value is None else value.strip().lower() in ("1", "true", "yes", "on")


CONDITIONAL_WRITES = ("probe", "off")


@dataclass(frozen=True)
class S3Options:
    """S3 / Ceph RGW settings, resolved here once for obstore and botocore alike.

    Every value comes from its ARTIFACT_STORE_S3_* variable, else from the
    standard AWS_* one (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_REGION /
    AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_SESSION_TOKEN, AWS_ALLOW_HTTP). Resolving them here, instead of
    leaving it to obstore, is needed: the client options the adapter passes
    (timeouts) replace obstore's own reading of AWS_ALLOW_HTTP.

    ``conditional_writes``: ``probe`` (default) uses the backend's conditional
    create / copy-if-not-exists where the start-up probe found them working,
    ``off`` never relies on them (look, then write). ``single_copy_limit``:
    objects larger than this are copied in parallel ranged parts (S3's CopyObject
    stops at 5 GiB).
    """

    endpoint: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    path_style: bool = True
    allow_http: bool | None = None
    part_size: int = 8 << 20
    concurrency: int = 4
    timeout_s: float = 60
    retries: int = 5
    conditional_writes: str = "probe"
    single_copy_limit: int = 5 << 30

    def __repr__(self) -> str:  # never print the secret
        return f"S3Options(endpoint={self.endpoint!r}, region={self.region!r}, path_style={self.path_style})"

    @classmethod
    def from_env(cls, env) -> "S3Options":
        secret = _first(env, "ARTIFACT_STORE_S3_SECRET_ACCESS_KEY")
        secret_file = env.get("ARTIFACT_STORE_S3_SECRET_ACCESS_KEY_FILE")
        if secret_file:
            with open(secret_file) as f:
                secret = f.read().strip()
        addressing = env.get("ARTIFACT_STORE_S3_ADDRESSING", "path")
        if addressing not in ("path", "virtual"):
            raise ValueError("ARTIFACT_STORE_S3_ADDRESSING is 'path' or 'virtual'")
        conditional = env.get("ARTIFACT_STORE_S3_CONDITIONAL_WRITES", "probe")
        if conditional not in CONDITIONAL_WRITES:
            raise ValueError("ARTIFACT_STORE_S3_CONDITIONAL_WRITES is 'probe' or 'off'")
        return cls(
            endpoint=_first(env, "ARTIFACT_STORE_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
            region=_first(env, "ARTIFACT_STORE_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
            access_key_id=_first(env, "ARTIFACT_STORE_S3_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
            secret_access_key=secret or _first(env, "AWS_SECRET_ACCESS_KEY"),
            session_token=None if secret else _first(env, "AWS_SESSION_TOKEN"),
            path_style=addressing == "path",
            allow_http=_flag(_first(env, "ARTIFACT_STORE_S3_ALLOW_HTTP", "AWS_ALLOW_HTTP")),
            part_size=int(float(env.get("ARTIFACT_STORE_S3_PART_SIZE_MIB", "8")) * (1 << 20)),
            concurrency=int(env.get("ARTIFACT_STORE_S3_CONCURRENCY", "4")),
            timeout_s=float(env.get("ARTIFACT_STORE_S3_TIMEOUT", "60")),
            retries=int(env.get("ARTIFACT_STORE_S3_RETRIES", "5")),
            conditional_writes=conditional,
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
            anonymous_read=_true_or_false(env.get("ARTIFACT_STORE_ANONYMOUS_READ"), "ARTIFACT_STORE_ANONYMOUS_READ"),
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


def _true_or_false(value: str | None, name: str) -> bool:
    if value is None or not value.strip():
        return False
    if value.strip().lower() not in ("1", "true", "yes", "0", "false", "no"):
        raise ValueError(f"{name} is 'true' or 'false', not {value!r}")
    return value.strip().lower() in ("1", "true", "yes")
