"""Prometheus metrics: rest's cluster-wide view from Redis, and a worker's own counters over HTTP."""

import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_port
from msaas import storage
from msaas.jobs import Job
from msaas.worker import Worker


def samples(text: str) -> dict:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_rest_reports_the_queue_and_ended_jobs(live_app, song):
    jobs = live_app.backends.jobs
    for h in ("a", "b", "c"):
        jobs.submit(Job(h, "tiny", {"url": "http://example.com/hook", "data": None}))
    jobs.finish("w", jobs.claim("w", 1), ["vocals"])
    jobs.fail("w", jobs.claim("w", 1), "broken", retry=False)
    r = requests.get(f"{live_app.url}/metrics", timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    seen = samples(r.text)
    assert seen[("msaas_queue_length", ())] == 1
    assert seen[("msaas_jobs_ended", (("state", "done"),))] == 1 and seen[("msaas_jobs_ended", (("state", "failed"),))] == 1
    assert seen[("msaas_dead_letters", ())] == 1 and seen[("msaas_workers", ())] == 1
    assert seen[("msaas_callbacks_pending", ())] == 2  # one for the job done, one for the job failed


def test_a_worker_serves_its_own_counters(settings, redis_client, song):
    port = free_port()
    store = storage.LocalStore(settings.storage_dir)
    store.ensure_buckets()
    worker = Worker(settings.with_(metrics_port=port), redis_client, store, name="metered")
    worker.metrics.serve(port)
    store.put_file(storage.QUEUE_BUCKET, "f" * 56 + ".mp3", song)
    worker.jobs.submit(Job("f" * 56, "tiny"))
    worker.process(worker.jobs.claim(worker.name, 1))
    seen = samples(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
    assert seen[("msaas_worker_jobs_total", (("state", "done"),))] == 1
    assert seen[("msaas_separation_seconds_count", ())] == 1
    assert 3.9 < seen[("msaas_audio_seconds_total", ())] < 4.1  # the 4 s test song
