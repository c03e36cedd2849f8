"""The REST server: `create_app()` builds a Flask app over one Redis client and one object store."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from flask import Flask, current_app

import redis

from .. import jobs, storage
from ..config import Settings

# Base64 makes a body 4/3 the size of the song; JSON fields and multipart headers add a little more.
ENVELOPE_BYTES = 64 * 1024


@dataclass
class Backends:
    settings: Settings
    redis: redis.Redis
    store: storage.ObjectStore
    jobs: jobs.JobQueue
    buckets_ready: bool = False
    uploads: threading.BoundedSemaphore = field(default_factory=lambda: threading.BoundedSemaphore(4))

    def ensure_store(self) -> None:
        """Create the buckets the first time the store answers; afterwards just check that it does."""
        if self.buckets_ready:
            self.store.ping()
        else:
            self.store.ensure_buckets()
            self.buckets_ready = True


def backends() -> Backends:
    return current_app.extensions["msaas"]


def create_app(
    settings: Settings | None = None, client: redis.Redis | None = None, store: storage.ObjectStore | None = None
) -> Flask:
    from . import api, auth, errors, uploads, web

    settings = settings or Settings.from_env()
    client = client or jobs.connect(settings.redis_url, settings.redis_password)
    app = Flask(__name__)
    app.request_class = uploads.UploadRequest
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes * 4 // 3 + ENVELOPE_BYTES
    app.config["MAX_FORM_MEMORY_SIZE"] = 1024 * 1024  # the form's fields but the file (which werkzeug spools to disk)
    app.json.sort_keys = False
    app.extensions["msaas"] = Backends(
        settings=settings,
        redis=client,
        store=store or storage.open_store(settings),
        jobs=jobs.JobQueue(client, settings.job_max_attempts, settings.heartbeat_ttl_s, settings.retention_s),
        uploads=threading.BoundedSemaphore(settings.max_uploads),
    )
    errors.register(app)
    app.register_blueprint(web.bp)
    app.register_blueprint(api.bp)
    auth.limit_uploads(app, "api.separate", settings.rate_limit, client)
    return app
