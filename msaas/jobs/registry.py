"""The workers: each one's heartbeat (a key with a TTL) and membership of `workers`; a worker whose heartbeat has
expired is dead, and the jobs in its processing list are given back by a live one."""

from __future__ import annotations

import logging

from .. import keys
from .message import BadMessage, Job
from .queue import JobQueue, beat

log = logging.getLogger("msaas.jobs")


class WorkerRegistry:
    def __init__(self, queue: JobQueue):
        self.queue = queue
        self.r = queue.r

    def heartbeat(self, worker: str) -> None:
        beat(self.r, worker, self.queue.heartbeat_ttl_s)  # the TTL a claim renews too: one setting, held by the queue

    def retire(self, worker: str) -> int:
        """A worker leaving cleanly puts back whatever it still holds, attempts refunded."""
        moved = len(self.queue.recover(worker, refund=True))
        pipe = self.r.pipeline()
        pipe.delete(keys.heartbeat_key(worker), keys.models_key(worker))
        pipe.srem(keys.WORKERS, worker)
        pipe.execute()
        return moved

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
                    self.queue.dead_letter(taker, raw, str(exc))
                    continue
                log.warning("worker %s stopped holding job %s; %s takes it back", worker, job.songhash, taker)
                given.append((job, self.queue.give_back(taker, job, refund=False)))
            self.r.srem(keys.WORKERS, worker)
        return given

    def live_workers(self) -> int:
        return sum(1 for worker in self.r.smembers(keys.WORKERS) if self.r.exists(keys.heartbeat_key(worker)))

    def running(self) -> int:
        """Jobs (or parts) in the processing lists of every registered worker."""
        return sum(self.r.llen(keys.processing_key(w)) for w in self.r.smembers(keys.WORKERS))
