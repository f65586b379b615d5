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

    from .client import PRODUCER, StoreClient, token_from_env
    from .hashcache import HashCache, default_cache_path
    from .rundir import RunDirError, load, read_run

    try:
        run_id = read_run(run_dir)["run_id"]
        token = token_from_env()
    except (RunDirError, OSError, ValueError) as exc:  # run.json, or the token file
        return 2, None, f"error: {exc}"
    client = StoreClient(url, actor=f"{getpass.getuser()}@{socket.gethostname()}", token=token)
    found = client.find_package_soon(PRODUCER, run_id)  # asked while the run is scanned
    try:
        run = load(run_dir)
    except RunDirError as exc:
        return 2, None, f"error: {exc}"
    for link in run.links:
        print(f"skipped symbolic link: {link}", file=sys.stderr)
    for other in run.skipped_other:
        print(f"skipped special file: {other}", file=sys.stderr)
    return _ingest(client, run, found if run.run_id == run_id else None,
                   HashCache(default_cache_path() if cache_path == "default" else cache_path),
                   jobs=jobs, retention_class=retention_class, progress=progress)


def _ingest(client, run, found, cache, progress: bool, **options):
    """The ingest (none when the cache shows the store holds the run: answer.held_already);
    its errors as (exit status, None, message); the cache closed at the end."""
    from .answer import IngestConflict, held_already
    from .client import ApiError, Unreachable
    from .rundir import RunDirError

    try:
        result = held_already(run, found, cache, client.base_url)
        if result is None:
            from .ingest import Ingestor, Progress

            result = Ingestor(client, run, cache, found=found, progress=Progress(progress), **options).ingest()
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
