"""casstore: the core of artifact-store - content-addressed blobs, packages, retention, audit.

Importing this package imports nothing else, so the producer side (the
``ingest`` command) starts fast and never loads Flask, SQLAlchemy or obstore.
"""
