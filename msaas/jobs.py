"""Job records (`job:<songhash>`) and the reliable work queue (`toWorker` plus a processing list per worker)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field, replace
from enum import StrEnum
from string import Template
from typing import Any

import redis

from . import keys
from .outbox import Outbox

log = logging.getLogger("msaas.jobs")


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


# The states as the Lua scripts below spell them ($failed and so on): one source for Python and Lua.
LUA_STATES = {state.name.lower(): f"'{state.value}'" for state in JobState}


def lua(script: str) -> str:
    return Template(script).substitute(LUA_STATES)


class BadMessage(ValueError):
    """A queue message MSaaS cannot read: it is dead-lettered, never run."""


# Enqueue only when the song is new or its last run failed: the same song with the same choices is one job.
# LPUSH comes first: a script's first write is where a full redis (maxmemory) refuses it, and DEL would not be refused.
_SUBMIT = """
local state = redis.call('HGET', KEYS[1], 'state')
if state and state ~= $failed then return state end
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
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


def connect(url: str, password: str | None = None) -> redis.Redis:
    """A client for MSaaS's Redis; `password` (REDIS_PASSWORD) unless the URL holds one."""
    return redis.Redis.from_url(
        url, password=password, decode_responses=True, socket_connect_timeout=5, socket_timeout=30, health_check_interval=30
    )


@dataclass(frozen=True)
class Job:
    """One job message as it travels through the queue; `raw` is the exact list element.

    A long song split across workers travels as one message per part (`part`: its index), then one `stitch`."""

    songhash: str
    model: str
    callback: dict | None = None
    options: dict = field(default_factory=dict)
    raw: str = ""
    part: int | None = None
    stitch: bool = False
    tenant: str | None = None  # the API key's id when keys are on: whose song it is

    @property
    def whole(self) -> bool:
        return self.part is None and not self.stitch

    @property
    def attempts_field(self) -> str:
        """Each part and the stitch count their own attempts."""
        return "attempts" if self.whole else f"attempts.{'stitch' if self.stitch else f'part{self.part}'}"

    def to_message(self) -> str:
        body: dict[str, Any] = {"songhash": self.songhash, "model": self.model, "callback": self.callback}
        if self.options:  # under their own key: an option can never be taken for one of the message's own fields
            body["options"] = self.options
        if self.part is not None:
            body["part"] = self.part
        if self.stitch:
            body["stitch"] = True
        if self.tenant:
            body["tenant"] = self.tenant
        return json.dumps(body, sort_keys=True)

    def task(self, **which) -> Job:
        """The message for one part (`part=k`) or the stitch (`stitch=True`) of this job."""
        return replace(self, **{"raw": "", "part": None, "stitch": False, **which})

    @classmethod
    def from_message(cls, raw: str) -> Job:
        try:
            body = json.loads(raw)
        except ValueError:
            raise BadMessage("not JSON") from None
        if not isinstance(body, dict):
            raise BadMessage("not a JSON object")
        songhash, model, callback = body.pop("songhash", None), body.pop("model", None), body.pop("callback", None)
        part, stitch, tenant = body.pop("part", None), body.pop("stitch", False), body.pop("tenant", None)
        # Older workers' messages (before 2026-12) carried the output options at the top level: still read the same.
        options = body.pop("options") if "options" in body else body
        if not isinstance(options, dict):
            raise BadMessage("options that are not an object")
        if not isinstance(songhash, str) or not _SONGHASH.match(songhash):
            raise BadMessage("no songhash")
        if not isinstance(model, str) or not model:
            raise BadMessage("no model")
        if callback is not None and not (isinstance(callback, dict) and isinstance(callback.get("url"), str)):
            raise BadMessage("a callback without a url")
        if part is not None and (type(part) is not int or part < 0):
            raise BadMessage("a part that is not a number")
        if tenant is not None and not isinstance(tenant, str):
            raise BadMessage("a tenant that is not a string")
        return cls(songhash, model, callback, options, raw, part, bool(stitch), tenant)


_SONGHASH = re.compile(r"^[0-9A-Za-z_-]{1,128}$")


