"""Job records (`job:<songhash>`) and the reliable work queue (`toWorker` plus a processing list per worker)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from . import keys

# Enqueue only when the song is new or its last run failed: the same song with the same choices is one job.
_SUBMIT = """
local state = redis.call('HGET', KEYS[1], 'state')
if state and state ~= 'failed' then return state end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('LPUSH', KEYS[2], ARGV[1])
return false
"""


# Drop one track from a record's JSON list of tracks, atomically (two removals at once must not undo each other).
_FORGET_TRACK = """
local tracks = redis.call('HGET', KEYS[1], 'tracks')
if not tracks then return 0 end
local kept, found = {}, 0
for _, track in ipairs(cjson.decode(tracks)) do
  if track == ARGV[1] then found = 1 else table.insert(kept, track) end
end
if found == 1 then
  redis.call('HSET', KEYS[1], 'tracks', #kept == 0 and '[]' or cjson.encode(kept))
end
return found
"""


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5, socket_timeout=30, health_check_interval=30)


@dataclass(frozen=True)
class Job:
    """One job message as it travels through the queue; `raw` is the exact list element."""

    songhash: str
    model: str
    callback: dict | None = None
    options: dict = field(default_factory=dict)
    raw: str = ""

    def to_message(self) -> str:
        body: dict[str, Any] = {"songhash": self.songhash, "model": self.model, "callback": self.callback}
        body.update(self.options)
        return json.dumps(body, sort_keys=True)

    @classmethod
    def from_message(cls, raw: str) -> Job:
        body = json.loads(raw)
        options = {k: v for k, v in body.items() if k not in ("songhash", "model", "callback")}
        return cls(body["songhash"], body["model"], body.get("callback"), options, raw)


class JobQueue:
    def __init__(self, client: redis.Redis, max_attempts: int = 3, heartbeat_ttl_s: int = 30):
        self.r = client
        self.max_attempts = max_attempts
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self._submit = client.register_script(_SUBMIT)
        self._forget_track = client.register_script(_FORGET_TRACK)

    # --- rest side -------------------------------------------------------------------------
    def submit(self, job: Job) -> str | None:
        """Record and enqueue a job; returns None when queued now, else the state of the existing job."""
        now = time.time()
        record = {
            "state": "queued",
            "stage": "queued",
            "progress": 0,
            "model": job.model,
            "options": json.dumps(job.options, sort_keys=True),
            "created": now,
            "updated": now,
            "attempts": 0,
        }
        fields = [item for pair in record.items() for item in pair]
        return self._submit(keys=[keys.job_key(job.songhash), keys.QUEUE], args=[job.to_message(), *fields])

    def status(self, songhash: str) -> dict | None:
        record = self.r.hgetall(keys.job_key(songhash))
        if not record:
            return None
        out: dict[str, Any] = {"hash": songhash, **record}
        out["progress"] = float(record.get("progress", 0))
        out["attempts"] = int(record.get("attempts", 0))
        for name in ("created", "updated", "started", "finished"):
            if name in record:
                out[name] = float(record[name])
        out["tracks"] = json.loads(record.get("tracks", "[]"))
        out["options"] = json.loads(record.get("options", "{}"))
        return out

    def queued(self) -> list[str]:
        """Songhashes waiting, oldest first (rest pushes on the left, workers take from the right)."""
        return [json.loads(raw)["songhash"] for raw in reversed(self.r.lrange(keys.QUEUE, 0, -1))]

    def forget_track(self, songhash: str, track: str) -> bool:
        return bool(self._forget_track(keys=[keys.job_key(songhash)], args=[track]))

    # --- worker side -----------------------------------------------------------------------
    def claim(self, worker: str, timeout_s: float = 5.0) -> Job | None:
        """Move the oldest job into this worker's processing list and mark it running."""
        self.heartbeat(worker)
        raw = self.r.blmove(keys.QUEUE, keys.processing_key(worker), timeout_s, "RIGHT", "LEFT")
        if raw is None:
            return None
        job = Job.from_message(raw)
        now = time.time()
        pipe = self.r.pipeline()
        pipe.hset(
            keys.job_key(job.songhash),
            mapping={"state": "running", "stage": "starting", "worker": worker, "started": now, "updated": now},
        )
        pipe.hincrby(keys.job_key(job.songhash), "attempts", 1)
        pipe.execute()
        return job

    def progress(self, job: Job, stage: str, progress: float | None = None) -> None:
        fields: dict[str, Any] = {"stage": stage, "updated": time.time()}
        if progress is not None:
            fields["progress"] = round(max(0.0, min(1.0, progress)), 4)
        self.r.hset(keys.job_key(job.songhash), mapping=fields)

    def finish(self, worker: str, job: Job, tracks: list[str]) -> None:
        now = time.time()
        pipe = self.r.pipeline()
        pipe.hset(
            keys.job_key(job.songhash),
            mapping={
                "state": "done",
                "stage": "done",
                "progress": 1,
                "tracks": json.dumps(tracks),
                "finished": now,
                "updated": now,
            },
        )
        pipe.hdel(keys.job_key(job.songhash), "error")
        pipe.lrem(keys.processing_key(worker), 1, job.raw)
        pipe.hincrby(keys.STATS, "done", 1)
        pipe.execute()

    def fail(self, worker: str, job: Job, error: str, retry: bool, charge: bool = True) -> bool:
        """Put the job back (when `retry` and attempts remain) or end it as failed; True when requeued.

        `charge=False` (an outage, not the job's fault) gives the attempt back and always requeues."""
        key = keys.job_key(job.songhash)
        attempts = int(self.r.hget(key, "attempts") or 0)
        again = retry and (attempts < self.max_attempts or not charge)
        now = time.time()
        pipe = self.r.pipeline()
        if not charge:
            pipe.hincrby(key, "attempts", -1)
        if again:
            pipe.hset(key, mapping={"state": "queued", "stage": "queued", "error": error, "updated": now})
            pipe.lpush(keys.QUEUE, job.raw)
        else:
            pipe.hset(key, mapping={"state": "failed", "stage": "failed", "error": error, "finished": now, "updated": now})
            pipe.lpush(keys.DEAD, job.raw)
            pipe.hincrby(keys.STATS, "failed", 1)
        pipe.lrem(keys.processing_key(worker), 1, job.raw)
        pipe.execute()
        return again

    def heartbeat(self, worker: str) -> None:
        pipe = self.r.pipeline()
        pipe.set(keys.heartbeat_key(worker), time.time(), ex=self.heartbeat_ttl_s)
        pipe.sadd(keys.WORKERS, worker)
        pipe.execute()

    def retire(self, worker: str) -> int:
        """A worker leaving cleanly puts back whatever it still holds."""
        moved = self._requeue_from(worker)
        pipe = self.r.pipeline()
        pipe.delete(keys.heartbeat_key(worker), keys.models_key(worker))
        pipe.srem(keys.WORKERS, worker)
        pipe.execute()
        return moved

    def requeue_orphans(self) -> int:
        """Give the jobs of workers whose heartbeat expired back to the queue, at its front."""
        moved = 0
        for worker in self.r.smembers(keys.WORKERS):
            if self.r.exists(keys.heartbeat_key(worker)):
                continue
            moved += self._requeue_from(worker)
            self.r.srem(keys.WORKERS, worker)
        return moved

    def _requeue_from(self, worker: str) -> int:
        moved = 0
        while (raw := self.r.lmove(keys.processing_key(worker), keys.QUEUE, "RIGHT", "RIGHT")) is not None:
            songhash = Job.from_message(raw).songhash
            self.r.hset(keys.job_key(songhash), mapping={"state": "queued", "stage": "queued", "updated": time.time()})
            moved += 1
        return moved

    # --- models as the workers see them ----------------------------------------------------
    def publish_models(self, worker: str, models: dict[str, dict]) -> None:
        """What one worker can load; it expires with the worker unless refreshed (with each heartbeat)."""
        self.r.set(keys.models_key(worker), json.dumps(models), ex=max(4 * self.heartbeat_ttl_s, 60))

    def published_models(self) -> dict[str, dict]:
        """Every live worker's models merged: a model is available when any worker can load it."""
        merged: dict[str, dict] = {}
        for key in self.r.scan_iter(match=keys.models_key("*"), count=100):
            raw = self.r.get(key)
            for name, info in (json.loads(raw) if raw else {}).items():
                seen = merged.setdefault(name, {"tracks": None, "available": False})
                seen["tracks"] = info.get("tracks") or seen["tracks"]
                seen["available"] = seen["available"] or bool(info.get("available"))
        return merged


def songhash(model: str, options: dict, data: bytes) -> str:
    """SHA-224 of the model name, the other choices and the song's bytes: the same request is the same job."""
    digest = hashlib.sha224(model.encode())
    for name in sorted(options):
        digest.update(f"\0{name}={options[name]}".encode())
    digest.update(b"\0")
    digest.update(data)
    return digest.hexdigest()
