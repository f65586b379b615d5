"""Loading a package by id, with the checks every service needs (one place, no import cycles)."""

from __future__ import annotations

from sqlalchemy import select
from sqlmodel import Session

from ..db import Database
from ..errors import Gone, NotFound, PackageImmutable
from ..models import Package, PackageStatus


def load_package(session: Session, package_id: str, *, lock: bool = False, db: Database | None = None) -> Package:
    """The package with this id, or NotFound; with ``lock``, its row is locked for update."""
    stmt = select(Package).where(Package.id == package_id)
    if lock and db is not None:
        stmt = db.for_update(stmt)
    package = session.scalars(stmt).first()
    if package is None:
        raise NotFound(f"no package {package_id!r}", package_id=package_id)
    return package


def require_open(package: Package) -> None:
    """Raise Gone or PackageImmutable unless the package may still receive files."""
    if package.status == PackageStatus.DELETED:
        raise Gone(f"package {package.id} was deleted", package_id=package.id)
    if not PackageStatus(package.status).is_open:
        raise PackageImmutable(f"package {package.id} is {package.status}; it no longer accepts changes",
                               package_id=package.id, package_status=package.status)


def load_open_package(session: Session, db: Database, package_id: str) -> Package:
    """Lock a package that may still receive files, or raise Gone / PackageImmutable."""
    package = load_package(session, package_id, lock=True, db=db)
    require_open(package)
    return package
