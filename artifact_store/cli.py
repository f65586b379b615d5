"""The ``artifact-store`` command: ingest and download, serve, db upgrade, and the operator's tools.

argparse (the standard library's parser), not click: a producer runs
``ingest`` after every run, and an unchanged re-ingest is mostly the command's
own start. Importing click cost 13-19 ms of every start (with the inspect
module it pulls in), a seventh of an unchanged re-ingest of 1,500 files;
argparse costs 1.5 ms. Nothing here imports more than its command needs: the
server's stack (Flask, SQLAlchemy, obstore) only under the commands that use it.

Exit status, for every command: 0 done; 2 refused (bad arguments, a refusal of
the store such as a package not eligible, a run directory that cannot be
ingested); 1 a failure or discrepancy (each command's help says which).
"""

from __future__ import annotations

import argparse
import os
import sys

from . import cli_commands as commands


def _columns() -> int:
    """The width help is wrapped to, found as shutil.get_terminal_size finds it: COLUMNS, then
    the terminal of standard output, then 80.

    Not shutil's own: argparse makes a formatter for every option it adds, and its default
    one imports shutil, which imports zlib, bz2 and lzma: 3.5 ms of every start."""
    try:
        columns = int(os.environ.get("COLUMNS", 0))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class _Sized:
    """A help formatter sized by ``_columns``, less 2 as argparse's own."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position, width if width is not None else _columns() - 2)


class HelpFormatter(_Sized, argparse.HelpFormatter):
    """argparse's: descriptions wrapped (the top and the command groups)."""


class CommandHelpFormatter(_Sized, argparse.RawDescriptionHelpFormatter):
    """argparse's: a command's description (its docstring) kept as written."""


def _command(subparsers, name: str, func) -> argparse.ArgumentParser:
    """A command whose help is its function's docstring (the first paragraph in the list of commands)."""
    first, _, rest = (func.__doc__ or "").strip().partition("\n")
    doc = "\n".join([first, *(line[4:] if line.startswith("    ") else line for line in rest.split("\n"))])
    sub = subparsers.add_parser(name, help=doc.split("\n\n")[0].replace("\n", " "), description=doc,
                                formatter_class=CommandHelpFormatter, allow_abbrev=False)
    sub.set_defaults(func=func, parser=sub)
    return sub


def _group(subparsers, name: str, doc: str):
    """A command of commands (``hold add``): the group's parser and its subparsers. Given no
    subcommand, it prints its help (main), unless it sets a ``func`` of its own."""
    sub = subparsers.add_parser(name, help=doc, description=doc, formatter_class=HelpFormatter, allow_abbrev=False)
    sub.set_defaults(func=None, parser=sub)
    return sub, sub.add_subparsers(title="commands", metavar="COMMAND", dest=f"{name}_command")


