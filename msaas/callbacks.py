"""Callback delivery: a JSON POST when a job ends, Standard-Webhooks-signed, retried, refusing private addresses."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime

from . import safehttp
from .outbox import Outcome

log = logging.getLogger(__name__)

MAX_DATA_BYTES = 16 * 1024


class BadCallback(ValueError):
    """The callback a client sent cannot be used."""


def validate(callback: object) -> dict | None:
    """The callback as the job keeps it, or BadCallback with a sentence saying why."""
    if callback is None:
        return None
    if not isinstance(callback, dict):
        raise BadCallback('callback must be an object {"url": ..., "data": ...}')
    try:
        url = safehttp.check_url(callback.get("url"), "callback.url")
    except ValueError as exc:
        raise BadCallback(str(exc)) from None
    data = callback.get("data")
    if len(json.dumps(data)) > MAX_DATA_BYTES:
        raise BadCallback(f"callback.data must be at most {MAX_DATA_BYTES} bytes of JSON")
    return {"url": url, "data": data}


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    from standardwebhooks.webhooks import Webhook

    return Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, tz=UTC), body)


class CallbackSender:
    """Posts one delivery of the outbox: signed when a secret is set, SSRF-safe, with a timeout."""

    def __init__(self, secret: str | None, allow_private: bool, timeout_s: float):
        self.secret = secret
        self.allow_private, self.timeout_s = allow_private, timeout_s

    def post(self, entry: dict) -> Outcome:
        headers = {"content-type": "application/json", "webhook-id": entry["id"]}
        if self.secret:
            stamp = int(time.time())
            headers["webhook-timestamp"] = str(stamp)
            headers["webhook-signature"] = sign(self.secret, entry["id"], stamp, entry["body"])
        try:
            with safehttp.session(self.allow_private, self.timeout_s, "msaas-callback/1") as http:
                response = http.post(entry["url"], data=entry["body"], headers=headers)
        except Exception as exc:  # any failure is the receiver's (or a refused address): log it, let the outbox decide
            problem = f"{exc.__class__.__name__}: {exc}"
            outcome = Outcome.REFUSED if safehttp.forbidden(exc) else Outcome.RETRY
        else:
            if response.status_code < 300:
                log.info("callback for %s delivered to %s", entry.get("hash"), entry["url"])
                return Outcome.DELIVERED
            problem = f"HTTP {response.status_code}"
            permanent = 400 <= response.status_code < 500 and response.status_code not in (408, 429)
            outcome = Outcome.REFUSED if permanent else Outcome.RETRY
        log.warning("callback for %s to %s failed (try %d): %s", entry.get("hash"), entry["url"], entry["attempt"] + 1, problem)
        return outcome
