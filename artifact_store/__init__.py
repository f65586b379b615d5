"""The shell around the core: the ``artifact-store`` command, the server start-up, and the
producer client (``ingest``).

It sits above both casstore (the core) and api (the HTTP layer): it may import
either; neither imports it.
"""
