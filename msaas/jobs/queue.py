"""Job records (`job:<songhash>`) and the reliable work queue (`toWorker`, plus a processing list per worker): how a
job is submitted, claimed, and ended (done, failed, given back) atomically."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis

from .. import keys
from ..outbox import Outbox
from .message import BadMessage, Job, JobState, lua
from .splits import Splits


def beat(client: redis.Redis, worker: str, ttl_s: int) -> None:
    """`worker` is alive for `ttl_s` more seconds (its heartbeat key, and its name in `workers`)."""
    pipe = client.pipeline()
    pipe.set(keys.heartbeat_key(worker), time.time(), ex=ttl_s)
    pipe.sadd(keys.WORKERS, worker)
    pipe.execute()


log = logging.getLogger("msaas.jobs")

# Enqueue only when the song is new or its last run failed: the same song with the same choices is one job.
# LPUSH comes first: a script's first write is where a full redis (maxmemory) refuses it, and DEL would not be refused.
# KEYS job, queue, the tenant's songs; ARGV message, songhash, now, the record's fields.
_SUBMIT = """
local state = redis.call('HGET', KEYS[1], 'state')
if state and state ~= $failed then return state end
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
return false
"""

# Forget an ended song (its record, parts, place in its tenant's list and in `expiring`); a queued or running one is
# left alone and its state returned. KEYS job, parts, the tenant's songs, expiring; ARGV songhash.
_DELETE = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == $queued or state == $running then return state end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
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


def connect(url: str, password: str | None = None) -> redis.Redis:
    """A client for MSaaS's Redis; `password` (REDIS_PASSWORD) unless the URL holds one."""
    return redis.Redis.from_url(
        url, password=password, decode_responses=True, socket_connect_timeout=5, socket_timeout=30, health_check_interval=30
    )


@dataclass(frozen=True)
class QueueCounts:
    queued: int
    dead: int
    callbacks: int
    ended: dict[str, int]  # jobs ended, by state, since the counters began


