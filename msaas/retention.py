"""Retention: RETENTION_S after a song's job ended, its stems, parts and record are gone and the song is unknown again.

Redis expires the record itself (a TTL set when the job ends) and S3 backends get a lifecycle rule as a backstop; this
sweep, run by every worker, removes the song's objects from either store (the local directory has no lifecycle)."""

from __future__ import annotations

import logging
import time

import redis

from . import keys, storage
from .jobs import lua

log = logging.getLogger("msaas.retention")

# Take the songs due by ARGV[1] (at most ARGV[2]) out of `expiring`; a song submitted again meanwhile (its record is queued
# or running, or ended later) is left alone. The record and parts of those taken are deleted here, whatever their TTL says.
# The song leaves its tenant's list of songs too. KEYS expiring; ARGV now, limit, retention, the job key prefix, the parts
# key prefix, the songs key prefix, the tenant of songs sent without a key (keys.songs_key).
_TAKE_DUE = """
local taken = {}
for _, songhash in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))) do
  redis.call('ZREM', KEYS[1], songhash)
  local job = ARGV[4] .. songhash
  local state, finished = unpack(redis.call('HMGET', job, 'state', 'finished'))
  local ended = state == $done or state == $failed
  if not state or (ended and tonumber(finished or 0) + tonumber(ARGV[3]) <= tonumber(ARGV[1]) + 1) then
    local tenant = redis.call('HGET', job, 'tenant')
    if not tenant or tenant == '' then tenant = ARGV[7] end
    redis.call('ZREM', ARGV[6] .. tenant, songhash)
    redis.call('DEL', job, ARGV[5] .. songhash)
    table.insert(taken, songhash)
  end
end
return taken
"""

SWEEP_AGAIN_S = 60.0  # a song whose objects could not be removed (store down) is tried again this much later


class Retention:
    def __init__(self, client: redis.Redis, store: storage.ObjectStore, retention_s: float):
        self.r = client
        self.store = store
        self.retention_s = retention_s
        self._take_due = client.register_script(lua(_TAKE_DUE))

    def sweep(self, limit: int = 50) -> list[str]:
        """Remove the songs whose retention has run out; returns their songhashes."""
        if self.retention_s <= 0:
            return []
        now = time.time()
        args = [now, limit, self.retention_s, keys.job_key(""), keys.parts_key(""), keys.SONGS_PREFIX, keys.NO_TENANT]
        swept = []
        for songhash in self._take_due(keys=[keys.EXPIRING], args=args):
            try:
                removed = storage.remove_song(self.store, songhash)
            except storage.StorageError as exc:
                log.warning("song %s: its objects stay until the next sweep: %s", songhash, exc)
                self.r.zadd(keys.EXPIRING, {songhash: now + SWEEP_AGAIN_S})
                continue
            log.info("song %s expired: %d object(s) removed", songhash, removed)
            swept.append(songhash)
        return swept
