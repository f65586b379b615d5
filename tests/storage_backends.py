"""The backends every storage conformance test runs on.

S3 joins when ARTIFACT_STORE_TEST_S3_ENDPOINT names a real S3-compatible server
(.ci/run starts SeaweedFS); each test then works under a prefix of its own.
"""

from __future__ import annotations

import os
import uuid

import pytest

from casstore.config import S3Options
from casstore.storage import LocalStorage, S3Storage, open_storage

S3_ENDPOINT = os.environ.get("ARTIFACT_STORE_TEST_S3_ENDPOINT", "")
S3_BUCKET = os.environ.get("ARTIFACT_STORE_TEST_S3_BUCKET", "test")
BACKENDS = ["local", "memory", "s3"]


def s3_options(**overrides) -> S3Options:
    values = dict(endpoint=S3_ENDPOINT, region="us-east-1",
                  access_key_id=os.environ.get("ARTIFACT_STORE_TEST_S3_ACCESS_KEY_ID", "testkey"),
                  secret_access_key=os.environ.get("ARTIFACT_STORE_TEST_S3_SECRET_ACCESS_KEY", "testsecret"),
                  allow_http=True, part_size=5 << 20, timeout_s=30, retries=2)
    values.update(overrides)
    return S3Options(**values)


def s3_url(prefix: str | None = None) -> str:
    return f"s3://{S3_BUCKET}/{prefix or 't-' + uuid.uuid4().hex[:12]}"


def make_storage(kind: str, tmp_path):
    if kind == "local":
        return LocalStorage(str(tmp_path / "objects"))
    if kind == "memory":
        return open_storage("memory:///")
    if kind == "s3":
        if not S3_ENDPOINT:
            pytest.skip("no S3-compatible server (set ARTIFACT_STORE_TEST_S3_ENDPOINT; .ci/run starts SeaweedFS)")
        return open_storage(s3_url(), s3=s3_options())
    raise pytest.skip.Exception(f"unknown backend {kind}")


def remaining_keys(storage) -> list[str]:
    """Everything still on the backend, including obstore's hidden local temporaries."""
    keys = [info.key for info in storage.list("")]
    root = getattr(storage, "root", None)
    if root:
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                rel = os.path.relpath(os.path.join(dirpath, name), root)
                if rel not in keys:
                    keys.append(rel)
    return sorted(keys)


__all__ = ["BACKENDS", "S3Storage", "make_storage", "remaining_keys", "s3_options", "s3_url"]


def leave_stray_write(storage, key: str) -> bool:
    """Leave what a killed upload leaves: a started multipart upload (S3), a temporary file (local)."""
    if isinstance(storage, S3Storage):
        client = storage._client()
        full = f"{storage.prefix}/{key}" if storage.prefix else key
        upload = client.create_multipart_upload(Bucket=storage.bucket, Key=full)
        client.upload_part(Bucket=storage.bucket, Key=full, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 100)
        return True
    root = getattr(storage, "root", None)
    if root:
        path = os.path.join(root, key + "#1")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"half a blob")
        return True
    return False
