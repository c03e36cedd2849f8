"""The REST server: `create_app()` builds a Flask app over one Redis client and one object store."""

from __future__ import annotations

from flask import Flask

import redis

from .. import jobs, storage
from ..config import Settings
from .backends import Backends

# Base64 makes a body 4/3 the size of the song; JSON fields and multipart headers add a little more.
ENVELOPE_BYTES = 64 * 1024


def create_app(
    settings: Settings | None = None, client: redis.Redis | None = None, store: storage.ObjectStore | None = None
) -> Flask:
    """The app over `client` and `store` (each opened from `settings` when not given)."""
    from . import api, auth, errors, uploads, web

    settings = settings or Settings.from_env()
    client = client or jobs.connect(settings.redis_url, settings.redis_password)
    app = Flask(__name__)
    app.request_class = uploads.UploadRequest
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes * 4 // 3 + ENVELOPE_BYTES
    app.config["MAX_FORM_MEMORY_SIZE"] = 1024 * 1024  # the form's fields but the file (which werkzeug spools to disk)
    app.json.sort_keys = False
    app.extensions["msaas"] = Backends.open(settings, client, store)
    errors.register(app)
    app.register_blueprint(web.bp)
    app.register_blueprint(api.bp)
    auth.limit_uploads(app, "api.separate", settings.rate_limit, client)
    return app