class JobQueue:
    def __init__(self, client: redis.Redis, max_attempts: int = 3, heartbeat_ttl_s: int = 30, retention_s: float = 0.0):
        self.r = client
        self.max_attempts = max_attempts
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.retention_s = retention_s
        self.outbox = Outbox(client)
        self._submit = client.register_script(lua(_SUBMIT))
        self._forget_track = client.register_script(_FORGET_TRACK)
        self._part_progress = client.register_script(lua(_PART_PROGRESS))
        self._finish_part = client.register_script(lua(_FINISH_PART))

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
        if job.tenant:
            record["tenant"] = job.tenant
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
        plan = out.pop("plan", None)
        if plan:
            out["parts"] = len(json.loads(plan)["parts"])
        for name in [k for k in out if k.startswith("attempts.")]:
            del out[name]
        return out

    def plan(self, songhash: str) -> dict | None:
        raw = self.r.hget(keys.job_key(songhash), "plan")
        return json.loads(raw) if raw else None

    def queued(self, tenant: str | None = None) -> list[str]:
        """One tenant's songhashes waiting, oldest first (rest pushes on the left, workers take from the right)."""
        waiting = []
        for raw in reversed(self.r.lrange(keys.QUEUE, 0, -1)):
            try:
                job = Job.from_message(raw)
            except BadMessage:
                continue  # a worker dead-letters it when it comes up
            if job.tenant == tenant:
                waiting.append(job.songhash)
        return list(dict.fromkeys(waiting))  # a split song's parts are one song

    def forget_track(self, songhash: str, track: str) -> bool:
        return bool(self._forget_track(keys=[keys.job_key(songhash)], args=[track]))

    # --- worker side -----------------------------------------------------------------------
    def claim(self, worker: str, timeout_s: float = 5.0) -> Job | None:
        """Move the oldest job into this worker's processing list and mark it running.

        None when the queue stays empty, and also when what was taken cannot run: a message that does not parse
        (dead-lettered) or a job already taken `max_attempts` times (failed)."""
        self.heartbeat(worker)
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
            now = time.time()
            self._part_progress(
                keys=[keys.job_key(job.songhash), keys.parts_key(job.songhash)], args=[job.part, progress or 0, now, PARTS_SHARE]
            )
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

    def heartbeat(self, worker: str) -> None:
        pipe = self.r.pipeline()
        pipe.set(keys.heartbeat_key(worker), time.time(), ex=self.heartbeat_ttl_s)
        pipe.sadd(keys.WORKERS, worker)
        pipe.execute()

    def retire(self, worker: str) -> int:
        """A worker leaving cleanly puts back whatever it still holds, attempts refunded."""
        moved = len(self.recover(worker, refund=True))
        pipe = self.r.pipeline()
        pipe.delete(keys.heartbeat_key(worker), keys.models_key(worker))
        pipe.srem(keys.WORKERS, worker)
        pipe.execute()
        return moved

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

    def requeue_orphans(self, taker: str) -> list[tuple[Job, bool]]:
        """Give back the jobs of workers whose heartbeat expired: each moves into `taker`'s processing list first (one
        worker gets each, and it is not lost if `taker` dies too), then back to the queue's front, or failed when its
        attempts are spent. Returns each job and whether it was requeued."""
        given: list[tuple[Job, bool]] = []
        for worker in self.r.smembers(keys.WORKERS):
            if worker == taker or self.r.exists(keys.heartbeat_key(worker)):
                continue
            while (raw := self.r.lmove(keys.processing_key(worker), keys.processing_key(taker), "RIGHT", "LEFT")) is not None:
                try:
                    job = Job.from_message(raw)
                except BadMessage as exc:
                    self.dead_letter(taker, raw, str(exc))
                    continue
                log.warning("worker %s stopped holding job %s; %s takes it back", worker, job.songhash, taker)
                given.append((job, self.give_back(taker, job, refund=False)))
            self.r.srem(keys.WORKERS, worker)
        return given

    # --- models as the workers see them ----------------------------------------------------
    def live_workers(self) -> int:
        return sum(1 for worker in self.r.smembers(keys.WORKERS) if self.r.exists(keys.heartbeat_key(worker)))

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


def songhash(model: str, options: dict, data: bytes, tenant: str | None = None) -> str:
    """SHA-224 of the model name, the other choices and the song's bytes: the same request is the same job. With API
    keys on, the key's tenant id is hashed too: the same song sent with two keys is two songs, one per tenant."""
    digest = _choices_digest(model, options, tenant)
    digest.update(data)
    return digest.hexdigest()


def songhash_of_file(model: str, options: dict, path, tenant: str | None = None, block: int = 1 << 20) -> str:
    """`songhash` of a song on disk, read block by block."""
    digest = _choices_digest(model, options, tenant)
    with open(path, "rb") as song:
        while chunk := song.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _choices_digest(model: str, options: dict, tenant: str | None):
    digest = hashlib.sha224(model.encode())
    for name in sorted(options):
        digest.update(f"\0{name}={options[name]}".encode())
    if tenant:
        digest.update(f"\0\0tenant={tenant}".encode())
    digest.update(b"\0")
    return digest
