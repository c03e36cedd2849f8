"""The REST server: `create_app()` builds a Flask app over one Redis client and one object store. Flask is imported
only there, so the parts that need none (choices.py, the request fields' parser) load without it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis

from .. import jobs, storage
from ..config import Settings

if TYPE_CHECKING:
    from flask import Flask

# Base64 makes a body 4/3 the size of the song; JSON fields and multipart headers add a little more.
ENVELOPE_BYTES = 64 * 1024


def create_app(
    settings: Settings | None = None, client: redis.Redis | None = None, store: storage.ObjectStore | None = None
) -> Flask:
    """The app over `client` and `store` (each opened from `settings` when not given)."""
    from flask import Flask

    from . import api, auth, errors, uploads, web
    from .backends import Backends

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
