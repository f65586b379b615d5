"""Alembic migrations: the only way the registry's schema is created or changed."""
