"""The page at `/` (also the load balancers' health check) and the health probes."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from .backends import backends

bp = Blueprint("web", __name__)


@bp.get("/")
def index():
    """The page (upload, progress, mixer); also the load balancers' health check."""
    return current_app.send_static_file("index.html")  # the app serves msaas/rest/static/ at /static


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
