"""The page at `/` (also the load balancers' health check) and the health probes."""

from __future__ import annotations

from flask import Blueprint, jsonify

from . import backends

bp = Blueprint("web", __name__)

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>MSaaS</title></head>
<body>
<h1>MSaaS: music separation as a service</h1>
<p>POST an MP3 to <code>/apiv1/separate</code> and download its stems from <code>/apiv1/track/&lt;hash&gt;/&lt;track&gt;</code>.</p>
<p>See <a href="/apiv1/models">the models</a> and <a href="/apiv1/queue">the queue</a>.</p>
</body></html>
"""


@bp.get("/")
def index():
    return PAGE, 200, {"Content-Type": "text/html; charset=utf-8"}


@bp.get("/metrics")
def metrics():
    """Prometheus: queue length, jobs by state, live workers, dead letters (cluster-wide, from Redis)."""
    from ..metrics import rest_metrics

    return rest_metrics(backends().jobs), 200, {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}


@bp.get("/healthz")
def healthz():
    """Liveness: the process answers; it checks no backend, so a Redis outage does not restart REST pods."""
    return jsonify({"ok": True})


@bp.get("/readyz")
def readyz():
    """Readiness: Redis and the object store answer."""
    b = backends()
    b.redis.ping()
    b.ensure_store()
    return jsonify({"ok": True})
