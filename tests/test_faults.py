"""Fault injection against real processes: nothing is lost, nothing is half done."""

import json
import signal
import subprocess
import time

import pytest
import requests

from conftest import (
    BIN,
    Receiver,
    free_port,
    make_song,
    msaas_process,
    objects_stored,
    start_rest,
    stems_stored,
    stop,
    wait_http,
    wait_until,
)
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
    assert objects_stored(settings, h) == sorted(f"{h}-{t}{ext}" for t in status["tracks"] for ext in (".mp3", ".peaks.json"))
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
    signalled = time.time()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(120) == 0
    status = client.status(h)
    assert status["state"] == "done" and status["finished"] > signalled  # it was still running when the signal came


def test_sigterm_past_the_grace_period_puts_the_job_back(settings, redis_client, processes, tmp_path):
    client = start_rest(settings, processes)
    h = client.submit(make_song(tmp_path / "s.mp3", seconds=25, seed=4))["hash"]
    log = tmp_path / "worker.log"
    worker = msaas_process("worker", settings.with_(worker_grace_s=0.5), log=log)
    processes.append(worker)
    wait_until(lambda: client.status(h).get("stage") == "separating", what="separation to start")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0, log.read_text()[-4000:]
    status = client.status(h)
    assert status["state"] == "queued" and status["attempts"] == 0 and client.queue() == [h]
    assert "put back in the queue (the worker is stopping)" in log.read_text()  # at its progress, not by an interrupt
    queued = [json.loads(raw)["songhash"] for raw in redis_client.lrange(keys.QUEUE, 0, -1)]
    assert queued == [h]


def test_workers_wait_out_a_redis_outage_instead_of_crashing(settings, processes, tmp_path):
    port = free_port()
    settings = settings.with_(redis_url=f"redis://127.0.0.1:{port}/0")
    log = tmp_path / "worker.log"
    worker = msaas_process("worker", settings, log=log)
    processes.append(worker)
    wait_until(lambda: log.read_text().count("waiting for redis") >= 2, 60, "the worker to try redis twice")
    assert worker.poll() is None  # still trying
    server = redisproc.start(port, tmp_path / "redis", persist=False)
    try:
        client = start_rest(settings, processes)
        h = client.submit(make_song(tmp_path / "s.mp3", seconds=1.5))["hash"]
        assert wait_until(lambda: client.status(h)["state"] == "done", 120, "the job")
        assert jobs.connect(settings.redis_url).scard(keys.WORKERS) == 1
        said = log.read_text()  # its start-up lines: which MP3 encoder, which path each private API takes (compat.py)
        assert "MP3 stems through LAME" in said and "called directly (lameenc" in said
        assert "the streaming resampler's reach from ResampleFrac._width" in said and "_parse_remote_files" in said
    finally:
        stop(server)


def test_a_song_that_kills_its_worker_every_time_fails_after_its_attempts_and_the_song_behind_it_is_done(
    settings, redis_client, processes, tmp_path
):
    settings = settings.with_(heartbeat_ttl_s=2, job_max_attempts=2)
    client = start_rest(settings, processes)
    poison = client.submit(make_song(tmp_path / "poison.mp3", seconds=40, seed=21))["hash"]
    behind = client.submit(make_song(tmp_path / "behind.mp3", seconds=2, seed=22))["hash"]
    for attempt in (1, 2):
        worker = msaas_process("worker", settings)
        processes.append(worker)
        wait_until(
            lambda n=attempt: (s := client.status(poison))["stage"] == "separating" and s["attempts"] == n, what=f"try {attempt}"
        )
        worker.send_signal(signal.SIGKILL)  # as an OOM kill or an eviction would
        worker.wait()
    processes.append(msaas_process("worker", settings))
    status = wait_until(lambda: (s := client.status(poison))["state"] == "failed" and s, 60, "the song to fail")
    assert status["attempts"] == 2 and "the worker stopped 2 times while separating this song" in status["error"]
    assert wait_until(lambda: client.status(behind)["state"] == "done", 120, "the song queued behind it")
    assert client.status(poison)["attempts"] == 2  # never taken a third time
    assert [json.loads(r)["songhash"] for r in redis_client.lrange(keys.DEAD, 0, -1)] == [poison]
    assert not (settings.storage_dir / "queue" / f"{poison}.mp3").exists()


def test_redis_stopped_mid_job_and_started_again_the_job_ends_done(settings, processes, tmp_path):
    port, data = free_port(), tmp_path / "redis"
    server = redisproc.start(port, data, persist=True)
    settings = settings.with_(redis_url=f"redis://127.0.0.1:{port}/0", max_duration_s=120, max_upload_bytes=4 << 20)
    log = tmp_path / "worker.log"
    try:
        client = start_rest(settings, processes)
        h = client.submit(make_song(tmp_path / "long.mp3", seconds=90, seed=8))["hash"]
        processes.append(msaas_process("worker", settings, log=log))
        wait_until(lambda: client.status(h).get("stage") == "separating", what="separation to start")
        stop(server)  # redis goes away mid-job, and stays away until the job's end has been tried
        wait_until(lambda: "progress not recorded" in log.read_text(), 60, "the worker to meet the outage mid-job")
        wait_until(lambda: "recording the job's end again" in log.read_text(), 120, "the job's end to find redis away")
        time.sleep(2)
        server = redisproc.start(port, data, persist=True)
        status = wait_until(lambda: (s := client.status(h))["state"] in ("done", "failed") and s, 60, "the job to end")
        assert status["state"] == "done" and status["attempts"] == 1, status
        assert len(stems_stored(settings, h)) == 4
        r = jobs.connect(settings.redis_url)
        assert r.llen(keys.QUEUE) == 0 and all(r.llen(keys.processing_key(w)) == 0 for w in r.smembers(keys.WORKERS))
    finally:
        stop(server)


