"""Every URL the service hands out, built on ARTIFACT_STORE_PUBLIC_URL.

A producer may reach the service through an address nobody else can use
(localhost, a tunnel, an internal load balancer); the URLs it records must
be the public ones. When ARTIFACT_STORE_PUBLIC_URL is not set, the address
the request came to is used.
"""

from __future__ import annotations

from urllib.parse import quote

from flask import request

from . import context


def base() -> str:
    configured = context.store().settings.public_url.rstrip("/")
    return configured or request.host_url.rstrip("/")


def package_url(package_id: str) -> str:
    return f"{base()}/v1/packages/{quote(package_id, safe='')}"


def file_url(package_id: str, path: str) -> str:
    """The download URL of a file: every byte of the path percent-encoded but '/' (UTF-8 first)."""
    return f"{package_url(package_id)}/files/{quote(path, safe='/')}"


def archive_url(package_id: str, fmt: str = "tar") -> str:
    return f"{package_url(package_id)}/archive" + ("?format=zip" if fmt == "zip" else "")


def manifest_url(package_id: str) -> str:
    return f"{package_url(package_id)}/manifest"


def blob_url(sha256: str) -> str:
    return f"{base()}/v1/blobs/{sha256}"
