"""Log lines in the course's format go to the `logging` list, and `msaas logs` prints them oldest first."""

import io
import logging
import threading

from msaas import keys, logbus
from msaas.logs import tail


def test_records_are_pushed_as_host_component_level_message(redis_client):
    log = logbus.setup("worker", "pod-7", redis_client, "INFO")
    log.info("separated %s", "abc")
    log.warning("slow callback")
    log.debug("not at INFO")
    assert redis_client.lrange(keys.LOGGING, 0, -1) == ["pod-7.worker.warning:slow callback", "pod-7.worker.info:separated abc"]
    logging.getLogger().handlers.clear()


def test_the_list_is_capped_when_nobody_tails_it(redis_client):
    handler = logbus.RedisLogHandler(redis_client, "h", "rest")
    record = logging.LogRecord("msaas", logging.INFO, __file__, 1, "line", None, None)
    for _ in range(keys.LOGGING_MAX + 50):
        handler.emit(record)
    assert redis_client.llen(keys.LOGGING) == keys.LOGGING_MAX


def test_a_redis_outage_never_breaks_the_caller():
    from msaas.jobs import connect

    handler = logbus.RedisLogHandler(connect("redis://127.0.0.1:1/0"), "h", "rest")
    handler.emit(logging.LogRecord("msaas", logging.ERROR, __file__, 1, "still fine", None, None))


def test_tail_prints_lines_oldest_first(redis_client):
    for line in ("a.rest.info:one", "a.worker.info:two", "a.rest.info:three"):
        redis_client.lpush(keys.LOGGING, line)
    out, stop = io.StringIO(), threading.Event()
    thread = threading.Thread(target=tail, args=(redis_client, stop, out))
    thread.start()
    for _ in range(100):
        if out.getvalue().count("\n") == 3:
            break
        threading.Event().wait(0.05)
    stop.set()
    thread.join(5)
    assert out.getvalue().splitlines() == ["a.rest.info:one", "a.worker.info:two", "a.rest.info:three"]
