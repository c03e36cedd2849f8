"""Prometheus metrics: the cluster's queue and jobs as Redis sees them (served by rest), and each worker's own work."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from . import keys
from .jobs import JobQueue


class QueueCollector:
    """Read at scrape time from Redis, so every rest process (and replica) reports the same cluster-wide numbers."""

    def __init__(self, jobs: JobQueue):
        self.jobs = jobs

    def collect(self):
        r = self.jobs.r
        queued = GaugeMetricFamily("msaas_queue_length", "Songs waiting in the toWorker list")
        queued.add_metric([], r.llen(keys.QUEUE))
        yield queued
        workers = [w for w in r.smembers(keys.WORKERS) if r.exists(keys.heartbeat_key(w))]
        alive = GaugeMetricFamily("msaas_workers", "Workers with a live heartbeat")
        alive.add_metric([], len(workers))
        yield alive
        running = GaugeMetricFamily("msaas_jobs_running", "Jobs in workers' processing lists")
        running.add_metric([], sum(r.llen(keys.processing_key(w)) for w in r.smembers(keys.WORKERS)))
        yield running
        ended = GaugeMetricFamily("msaas_jobs_ended", "Jobs that ended, by state, since the counters began", labels=["state"])
        for state, count in sorted(r.hgetall(keys.STATS).items()):
            ended.add_metric([state], int(count))
        yield ended
        dead = GaugeMetricFamily("msaas_dead_letters", "Jobs in the dead-letter list")
        dead.add_metric([], r.llen(keys.DEAD))
        yield dead
        callbacks = GaugeMetricFamily("msaas_callbacks_pending", "Callbacks in the outbox, due or waiting to be retried")
        callbacks.add_metric([], r.zcard(keys.OUTBOX))
        yield callbacks


def rest_metrics(jobs: JobQueue) -> bytes:
    registry = CollectorRegistry()
    registry.register(QueueCollector(jobs))
    return generate_latest(registry)


class WorkerMetrics:
    """One worker's own counters, served on METRICS_PORT."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.jobs = Counter("msaas_worker_jobs", "Jobs this worker ended, by state", ["state"], registry=self.registry)
        self.seconds = Histogram(
            "msaas_separation_seconds",
            "Wall time of one job, download to stems stored",
            buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 2400),
            registry=self.registry,
        )
        self.audio = Counter("msaas_audio_seconds", "Seconds of songs separated", registry=self.registry)
        self.forward = Counter(
            "msaas_forward_seconds", "Wall seconds spent in the model's forward passes", registry=self.registry
        )

    def serve(self, port: int) -> None:
        from prometheus_client import start_http_server

        start_http_server(port, registry=self.registry)
