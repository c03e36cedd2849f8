"""Callback delivery: a JSON POST when a job ends, Standard-Webhooks-signed, retried, refusing private addresses."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from urllib.parse import urlparse

from .outbox import Outcome

log = logging.getLogger(__name__)

MAX_URL = 2048
MAX_DATA_BYTES = 16 * 1024


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
    """Posts one delivery of the outbox: signed when a secret is set, SSRF-safe, with a timeout."""

    def __init__(self, secret: str | None, allow_private: bool, timeout_s: float):
        self.secret = secret
        self.manager = _session(allow_private, timeout_s)

    def post(self, entry: dict) -> Outcome:
        headers = {"content-type": "application/json", "webhook-id": entry["id"]}
        if self.secret:
            stamp = int(time.time())
            headers["webhook-timestamp"] = str(stamp)
            headers["webhook-signature"] = sign(self.secret, entry["id"], stamp, entry["body"])
        try:
            response = self.manager.send_request("POST", entry["url"], data=entry["body"], headers=headers)
        except Exception as exc:  # any failure is the receiver's (or a refused address): log it, let the outbox decide
            problem = f"{exc.__class__.__name__}: {exc}"
            outcome = Outcome.REFUSED if _forbidden(exc) else Outcome.RETRY
        else:
            if response.status_code < 300:
                log.info("callback for %s delivered to %s", entry.get("hash"), entry["url"])
                return Outcome.DELIVERED
            problem = f"HTTP {response.status_code}"
            permanent = 400 <= response.status_code < 500 and response.status_code not in (408, 429)
            outcome = Outcome.REFUSED if permanent else Outcome.RETRY
        log.warning("callback for %s to %s failed (try %d): %s", entry.get("hash"), entry["url"], entry["attempt"] + 1, problem)
        return outcome


def _forbidden(exc: Exception) -> bool:
    """requests-hardened refusing a private, loopback or metadata address: no later try will be allowed either."""
    from requests_hardened.ip_filter import InvalidIPAddress

    return isinstance(exc, InvalidIPAddress)