def test_a_callback_due_when_its_worker_is_killed_is_delivered_by_another_with_the_same_webhook_id(settings, processes, tmp_path):
    settings = settings.with_(callback_timeout_s=2)
    receiver = Receiver(answers=[(200, 30)])  # the first delivery hangs past the timeout; later ones are taken
    try:
        client = start_rest(settings, processes)
        h = client.submit(make_song(tmp_path / "s.mp3", seconds=2), callback={"url": receiver.url, "data": {"n": 1}})["hash"]
        first = msaas_process("worker", settings)
        processes.append(first)
        wait_until(lambda: receiver.calls, 120, "the first delivery")
        first.send_signal(signal.SIGKILL)  # while it waits on the receiver
        first.wait()
        assert client.status(h)["state"] == "done" and len(receiver.calls) == 1
        processes.append(msaas_process("worker", settings))
        wait_until(lambda: len(receiver.calls) >= 2, 60, "another worker's delivery")
        (first_headers, first_body), (headers, body) = receiver.calls[:2]
        assert headers["webhook-id"] == first_headers["webhook-id"] and body == first_body
        assert body == {"hash": h, "state": "done", "tracks": ["drums", "bass", "other", "vocals"], "data": {"n": 1}}
    finally:
        receiver.close()


def test_a_song_past_its_retention_is_gone_everywhere_and_is_separated_again_when_sent_again(
    settings, redis_client, processes, tmp_path
):
    settings = settings.with_(retention_s=4)
    client = start_rest(settings, processes)
    redis_client.lpush(keys.QUEUE, '{"songhash": ')  # a message cut short, ahead of the song
    worker = msaas_process("worker", settings)
    processes.append(worker)
    song = make_song(tmp_path / "s.mp3", seconds=2, seed=9)
    h = client.submit(song)["hash"]
    wait_until(lambda: client.status(h)["state"] == "done", 120, "the job")
    assert redis_client.lrange(keys.DEAD, 0, -1) == ['{"songhash": '] and worker.poll() is None  # dead-lettered, no crash
    assert len(stems_stored(settings, h)) == 4
    assert not (settings.storage_dir / "queue" / f"{h}.mp3").exists()  # the upload went as the job ended
    assert 0 < redis_client.ttl(keys.job_key(h)) <= 4
    status_url = f"{client.base}/apiv1/status/{h}"
    wait_until(lambda: requests.get(status_url, timeout=10).status_code == 404, 30, "the song to expire")
    wait_until(lambda: not objects_stored(settings, h), 30, "its stems and their peaks to be swept")
    assert [k for k in redis_client.keys("*") if h in k] == [] and redis_client.zscore(keys.EXPIRING, h) is None
    assert requests.get(f"{client.base}/apiv1/track/{h}/vocals", timeout=10).status_code == 404
    assert client.submit(song)["reason"] == "Song enqueued for separation"
    assert wait_until(lambda: client.status(h)["state"] == "done", 120, "the job again")


def test_a_worker_whose_job_makes_no_progress_gives_it_back_and_exits_for_another(settings, processes, faulty_s3, tmp_path):
    env = dict(MINIO_ACCESS_KEY="testing", MINIO_SECRET_KEY="testing")
    settings = settings.with_(job_stall_s=3, heartbeat_ttl_s=3)
    client = start_rest(settings, processes, MINIO_HOST=faulty_s3.endpoint, **env)
    h = client.submit(make_song(tmp_path / "s.mp3", seconds=2, seed=10))["hash"]
    faulty_s3.hang = True  # the song's download never answers: the job is stuck, the process alive
    stuck = msaas_process("worker", settings, MINIO_HOST=faulty_s3.endpoint, **env)
    processes.append(stuck)
    wait_until(lambda: client.status(h)["state"] == "running", 120, "the job to be taken")
    assert stuck.wait(60) == 3  # the watchdog gave the job back and ended the process, to be restarted
    status = client.status(h)
    assert status["state"] == "queued" and "no progress for" in status["error"] and status["attempts"] == 1
    processes.append(msaas_process("worker", settings, MINIO_HOST=faulty_s3.endpoint, **env))
    faulty_s3.hang = False
    faulty_s3.released.set()
    status = wait_until(lambda: (s := client.status(h))["state"] == "done" and s, 120, "another worker to do it")
    assert status["attempts"] == 2


def test_ctrl_c_puts_a_running_job_back_at_once_with_its_attempt(settings, processes, tmp_path):
    client = start_rest(settings, processes)
    h = client.submit(make_song(tmp_path / "s.mp3", seconds=40, seed=12))["hash"]
    worker = msaas_process("worker", settings)
    processes.append(worker)
    wait_until(lambda: client.status(h).get("stage") == "separating", what="separation to start")
    worker.send_signal(signal.SIGINT)
    assert worker.wait(60) == 0
    status = client.status(h)  # queued, not done: the separation was cut off, not waited for
    assert status["state"] == "queued" and status["attempts"] == 0 and client.queue() == [h]
