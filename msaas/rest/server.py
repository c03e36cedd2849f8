"""`msaas rest`: the Flask app under gunicorn, a production WSGI server."""

from __future__ import annotations

from gunicorn.app.base import BaseApplication

from ..config import Settings
from . import create_app


class RestServer(BaseApplication):
    def __init__(self, settings: Settings, workers: int = 2, threads: int = 8):
        self.settings = settings
        self.options = {
            "bind": f"{settings.host or '0.0.0.0'}:{settings.port}",  # the images listen on every interface
            "workers": workers,
            "worker_class": "gthread",
            "threads": threads,
            "timeout": 300,  # a 100 MB upload on a slow link
            "graceful_timeout": 20,
            "accesslog": "-" if settings.log_level == "DEBUG" else None,
            "errorlog": "-",
            "loglevel": settings.log_level.lower(),
            "control_socket_disable": True,  # unused, and it would write under $HOME (read-only in containers)
        }
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            if key in self.cfg.settings:  # older gunicorns lack some settings
                self.cfg.set(key, value)

    def load(self):
        return create_app(self.settings)
