"""Log lines to stdout and to the Redis list `logging`, as `<host>.<component>.<level>:<message>`."""

from __future__ import annotations

import logging
import sys
import time

import redis

from . import keys


class RedisLogHandler(logging.Handler):
    """Pushes each record to the `logging` list; never lets a Redis outage break the caller."""

    def __init__(self, client: redis.Redis, host: str, component: str):
        super().__init__()
        self.client = client
        self.prefix = f"{host}.{component}"
        self._quiet_until = 0.0

    def format_line(self, record: logging.LogRecord) -> str:
        return f"{self.prefix}.{record.levelname.lower()}:{record.getMessage()}"

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("redis", "urllib3")) or time.monotonic() < self._quiet_until:
            return
        try:
            line = self.format_line(record)
            if record.exc_info:
                line += "\n" + logging.Formatter().formatException(record.exc_info)
            pipe = self.client.pipeline(transaction=False)
            pipe.lpush(keys.LOGGING, line)
            pipe.ltrim(keys.LOGGING, 0, keys.LOGGING_MAX - 1)
            pipe.execute()
        except redis.RedisError:
            self._quiet_until = time.monotonic() + 5.0  # stdout still has it


def setup(component: str, host: str, client: redis.Redis | None, level: str = "INFO", stdout: bool = True) -> logging.Logger:
    """Configure the root logger for one component; returns the `msaas` logger."""
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level)
    if stdout or client is None:
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter(f"%(asctime)s {host}.{component}.%(levelname)s: %(message)s"))
        root.addHandler(console)
    if client is not None:
        bus = RedisLogHandler(client, host, component)
        bus.setLevel(level)
        root.addHandler(bus)
    return logging.getLogger("msaas")
