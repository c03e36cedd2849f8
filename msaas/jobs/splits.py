"""A long song across workers (the Redis side of splitting.py): its plan, one message per part, each part's
progress, and the stitch queued once by whichever part finishes last."""

from __future__ import annotations

import json
import time

import redis

from .. import keys
from .message import Job, lua

# A split song's progress is its parts' mean (p<k> fields of the parts hash), scaled to the share the parts take.
_PARTS_PROGRESS = """
local function show_progress(now, share)
  local sum, n = 0, 0
  for _, field in ipairs(redis.call('HKEYS', KEYS[2])) do
    if string.sub(field, 1, 1) == 'p' then
      sum = sum + tonumber(redis.call('HGET', KEYS[2], field)); n = n + 1
    end
  end
  redis.call('HSET', KEYS[1], 'progress', string.format('%.4f', share * sum / n), 'stage', 'separating', 'updated', now)
end
"""

# KEYS job, parts; ARGV part, fraction, now, share
_PART_PROGRESS = (
    _PARTS_PROGRESS
    + """
if redis.call('HGET', KEYS[1], 'state') ~= $running then return 0 end
redis.call('HSET', KEYS[2], 'p' .. ARGV[1], ARGV[2])
show_progress(ARGV[3], ARGV[4])
return 1
"""
)

# A part is stored: the last one to finish queues the stitch (once, whoever finishes last and however often parts rerun).
# KEYS job, parts, processing list, queue; ARGV part, its message, the stitch's message, number of parts, now, share
_FINISH_PART = (
    _PARTS_PROGRESS
    + """
redis.call('LREM', KEYS[3], 1, ARGV[2])
if redis.call('HGET', KEYS[1], 'state') ~= $running then return -1 end
redis.call('HSET', KEYS[2], 'p' .. ARGV[1], 1, 'd' .. ARGV[1], 1)
show_progress(ARGV[5], ARGV[6])
local done = 0
for _, field in ipairs(redis.call('HKEYS', KEYS[2])) do
  if string.sub(field, 1, 1) == 'd' then done = done + 1 end
end
if done == tonumber(ARGV[4]) and redis.call('HSETNX', KEYS[2], 'stitch', 1) == 1 then
  redis.call('RPUSH', KEYS[4], ARGV[3])
end
return done
"""
)
PARTS_SHARE = 0.9  # of a split job's progress; the stitch takes the rest


class Splits:
    def __init__(self, client: redis.Redis):
        self.r = client
        self._part_progress = client.register_script(lua(_PART_PROGRESS))
        self._finish_part = client.register_script(lua(_FINISH_PART))

    def plan(self, songhash: str) -> dict | None:
        raw = self.r.hget(keys.job_key(songhash), "plan")
        return json.loads(raw) if raw else None

    def progress(self, job: Job, fraction: float) -> None:
        """Part `job.part` is `fraction` done: the song's progress is its parts' mean (while the song runs)."""
        self._part_progress(
            keys=[keys.job_key(job.songhash), keys.parts_key(job.songhash)], args=[job.part, fraction, time.time(), PARTS_SHARE]
        )

    def split(self, worker: str, job: Job, plan: dict) -> None:
        """Replace a claimed song's message by one message per part, at the front of the queue (taken next, part 0 first)."""
        n = len(plan["parts"])
        parts = [job.task(part=k).to_message() for k in range(n)]
        pipe = self.r.pipeline()
        pipe.hset(
            keys.job_key(job.songhash),
            mapping={"plan": json.dumps(plan), "stage": f"split into {n} parts", "progress": 0, "updated": time.time()},
        )
        pipe.delete(keys.parts_key(job.songhash))
        pipe.hset(keys.parts_key(job.songhash), mapping={f"p{k}": 0 for k in range(n)})
        pipe.rpush(keys.QUEUE, *reversed(parts))
        pipe.lrem(keys.processing_key(worker), 1, job.raw)
        pipe.execute()

    def finish_part(self, worker: str, job: Job, parts: int) -> int:
        """Record part `job.part` as stored; returns how many parts are done (-1: the job ended meanwhile)."""
        return int(
            self._finish_part(
                keys=[keys.job_key(job.songhash), keys.parts_key(job.songhash), keys.processing_key(worker), keys.QUEUE],
                args=[job.part, job.raw, job.task(stitch=True).to_message(), parts, time.time(), PARTS_SHARE],
            )
        )
