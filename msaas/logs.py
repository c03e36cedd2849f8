"""The logs tail: prints every line of the Redis list `logging`, oldest first, to stdout."""

from __future__ import annotations

import sys
import threading
import time

import redis

from . import keys


def tail(client: redis.Redis, stop: threading.Event | None = None, out=sys.stdout) -> None:
    stop = stop or threading.Event()
    delay = 1.0
    while not stop.is_set():
        try:
            item = client.brpop([keys.LOGGING], timeout=1)
            delay = 1.0
        except redis.RedisError as exc:
            print(f"logs: redis unavailable ({exc}); retrying in {delay:.0f} s", file=sys.stderr, flush=True)
            stop.wait(delay)
            delay = min(delay * 2, 30)
            continue
        if item is not None:
            print(item[1], file=out, flush=True)
        else:
            time.sleep(0)  # nothing in the last second; loop to notice `stop`
