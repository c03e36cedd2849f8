"""Callback delivery: a JSON POST when a job ends, Standard-Webhooks-signed, retried, refusing private addresses."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from datetime import UTC, datetime
from urllib.parse import urlparse

log = logging.getLogger(__name__)

MAX_URL = 2048
MAX_DATA_BYTES = 16 * 1024
RETRY_DELAYS_S = (1, 5, 30, 120, 600)


class BadCallback(ValueError):
    """The callback a client sent cannot be used."""


def validate(callback: object) -> dict | None:
    """The callback as the job keeps it, or BadCallback with a sentence saying why."""
    if callback is None:
        return None
    if not isinstance(callback, dict):
        raise BadCallback('callback must be an object {"url": ..., "data": ...}')
    url = callback.get("url")
    if not isinstance(url, str) or len(url) > MAX_URL:
        raise BadCallback(f"callback.url must be a string of at most {MAX_URL} characters")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise BadCallback("callback.url must be an http:// or https:// URL with a host")
    data = callback.get("data")
    if len(json.dumps(data)) > MAX_DATA_BYTES:
        raise BadCallback(f"callback.data must be at most {MAX_DATA_BYTES} bytes of JSON")
    return {"url": url, "data": data}


def _session(allow_private: bool, timeout_s: float):
    from requests_hardened import Config, Manager

    config = Config(
        ip_filter_enable=not allow_private,
        ip_filter_allow_loopback_ips=allow_private,
        never_redirect=True,
        default_timeout=(min(5.0, timeout_s), timeout_s),
        user_agent_override="msaas-callback/1",
    )
    return Manager(config)


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    from standardwebhooks.webhooks import Webhook

    return Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, tz=UTC), body)


class CallbackSender:
    """Posts callbacks from a background thread so a slow receiver never holds up a worker."""

    def __init__(self, secret: str | None, allow_private: bool, timeout_s: float, delays=RETRY_DELAYS_S):
        self.secret = secret
        self.manager = _session(allow_private, timeout_s)
        self.delays = delays

    def send(self, callback: dict, payload: dict) -> threading.Thread:
        thread = threading.Thread(target=self._deliver, args=(callback, payload), daemon=True, name="callback")
        thread.start()
        return thread

    def _deliver(self, callback: dict, payload: dict) -> bool:
        body = json.dumps({**payload, "data": callback.get("data")})
        msg_id = f"msg_{uuid.uuid4().hex}"  # one id for every retry: the receiver's idempotency key
        for attempt, delay in enumerate((0, *self.delays)):
            time.sleep(delay)
            headers = {"content-type": "application/json", "webhook-id": msg_id}
            if self.secret:
                stamp = int(time.time())
                headers["webhook-timestamp"] = str(stamp)
                headers["webhook-signature"] = sign(self.secret, msg_id, stamp, body)
            try:
                response = self.manager.send_request("POST", callback["url"], data=body, headers=headers)
            except Exception as exc:  # any failure is the receiver's: log it and retry
                problem = f"{exc.__class__.__name__}: {exc}"
            else:
                if response.status_code < 300:
                    log.info("callback for %s delivered to %s", payload.get("hash"), callback["url"])
                    return True
                problem = f"HTTP {response.status_code}"
                if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                    break
            log.warning(
                "callback for %s to %s failed (attempt %d): %s", payload.get("hash"), callback["url"], attempt + 1, problem
            )
        log.warning("callback for %s to %s given up", payload.get("hash"), callback["url"])
        return False
