"""Fault injection against real processes: nothing is lost, nothing is half done."""

import json
import signal
import subprocess
import time

import pytest
import requests

from conftest import BIN, free_port, make_song, msaas_process, start_rest, stems_stored, stop, wait_http, wait_until
from msaas import jobs, keys, redisproc

pytestmark = pytest.mark.slow


def test_a_worker_killed_mid_separation_is_replaced_and_the_job_finishes_once(settings, redis_client, processes, tmp_path):
    settings = settings.with_(heartbeat_ttl_s=2)
    client = start_rest(settings, processes)
    song = make_song(tmp_path / "long.mp3", seconds=25, seed=7)
    h = client.submit(song)["hash"]
    first = msaas_process("worker", settings)
    processes.append(first)
    wait_until(lambda: client.status(h).get("stage") == "separating", what="separation to start")
    first.send_signal(signal.SIGKILL)  # no chance to clean up
    first.wait()
    assert client.status(h)["state"] == "running"
    processes.append(msaas_process("worker", settings))
    status = wait_until(lambda: (s := client.status(h))["state"] in ("done", "failed") and s, what="the job to end")
    assert status["state"] == "done" and status["attempts"] == 2
    assert status["tracks"] == ["drums", "bass", "other", "vocals"]
    assert stems_stored(settings, h) == sorted(f"{h}-{t}.mp3" for t in status["tracks"])
    assert not [p for p in (settings.storage_dir / "output").iterdir() if p.name.startswith(".partial")]
    assert redis_client.llen(keys.QUEUE) == 0
    assert all(redis_client.llen(keys.processing_key(w)) == 0 for w in redis_client.smembers(keys.WORKERS))


def test_queued_jobs_survive_a_redis_restart(settings, processes, tmp_path):
    port, data = free_port(), tmp_path / "redis"
    server = redisproc.start(port, data, persist=True)
    settings = settings.with_(redis_url=f"redis://127.0.0.1:{port}/0")
    try:
        client = start_rest(settings, processes)
        hashes = [client.submit(make_song(tmp_path / f"s{i}.mp3", seconds=1.5, seed=i))["hash"] for i in range(3)]
        time.sleep(1.5)  # appendfsync everysec
        server.send_signal(signal.SIGKILL)  # a crash, not a clean shutdown
        server.wait()
        server = redisproc.start(port, data, persist=True)
        assert wait_until(lambda: client.queue() == hashes, 30, "the queue after the restart")
        processes.append(msaas_process("worker", settings))
        for h in hashes:
            assert wait_until(lambda h=h: client.status(h)["state"] == "done", 120, h)
    finally:
        stop(server)


def test_a_dead_object_store_means_503_and_nothing_enqueued(settings, redis_client, processes, tmp_path):
    port = free_port()
    moto = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/moto-api/", proc=moto)
        env = dict(MINIO_HOST=f"127.0.0.1:{port}", MINIO_ACCESS_KEY="testing", MINIO_SECRET_KEY="testing")
        client = start_rest(settings, processes, **env)
        assert requests.get(f"{client.base}/readyz", timeout=30).status_code == 200
        stop(moto)
        with pytest.raises(Exception) as refused:
            client.submit(make_song(tmp_path / "s.mp3", seconds=1))
        assert getattr(refused.value, "status", None) == 503 and "object store" in str(refused.value)
        assert redis_client.llen(keys.QUEUE) == 0 and not redis_client.keys("job:*")
        assert requests.get(f"{client.base}/readyz", timeout=30).status_code == 503
    finally:
        stop(moto)


def test_sigterm_lets_the_current_job_finish(settings, redis_client, processes, tmp_path):
    client = start_rest(settings, processes)
    h = client.submit(make_song(tmp_path / "s.mp3", seconds=10, seed=3))["hash"]
    worker = msaas_process("worker", settings)
    processes.append(worker)
    wait_until(lambda: client.status(h).get("stage") == "separating", what="separation to start")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(120) == 0
    assert client.status(h)["state"] == "done"


def test_sigterm_past_the_grace_period_puts_the_job_back(settings, redis_client, processes, tmp_path):
    client = start_rest(settings, processes)
    h = client.submit(make_song(tmp_path / "s.mp3", seconds=25, seed=4))["hash"]
    worker = msaas_process("worker", settings.with_(worker_grace_s=0.5))
    processes.append(worker)
    wait_until(lambda: client.status(h).get("stage") == "separating", what="separation to start")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0
    assert client.status(h)["state"] == "queued" and client.queue() == [h]
    queued = [json.loads(raw)["songhash"] for raw in redis_client.lrange(keys.QUEUE, 0, -1)]
    assert queued == [h]


def test_workers_wait_out_a_redis_outage_instead_of_crashing(settings, processes, tmp_path):
    port = free_port()
    settings = settings.with_(redis_url=f"redis://127.0.0.1:{port}/0")
    worker = msaas_process("worker", settings)
    processes.append(worker)
    time.sleep(3)
    assert worker.poll() is None  # still trying
    server = redisproc.start(port, tmp_path / "redis", persist=False)
    try:
        client = start_rest(settings, processes)
        h = client.submit(make_song(tmp_path / "s.mp3", seconds=1.5))["hash"]
        assert wait_until(lambda: client.status(h)["state"] == "done", 120, "the job")
        assert jobs.connect(settings.redis_url).scard(keys.WORKERS) == 1
    finally:
        stop(server)