def int_range(low: int, high: int | None = None):
    """An argument type: a whole number within [low, high] (no upper bound if high is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bounds = f"{low}<=x<={high}" if high is not None else f"x>={low}"
            raise argparse.ArgumentTypeError(f"{value} is not in the range {bounds}")
        return value

    return parse


def float_range(low: float, high: float | None = None, *, low_open: bool = False):
    """An argument type: a number within [low, high] (above low, not at it, if low_open)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < low or (low_open and value == low) or (high is not None and value > high):
            bounds = f"{low}{'<' if low_open else '<='}x" + (f"<={high}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"{value} is not in the range {bounds}")
        return value

    return parse


def directory(text: str) -> str:
    """A path that is a directory or does not exist yet (a file there is refused before any work)."""
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a directory")
    return text


def not_a_directory(text: str) -> str:
    """A path that is not a directory (a file to create or to read)."""
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a directory, not a file")
    return text


URL_HELP = "The service (default ARTIFACT_STORE_URL, else http://ARTIFACT_STORE_HOST:ARTIFACT_STORE_PORT)."
REASON_HELP = "Why (kept in the retention and audit events)."
HOLD_REASON_HELP = "Why (kept on the hold and in the events)."


def _serve(sub) -> None:
    p = _command(sub, "serve", commands.serve)
    p.add_argument("--host", default=None, help="Address to bind (default ARTIFACT_STORE_HOST or 127.0.0.1).")
    p.add_argument("--port", default=None, type=int_range(0, 65535),
                   help="Port (default ARTIFACT_STORE_PORT or 8080).")
    p.add_argument("--workers", default=2, type=int_range(1, 64), metavar="N",
                   help="gunicorn worker processes (default 2).")
    p.add_argument("--threads", default=8, type=int_range(1, 256), metavar="N",
                   help="Threads per worker (concurrent requests each; default 8).")
    p.add_argument("--header-timeout", default=10.0, type=float_range(0.5, 3600), metavar="SECONDS",
                   help="Seconds a client has to send a whole request head (else 408, connection closed; "
                        "default 10).")
    p.add_argument("--io-timeout", default=30.0, type=float_range(0.5, 3600), metavar="SECONDS",
                   help="Seconds any read of a request body or write of an answer may stall before the "
                        "connection is closed (default 30).")
    p.add_argument("--keepalive", default=15, type=int_range(0, 3600), metavar="SECONDS",
                   help="Seconds an idle kept-alive connection stays open (default 15).")
    p.add_argument("--max-connections", default=4096, type=int_range(16, 100000), metavar="N",
                   help="Open connections per worker (idle and slow ones cost no thread, only a file "
                        "descriptor; default 4096).")
    p.add_argument("--no-upgrade", action="store_true", help="Do not run database migrations before starting.")


def _ingest(sub) -> None:
    p = _command(sub, "ingest", commands.ingest)
    p.add_argument("run_dir", metavar="RUN_DIR", type=directory)
    p.add_argument("--url", default=None, help=URL_HELP)
    p.add_argument("--retention-class", default=None, metavar="CLASS", help="Override the run's retention wish.")
    p.add_argument("--jobs", default=4, type=int_range(1, 64), metavar="N",
                   help="Parallel hashing/uploads (default 4).")
    p.add_argument("--quiet", action="store_true", help="No progress bar, even on a terminal.")
    p.add_argument("--cache", dest="cache_path", default=None, type=not_a_directory, metavar="FILE",
                   help="Hash cache file (default $XDG_CACHE_HOME/artifact-store/hashes.sqlite3).")
    p.add_argument("--no-cache", action="store_true", help="Hash every file, and remember nothing.")


def _download(sub) -> None:
    p = _command(sub, "download", commands.download)
    p.add_argument("package_id", metavar="PACKAGE_ID")
    p.add_argument("dest", metavar="DEST", type=directory)
    p.add_argument("--url", default=None, help=URL_HELP)
    p.add_argument("--jobs", default=4, type=int_range(1, 64), metavar="N", help="Parallel downloads (default 4).")


def _db(sub) -> None:
    _, db = _group(sub, "db", "Database schema management.")
    _command(db, "upgrade", commands.db_upgrade)


def _retention_classes(sub) -> None:
    classes, under = _group(sub, "retention-classes", "List retention classes (or change one with `set`).")
    classes.set_defaults(func=commands.retention_classes)
    for name, func in (("set", commands.retention_classes_set), ("create", commands.retention_classes_create)):
        p = _command(under, name, func)
        p.add_argument("name", metavar="NAME")
        p.add_argument("--days", type=int_range(0), default=None, metavar="N",
                       help="New duration (0 allowed)." if name == "set" else "Duration in days (0 allowed).")
        p.add_argument("--never", action="store_true", help="Never expire.")
        if name == "create":
            p.add_argument("--description", default="", help="What the class is for.")
        p.add_argument("--reason", default="", help="Why (kept in the audit event).")


def _hold(sub) -> None:
    _, holds = _group(sub, "hold", "Place and release holds (a held package is never eligible for deletion).")
    p = _command(holds, "add", commands.hold_add)
    p.add_argument("package_id", metavar="PACKAGE_ID")
    p.add_argument("--reason", required=True, help=HOLD_REASON_HELP)
    p = _command(holds, "release", commands.hold_release)
    p.add_argument("package_id", metavar="PACKAGE_ID")
    p.add_argument("hold_id", metavar="HOLD_ID")
    p.add_argument("--reason", required=True, help=HOLD_REASON_HELP)


def _retention(sub) -> None:
    _, retention = _group(sub, "retention", "Change a package's retention (extend only).")
    p = _command(retention, "extend", commands.retention_extend)
    p.add_argument("package_id", metavar="PACKAGE_ID")
    p.add_argument("--days", type=int_range(1, 100 * 365), default=None, metavar="N",
                   help="Add N days to the expiry.")
    p.add_argument("--until", default=None, metavar="TIME", help="A new, later expiry (ISO 8601).")
    p.add_argument("--class", dest="retention_class", default=None, metavar="CLASS",
                   help="Move to a class that keeps longer.")
    p.add_argument("--reason", required=True, help=REASON_HELP)


def _eligibility(sub) -> None:
    p = _command(sub, "eligibility", commands.eligibility)
    p.add_argument("--as-of", default=None, metavar="TIME", help="ISO 8601 time (default now).")
    p.add_argument("--json", dest="as_json", action="store_true", help="JSON instead of a table.")


def _delete(sub) -> None:
    p = _command(sub, "delete", commands.delete)
    p.add_argument("package_id", metavar="PACKAGE_ID")
    p.add_argument("--reason", required=True, help=REASON_HELP)


def _gc(sub) -> None:
    p = _command(sub, "gc", commands.gc)
    p.add_argument("--orphan-grace", default="1h", metavar="AGE",
                   help="Leave objects no row knows alone until they are this old (an upload may be "
                        "finishing; default 1h).")
    p.add_argument("--repack-grace", default="1h", metavar="AGE",
                   help="Delete packs emptied by repacking only once retired this long (reads in flight; "
                        "default 1h).")
    p.add_argument("--json", dest="as_json", action="store_true", help="One JSON object instead of a sentence.")


def _verify(sub) -> None:
    p = _command(sub, "verify", commands.verify)
    p.add_argument("--deep", action="store_true", help="Re-hash every blob's bytes (oldest-verified first).")
    p.add_argument("--max-duration", default=None, metavar="DURATION",
                   help="With --deep: stop after this long (90s, 15m, 6h); the next run resumes where this "
                        "one stopped.")
    p.add_argument("--repair-staging", default=None, metavar="AGE",
                   help="Remove staging objects older than this (e.g. 1d).")


def _token(sub) -> None:
    _, tokens = _group(sub, "token", "API bearer tokens: create (the secret is printed once), list, revoke. "
                                     "Audited.")
    p = _command(tokens, "create", commands.token_create)
    p.add_argument("--role", required=True, choices=["reader", "producer", "operator", "metrics"],
                   help="reader: every GET; producer: reader + ingest for its --producer names; operator: "
                        "everything; metrics: GET /metrics only.")
    p.add_argument("--name", required=True, help="Who holds it: recorded as the actor of what it does.")
    p.add_argument("--producer", dest="producers", action="append", default=[], metavar="NAME",
                   help="A producer name a producer token may write for (repeat for several).")
    p.add_argument("--expires-in", type=float_range(0, low_open=True), default=None, metavar="DAYS",
                   help="Days until it expires (default: never; revoke it when done).")
    _command(tokens, "list", commands.token_list)
    p = _command(tokens, "revoke", commands.token_revoke)
    p.add_argument("token_id", metavar="TOKEN_ID")


# Every command, in the order --help lists them: name -> the function that declares it (and its
# subcommands) on the top parser's subparsers. The single place commands and options are declared.
COMMANDS = {"serve": _serve, "ingest": _ingest, "download": _download, "db": _db,
            "retention-classes": _retention_classes, "hold": _hold, "retention": _retention,
            "eligibility": _eligibility, "delete": _delete, "gc": _gc, "verify": _verify, "token": _token}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser. Given the name of a command (a command line's first word), only
    that command's parsers are made; anything else (None, --help, a typo) makes them all, so help
    and "invalid choice" list every command. Making them all costs 5-10 ms (each parser's help
    strings go through gettext, four stat() calls each), up to a tenth of an unchanged re-ingest.

    Options are never abbreviated (``--no`` is not ``--no-cache``): an option added later would
    change what an abbreviation in someone's script means. A value that begins with ``-`` is
    given as ``--reason=-x`` (argparse takes ``--reason -x`` for an option)."""
    top = argparse.ArgumentParser(prog="artifact-store", description="artifact-store: the evidence store for QA runs.",
                                  formatter_class=HelpFormatter, allow_abbrev=False)
    top.set_defaults(func=None, parser=top)
    sub = top.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    for name, declare in COMMANDS.items():
        if command not in COMMANDS or name == command:
            declare(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    """Run one command line; its exit status. A usage error (argparse's, or a command's
    ``commands.UsageError``) prints the usage and exits with 2; so does a command of commands
    given none (``artifact-store hold``), with its help, which lists them."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    if args.func is None:
        args.parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args) or 0
    except commands.UsageError as exc:
        args.parser.error(str(exc))
        raise  # not reached: error() exits


def run() -> None:
    """The console script (and ``python -m artifact_store.cli``): main, then the process ends.

    Ctrl-C ends it with "Aborted!" and exit status 1, a closed output (``| head``) quietly
    with 1, as click did: no traceback.

    A command that returns (or is interrupted, or loses its output) has closed what it wrote
    (each file, the hash cache; its thread pools joined), so the process then ends at once,
    its output flushed, without the interpreter's teardown: freeing every module and object,
    4-5 ms, 7% of an unchanged re-ingest (Instagram ends its workers the same way, for the
    same reason). Any other exception, and SystemExit (``serve``, usage errors), ends the
    usual way."""
    try:
        code = main()
    except KeyboardInterrupt:
        print("Aborted!", file=sys.stderr)
        code = 1
    except BrokenPipeError:  # the rest of the output, and Python's own flush at exit, go nowhere
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    for stream in (sys.stdout, sys.stderr):  # None when started with the descriptor closed (>&-)
        try:
            if stream is not None:
                stream.flush()
        except BrokenPipeError:  # the output was closed after the command's last line
            code = 1
    os._exit(code)


if __name__ == "__main__":
    run()
