"""gunicorn, started from Python so that ``artifact-store serve`` needs no config file.

Workers use gthread: each request streams on its own thread, and a long
upload does not block the worker's heartbeat.
"""

from __future__ import annotations

from gunicorn.app.base import BaseApplication

from casstore.config import Settings


class _Server(BaseApplication):
    def __init__(self, settings: Settings, options: dict) -> None:
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings:  # newer settings are skipped on an older gunicorn
                self.cfg.set(key, value)

    def load(self):
        from api import create_app

        return create_app(self.settings)


def run(settings: Settings, *, workers: int = 2, threads: int = 8) -> None:
    _Server(settings, {
        "bind": f"{settings.host}:{settings.port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "timeout": 120,
        "graceful_timeout": 30,
        "keepalive": 30,
        "errorlog": "-",
        "loglevel": "info",
        # No gunicornc control socket: one fixed path per user would be shared by every server on the host.
        "control_socket_disable": True,
    }).run()