class JobQueue:
    """Job records and the work queue: a job is submitted (record + message), claimed into a worker's processing list,
    and ends done, failed or given back, each in one step; `splits` holds a split song's parts and stitch."""

    def __init__(self, client: redis.Redis, max_attempts: int = 3, heartbeat_ttl_s: int = 30, retention_s: float = 0.0):
        self.r = client
        self.max_attempts = max_attempts
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.retention_s = retention_s
        self.outbox = Outbox(client)
        self.splits = Splits(client)
        self._submit = client.register_script(lua(_SUBMIT))
        self._delete = client.register_script(lua(_DELETE))
        self._forget_track = client.register_script(_FORGET_TRACK)

    # --- rest side -------------------------------------------------------------------------
    def submit(self, job: Job, about: dict | None = None) -> str | None:
        """Record and enqueue a job; returns None when queued now, else the state of the existing job. `about`: what the
        record keeps for people (`name`, the uploaded file's; `duration_s`), not the worker."""
        now = time.time()
        record = {
            **(about or {}),
            "state": "queued",
            "stage": "queued",
            "progress": 0,
            "model": job.model,
            "options": json.dumps(job.options, sort_keys=True),
            "created": now,
            "updated": now,
            "attempts": 0,
        }
        if job.tenant:
            record["tenant"] = job.tenant
        fields = [item for pair in record.items() for item in pair]
        job_keys = [keys.job_key(job.songhash), keys.QUEUE, keys.songs_key(job.tenant)]
        return self._submit(keys=job_keys, args=[job.to_message(), job.songhash, now, *fields])

    def status(self, songhash: str) -> dict | None:
        return self._status(songhash, self.r.hgetall(keys.job_key(songhash)))

    def songs(self, tenant: str | None, offset: int = 0, limit: int = 20) -> tuple[int, list[dict]]:
        """One tenant's songs, newest first: how many there are, and the records of `limit` of them from `offset`. A song
        whose record has expired meanwhile is left out (and out of the list from then on)."""
        index = keys.songs_key(tenant)
        pipe = self.r.pipeline()
        pipe.zcard(index)
        pipe.zrevrange(index, offset, offset + limit - 1)
        total, hashes = pipe.execute()
        pipe = self.r.pipeline()
        for songhash in hashes:
            pipe.hgetall(keys.job_key(songhash))
        found = [(h, self._status(h, record)) for h, record in zip(hashes, pipe.execute(), strict=True)]
        if gone := [h for h, record in found if record is None]:
            self.r.zrem(index, *gone)
        return total - len(gone), [record for _, record in found if record is not None]

    def delete(self, songhash: str, tenant: str | None) -> str | None:
        """Forget an ended song's record; returns None when done, else its state (queued or running: left alone)."""
        job_keys = [keys.job_key(songhash), keys.parts_key(songhash), keys.songs_key(tenant), keys.EXPIRING]
        return self._delete(keys=job_keys, args=[songhash])

    @staticmethod
    def _status(songhash: str, record: dict) -> dict | None:
        if not record:
            return None
        out: dict[str, Any] = {"hash": songhash, **record}
        out["progress"] = float(record.get("progress", 0))
        out["attempts"] = int(record.get("attempts", 0))
        for name in ("created", "updated", "started", "finished", "duration_s"):
            if name in record:
                out[name] = float(record[name])
        out["tracks"] = json.loads(record.get("tracks", "[]"))
        out["options"] = json.loads(record.get("options", "{}"))
        plan = out.pop("plan", None)
        if plan:
            out["parts"] = len(json.loads(plan)["parts"])
        for name in [k for k in out if k.startswith("attempts.")]:
            del out[name]
        return out

    def _waiting(self) -> Iterator[Job | None]:
        """The queue's messages, next first (rest pushes on the left, workers take from the right); None for one that is
        not a job (a worker dead-letters it when it comes up)."""
        for raw in reversed(self.r.lrange(keys.QUEUE, 0, -1)):
            try:
                yield Job.from_message(raw)
            except BadMessage:
                yield None

    def position(self, songhash: str) -> int | None:
        """How many messages a queued song waits behind (0: it is next), whoever's they are; None when it is not queued."""
        return next((ahead for ahead, job in enumerate(self._waiting()) if job and job.songhash == songhash), None)

    def queued(self, tenant: str | None = None) -> list[str]:
        """One tenant's songhashes waiting, oldest first."""
        waiting = [job.songhash for job in self._waiting() if job and job.tenant == tenant]
        return list(dict.fromkeys(waiting))  # a split song's parts are one song

    def forget_track(self, songhash: str, track: str) -> bool:
        return bool(self._forget_track(keys=[keys.job_key(songhash)], args=[track]))

    # --- worker side -----------------------------------------------------------------------
    def claim(self, worker: str, timeout_s: float = 5.0) -> Job | None:
        """Move the oldest job into this worker's processing list and mark it running.

        None when the queue stays empty, and also when what was taken cannot run: a message that does not parse
        (dead-lettered) or a job already taken `max_attempts` times (failed)."""
        beat(self.r, worker, self.heartbeat_ttl_s)  # taking a job is a sign of life (this worker's beat may be late)
        raw = self.r.blmove(keys.QUEUE, keys.processing_key(worker), timeout_s, "RIGHT", "LEFT")
        if raw is None:
            return None
        try:
            job = Job.from_message(raw)
        except BadMessage as exc:
            self.dead_letter(worker, raw, str(exc))
            return None
        now = time.time()
        fields: dict[str, Any] = {"worker": worker, "updated": now}
        if job.whole:  # a part's song is already running (or has failed: the worker then drops the part)
            fields.update(state=JobState.RUNNING, stage="starting", started=now)
        pipe = self.r.pipeline()
        pipe.hset(keys.job_key(job.songhash), mapping=fields)
        pipe.hincrby(keys.job_key(job.songhash), job.attempts_field, 1)
        attempts = pipe.execute()[1]
        if attempts > self.max_attempts:  # given back by a path that did not count (an older worker, a race)
            self.fail(worker, job, self._stopped_error(job, attempts - 1), retry=False)
            return None
        return job

    def dead_letter(self, worker: str, raw: str, why: str) -> None:
        """A message no worker can run: out of the processing list, into `dead`, never retried."""
        log.error("a queue message that cannot be read (%s) was dead-lettered: %.200s", why, raw)
        pipe = self.r.pipeline()
        pipe.lpush(keys.DEAD, raw)
        pipe.ltrim(keys.DEAD, 0, keys.DEAD_MAX - 1)
        pipe.lrem(keys.processing_key(worker), 1, raw)
        pipe.execute()

    def progress(self, job: Job, stage: str, progress: float | None = None) -> None:
        if job.part is not None:
            self.splits.progress(job, progress or 0)
            return
        fields: dict[str, Any] = {"stage": stage, "updated": time.time()}
        if progress is not None:
            fields["progress"] = round(max(0.0, min(1.0, progress)), 4)
        self.r.hset(keys.job_key(job.songhash), mapping=fields)

    def finish(self, worker: str, job: Job, tracks: list[str]) -> None:
        """The job is done: its record, its message out of the processing list and its callback due, in one transaction."""
        now = time.time()
        pipe = self.r.pipeline()
        pipe.hset(
            keys.job_key(job.songhash),
            mapping={
                "state": JobState.DONE,
                "stage": "done",
                "progress": 1,
                "tracks": json.dumps(tracks),
                "finished": now,
                "updated": now,
            },
        )
        pipe.hdel(keys.job_key(job.songhash), "error")
        pipe.lrem(keys.processing_key(worker), 1, job.raw)
        pipe.lrem(keys.QUEUE, 0, job.raw)  # a copy given back meanwhile (its worker was thought dead) need not run again
        pipe.hincrby(keys.STATS, JobState.DONE, 1)
        pipe.delete(keys.parts_key(job.songhash))
        self._ended(pipe, job, now)
        if job.callback:
            self.outbox.add(pipe, job.callback, {"hash": job.songhash, "state": JobState.DONE, "tracks": tracks})
        pipe.execute()

    def _ended(self, pipe: redis.client.Pipeline, job: Job, now: float) -> None:
        """A song's record lives RETENTION_S past its end; its stems are then swept from the store (retention.py)."""
        if self.retention_s > 0:
            pipe.expire(keys.job_key(job.songhash), math.ceil(self.retention_s))
            pipe.zadd(keys.EXPIRING, {job.songhash: now + self.retention_s})

    # --- a long song across workers --------------------------------------------------------

    def drop(self, worker: str, job: Job) -> None:
        """Let go of a message whose job has ended (a part of a song that failed)."""
        self.r.lrem(keys.processing_key(worker), 1, job.raw)

    def fail(self, worker: str, job: Job, error: str | None, retry: bool, charge: bool = True, front: bool = False) -> bool:
        """Put the job back (when `retry` and attempts remain) or end it as failed; True when requeued.

        `charge=False` (an outage, a clean stop: not the job's fault) gives the attempt back and always requeues.
        `front` puts it where it is taken next (a job given back); parts always go there, their song is under way."""
        return self._end_attempt(worker, job, error, retry, charge, front)

    def give_back(self, worker: str, job: Job, refund: bool, why: str = "the worker stopped") -> bool:
        """Put a job `worker` holds back at the front of the queue; True when requeued.

        `refund`: the attempt was not the song's doing (a clean stop, an outage). Otherwise the worker stopped while
        running it (it died, was killed or stalled): the attempt counts, and after `max_attempts` the job fails."""
        if refund:
            return self._end_attempt(worker, job, None, retry=True, charge=False, front=True)
        return self._end_attempt(worker, job, f"{why} while separating this song", retry=True, front=True, stopped=why)

    def _end_attempt(
        self, worker: str, job: Job, error: str | None, retry: bool, charge=True, front=False, stopped: str | None = None
    ) -> bool:
        """One transaction, and only while `worker` still holds the message: a second give-back of the same message (two
        threads, two workers) finds it gone and changes nothing."""
        key, held = keys.job_key(job.songhash), keys.processing_key(worker)

        def attempt(pipe: redis.client.Pipeline) -> bool:
            if pipe.lpos(held, job.raw) is None:
                return False
            attempts, state, stops = pipe.hmget(key, job.attempts_field, "state", "stops")
            attempts, stops = int(attempts or 0), int(stops or 0) + bool(stopped)
            again = retry and (attempts < self.max_attempts or not charge)
            message = error
            if stopped and not again:
                message = self._stopped_error(job, stops, stopped)
            now = time.time()
            pipe.multi()
            if stopped:
                pipe.hincrby(key, "stops", 1)
            if not charge and attempts > 0:
                pipe.hincrby(key, job.attempts_field, -1)
            if again:
                fields: dict[str, Any] = {"updated": now}
                if job.whole:  # a part waits; its song still runs
                    fields.update(state=JobState.QUEUED, stage="queued")
                if message:
                    fields["error"] = message
                pipe.hset(key, mapping=fields)
                (pipe.rpush if front or not job.whole else pipe.lpush)(keys.QUEUE, job.raw)
            elif job.whole or state != JobState.FAILED:  # the song's first end (another part may have failed it already)
                message = message or "the job failed"
                pipe.hset(
                    key,
                    mapping={"state": JobState.FAILED, "stage": "failed", "error": message, "finished": now, "updated": now},
                )
                pipe.lpush(keys.DEAD, job.raw)
                pipe.ltrim(keys.DEAD, 0, keys.DEAD_MAX - 1)
                pipe.hincrby(keys.STATS, JobState.FAILED, 1)
                pipe.delete(keys.parts_key(job.songhash))
                self._ended(pipe, job, now)
                if job.callback:
                    payload = {"hash": job.songhash, "state": JobState.FAILED, "tracks": [], "error": message}
                    self.outbox.add(pipe, job.callback, payload)
            pipe.lrem(held, 1, job.raw)
            return again

        return self.r.transaction(attempt, held, value_from_callable=True)

    def _stopped_error(self, job: Job, stops: int, why: str = "the worker stopped") -> str:
        what = "this song" if job.whole else ("the stitch of this song" if job.stitch else f"part {job.part} of this song")
        times = "once" if stops == 1 else f"{stops} times"
        return (
            f"{why} {times} while separating {what} (killed, out of memory, evicted or stalled) "
            f"and it has had its {self.max_attempts} attempts; it is not tried again"
        )

    def recover(self, worker: str, refund: bool = False, why: str = "the worker stopped") -> list[tuple[Job, bool]]:
        """Give back every job in `worker`'s own processing list (a worker between jobs should hold none); returns each
        job and whether it was requeued (else it has failed: its attempts were spent)."""
        given: list[tuple[Job, bool]] = []
        while (raw := self.r.lindex(keys.processing_key(worker), -1)) is not None:
            try:
                job = Job.from_message(raw)
            except BadMessage as exc:
                self.dead_letter(worker, raw, str(exc))
                continue
            given.append((job, self.give_back(worker, job, refund, why)))
        return given

    def ping(self) -> None:
        self.r.ping()

    def counts(self) -> QueueCounts:
        """The queue as a whole, for metrics: waiting, dead-lettered, callbacks pending, and the ended jobs by state."""
        pipe = self.r.pipeline()
        pipe.llen(keys.QUEUE)
        pipe.llen(keys.DEAD)
        pipe.zcard(keys.OUTBOX)
        pipe.hgetall(keys.STATS)
        queued, dead, callbacks, ended = pipe.execute()
        return QueueCounts(queued, dead, callbacks, {state: int(n) for state, n in ended.items()})
