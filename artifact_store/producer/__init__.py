"""The producer side: the ``artifact-store ingest`` client (HTTP only, no server code).

A producer runs on another host than the store, so this package talks to the
service over HTTP and imports nothing of the server (no Flask, SQLAlchemy or
obstore): the command starts in tens of milliseconds.
"""


def run_ingest(run_dir, url: str, *, retention_class=None, jobs: int = 4, progress: bool = False,
               cache_path="default"):
    """Ingest one run directory; returns (exit status, result or None, message for stderr)."""
    import getpass
    import socket
    import sys

    from .client import ApiError, StoreClient, Unreachable, token_from_env
    from .hashcache import HashCache, default_cache_path
    from .ingest import IngestConflict, Ingestor, Progress
    from .rundir import RunDirError, load

    try:
        run = load(run_dir)
    except RunDirError as exc:
        return 2, None, f"error: {exc}"
    for link in run.links:
        print(f"skipped symbolic link: {link}", file=sys.stderr)
    for other in run.skipped_other:
        print(f"skipped special file: {other}", file=sys.stderr)
    try:
        token = token_from_env()
    except (OSError, ValueError) as exc:
        return 2, None, f"error: {exc}"
    cache = HashCache(default_cache_path() if cache_path == "default" else cache_path)
    try:
        actor = f"{getpass.getuser()}@{socket.gethostname()}"
        client = StoreClient(url, actor=actor, token=token)
        result = Ingestor(client, run, cache, jobs=jobs, retention_class=retention_class,
                          progress=Progress(progress)).ingest()
        return 0, result, None
    except (RunDirError, IngestConflict) as exc:
        return 2, None, f"error: {exc}"
    except ApiError as exc:
        code = 2 if exc.status < 500 else 1
        hint = "" if code == 2 else " (run the same command again to resume)"
        if exc.status == 401:
            hint = " (set ARTIFACT_STORE_TOKEN, or ARTIFACT_STORE_TOKEN_FILE, to a producer token)"
        return code, None, f"error: the service answered {exc}{hint}"
    except Unreachable as exc:
        return 1, None, f"error: cannot reach the service: {exc} (run the same command again to resume)"
    finally:
        cache.close()
