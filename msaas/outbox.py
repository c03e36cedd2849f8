"""Callbacks due, kept in Redis: written with the job's end, sent by whichever worker is alive, same `webhook-id` every try."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from enum import Enum

import redis

from . import keys

log = logging.getLogger("msaas.callbacks")

RETRY_DELAYS_S = (1, 5, 30, 120, 600)  # after the first try; then the delivery is given up

# Take up to ARGV[3] deliveries due by ARGV[1]; each is leased until ARGV[2] (a worker that dies holding one lets it fall due
# again then). KEYS outbox, messages.
_TAKE = """
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))) do
  local entry = redis.call('HGET', KEYS[2], id)
  if entry then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    table.insert(out, entry)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""

# Settle a delivery this worker still holds (its lease, ARGV[2], is still the score): ARGV[3] '' removes it, else it is due
# again at ARGV[3] as ARGV[4]. KEYS outbox, messages; ARGV id, lease, due, entry.
_SETTLE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
end
return 1
"""


class Outcome(Enum):
    DELIVERED = "delivered"
    RETRY = "retry"  # the receiver failed or did not answer: try again later
    REFUSED = "refused"  # a 4xx or a forbidden address: trying again will not help


class Outbox:
    def __init__(self, client: redis.Redis, delays: tuple[float, ...] = RETRY_DELAYS_S, lease_s: float = 60.0):
        self.r = client
        self.delays = delays
        self.lease_s = lease_s
        self._take = client.register_script(_TAKE)
        self._settle = client.register_script(_SETTLE)

    @staticmethod
    def add(pipe: redis.client.Pipeline, callback: dict, payload: dict) -> str:
        """Queue a delivery inside the caller's transaction (the one that records the job's end); returns its webhook-id."""
        msg_id = f"msg_{uuid.uuid4().hex}"
        body = json.dumps({**payload, "data": callback.get("data")})
        entry = {"id": msg_id, "url": callback["url"], "body": body, "attempt": 0, "hash": payload.get("hash")}
        pipe.hset(keys.OUTBOX_MESSAGES, msg_id, json.dumps(entry))
        pipe.zadd(keys.OUTBOX, {msg_id: _ms(time.time())})
        return msg_id

    def pending(self) -> int:
        return self.r.zcard(keys.OUTBOX)

    def deliver_due(self, send: Callable[[dict], Outcome], limit: int = 1) -> int:
        """Send what is due now through `send`; returns how many were tried. One at a time by default, so a slow receiver
        does not hold other deliveries past their lease."""
        lease = _ms(time.time() + self.lease_s)
        taken = [
            json.loads(raw) for raw in self._take(keys=[keys.OUTBOX, keys.OUTBOX_MESSAGES], args=[_ms(time.time()), lease, limit])
        ]
        for entry in taken:
            try:
                outcome = send(entry)
            except Exception:  # a bug in sending must not lose the delivery: it falls due again when its lease ends
                log.exception("callback %s for %s could not be sent", entry["id"], entry.get("hash"))
                continue
            self._after(entry, outcome, lease)
        return len(taken)

    def _after(self, entry: dict, outcome: Outcome, lease: int) -> None:
        attempt = entry["attempt"] + 1
        if outcome is Outcome.RETRY and attempt <= len(self.delays):
            due, entry = _ms(time.time() + self.delays[attempt - 1]), {**entry, "attempt": attempt}
        else:
            due = ""
            if outcome is not Outcome.DELIVERED:
                log.warning("callback for %s to %s given up after %d tries", entry.get("hash"), entry["url"], attempt)
        args = [entry["id"], lease, due, json.dumps(entry)]
        self._settle(keys=[keys.OUTBOX, keys.OUTBOX_MESSAGES], args=args)


def _ms(t: float) -> int:
    return int(t * 1000)
