"""Prometheus metrics: the cluster's queue and jobs as Redis sees them (served by rest), and each worker's own work."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from .jobs import JobQueue, WorkerRegistry


class QueueCollector:
    """Read at scrape time from Redis, so every rest process (and replica) reports the same cluster-wide numbers."""

    def __init__(self, jobs: JobQueue):
        self.jobs = jobs
        self.registry = WorkerRegistry(jobs)

    def collect(self):
        counts = self.jobs.counts()
        queued = GaugeMetricFamily("msaas_queue_length", "Songs waiting in the toWorker list")
        queued.add_metric([], counts.queued)
        yield queued
        alive = GaugeMetricFamily("msaas_workers", "Workers with a live heartbeat")
        alive.add_metric([], self.registry.live_workers())
        yield alive
        running = GaugeMetricFamily("msaas_jobs_running", "Jobs in workers' processing lists")
        running.add_metric([], self.registry.running())
        yield running
        ended = GaugeMetricFamily("msaas_jobs_ended", "Jobs that ended, by state, since the counters began", labels=["state"])
        for state, count in sorted(counts.ended.items()):
            ended.add_metric([state], count)
        yield ended
        dead = GaugeMetricFamily("msaas_dead_letters", "Jobs in the dead-letter list")
        dead.add_metric([], counts.dead)
        yield dead
        callbacks = GaugeMetricFamily("msaas_callbacks_pending", "Callbacks in the outbox, due or waiting to be retried")
        callbacks.add_metric([], counts.callbacks)
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
