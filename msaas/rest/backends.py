"""What every request of the REST server works with: the settings, Redis, the object store, the job queue, the models."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from flask import current_app

import redis

from .. import jobs, storage
from ..config import Settings


@dataclass
class Backends:
    settings: Settings
    redis: redis.Redis
    store: storage.ObjectStore
    jobs: jobs.JobQueue
    directory: jobs.ModelDirectory
    buckets_ready: bool = False
    uploads: threading.BoundedSemaphore = field(default_factory=lambda: threading.BoundedSemaphore(4))

    @classmethod
    def open(cls, settings: Settings, client: redis.Redis, store: storage.ObjectStore | None = None) -> Backends:
        return cls(
            settings=settings,
            redis=client,
            store=store or storage.open_store(settings),
            jobs=jobs.JobQueue(client, settings.job_max_attempts, settings.heartbeat_ttl_s, settings.retention_s),
            directory=jobs.ModelDirectory(client, settings.demucs_repo, settings.torch_home, settings.heartbeat_ttl_s),
            uploads=threading.BoundedSemaphore(settings.max_uploads),
        )

    def ensure_store(self) -> None:
        """Create the buckets the first time the store answers; afterwards just check that it does."""
        if self.buckets_ready:
            self.store.ping()
        else:
            self.store.ensure_buckets()
            self.buckets_ready = True


def backends() -> Backends:
    """The current app's backends (inside a request)."""
    return current_app.extensions["msaas"]
