"""The backends every storage conformance test runs on (S3 joins when a server is configured)."""

from __future__ import annotations

import os

import pytest

from casstore.storage import LocalStorage, open_storage

BACKENDS = ["local", "memory"]


def make_storage(kind: str, tmp_path):
    if kind == "local":
        return LocalStorage(str(tmp_path / "objects"))
    if kind == "memory":
        return open_storage("memory:///")
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
