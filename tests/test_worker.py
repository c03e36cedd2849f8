"""A real Worker (tiny Demucs model) against redis-server, a store and a callback receiver over HTTP."""

import json
import logging
import re
import threading
import time
from pathlib import Path

import pytest

from conftest import Receiver, free_port
from msaas import audio, keys, storage
from msaas.jobs import Job
from msaas.worker import Worker


@pytest.fixture
def worker(settings, redis_client):
    st = storage.LocalStore(settings.storage_dir)
    st.ensure_buckets()
    w = Worker(settings, redis_client, st, name="test-worker")
    w.jobs.outbox.delays = (0.2, 0.2)
    stop_callbacks = w.start_callbacks()
    yield w
    stop_callbacks()


def enqueue(worker, song, model="tiny", callback=None, **options):
    h = f"{abs(hash((song.name, model, json.dumps(options)))):056d}"[:56]
    worker.store.put_file(storage.QUEUE_BUCKET, f"{h}.mp3", song, "audio/mpeg")
    worker.jobs.submit(Job(h, model, callback, options))
    return h


def run_one(worker):
    job = worker.jobs.claim(worker.name, 1)
    assert job is not None
    worker.process(job)
    return job


def wait_for(predicate, timeout_s=10):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_job_ends_done_with_every_stem_stored_and_a_callback(worker, song):
    receiver = Receiver()
    h = enqueue(worker, song, callback={"url": receiver.url, "data": {"mine": 1}})
    run_one(worker)
    status = worker.jobs.status(h)
    assert status["state"] == "done" and status["progress"] == 1.0
    assert status["tracks"] == ["drums", "bass", "other", "vocals"]
    n = audio.probe(song).samples
    for track in status["tracks"]:
        path = worker.settings.storage_dir / "output" / f"{h}-{track}.mp3"
        assert audio.probe(path).samples == n
    assert worker.jobs.r.llen(keys.processing_key(worker.name)) == 0
    wait_for(lambda: receiver.calls)
    headers, body = receiver.calls[0]
    assert body == {"hash": h, "state": "done", "tracks": status["tracks"], "data": {"mine": 1}}
    assert headers["webhook-id"].startswith("msg_")
    receiver.close()


def test_each_job_logs_where_its_time_went(worker, song, caplog):
    caplog.set_level(logging.INFO, logger="msaas.worker")
    h = enqueue(worker, song)
    run_one(worker)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith(f"job {h}: 4.0 s of song in "))
    account = re.search(
        r"in ([\d.]+) s: download ([\d.]+) s, read ([\d.]+) s, separation ([\d.]+) s \(forward passes ([\d.]+) s\), "
        r"encoders' drain ([\d.]+) s, upload ([\d.]+) s; encoding ([\d.]+) s of CPU beside them",
        line,
    )
    total, download, read, separation, forward, drain, upload, encoding = map(float, account.groups())
    assert 0 < forward <= separation and download + read + separation + drain + upload <= total + 0.3
    assert encoding > 0


def test_callbacks_are_signed_when_a_secret_is_set(worker, song):
    from standardwebhooks.webhooks import Webhook

    secret = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQ="
    worker.callbacks.secret = secret
    receiver = Receiver()
    enqueue(worker, song, callback={"url": receiver.url, "data": None})
    run_one(worker)
    wait_for(lambda: receiver.calls)
    headers, body = receiver.calls[0]
    lower = {k.lower(): v for k, v in headers.items()}
    Webhook(secret).verify(json.dumps(body), lower)  # raises when the signature is wrong
    receiver.close()


def test_a_failing_or_hanging_callback_does_not_fail_or_delay_the_job(worker, song):
    receiver = Receiver(status=500, delay_s=2)
    h = enqueue(worker, song, callback={"url": receiver.url, "data": 1})
    run_one(worker)  # the job's end and its callback are written together; the delivery happens apart from the job
    assert worker.jobs.status(h)["state"] == "done"
    wait_for(lambda: len(receiver.calls) >= 2)  # retried
    assert worker.jobs.status(h)["state"] == "done" and worker.jobs.outbox.pending() == 1  # still due, the job unchanged
    receiver.close()


def test_callbacks_to_private_addresses_are_refused_unless_allowed(settings, redis_client, song):
    st = storage.LocalStore(settings.storage_dir)
    st.ensure_buckets()
    w = Worker(settings.with_(callback_allow_private=False), redis_client, st, name="strict")
    receiver = Receiver()
    h = enqueue(w, song, callback={"url": receiver.url, "data": 1})
    run_one(w)
    assert w.jobs.outbox.pending() == 1
    stop_callbacks = w.start_callbacks()
    wait_for(lambda: w.jobs.outbox.pending() == 0)  # refused for good at the first try, not retried
    stop_callbacks()
    assert w.jobs.status(h)["state"] == "done" and receiver.calls == []
    receiver.close()


def test_an_unavailable_model_fails_the_job_with_a_clear_error(worker, song, caplog):
    caplog.set_level(logging.INFO, logger="msaas.worker")
    h = enqueue(worker, song, model="htdemucs")
    run_one(worker)
    status = worker.jobs.status(h)
    assert status["state"] == "failed" and "htdemucs" in status["error"] and "fetch-model" in status["error"]
    assert [json.loads(r)["songhash"] for r in worker.jobs.r.lrange(keys.DEAD, 0, -1)] == [h]
    h2 = enqueue(worker, song, model="htdemucs", two_stems="vocals")
    run_one(worker)  # the failed load is remembered: no second try (no second wait on the network)
    assert worker.jobs.status(h2)["state"] == "failed"
    assert [r.getMessage() for r in caplog.records].count("loading model htdemucs") == 1


def test_a_song_that_does_not_decode_fails_without_retries(worker, tmp_path):
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"not audio" * 100)
    h = enqueue(worker, bad)
    run_one(worker)
    status = worker.jobs.status(h)
    assert status["state"] == "failed" and status["attempts"] == 1 and "audio" in status["error"]


def test_two_stems_and_flac_are_honoured(worker, song):
    h = enqueue(worker, song, two_stems="vocals", format="flac")
    run_one(worker)
    assert worker.jobs.status(h)["tracks"] == ["vocals", "no_vocals"]
    assert (worker.settings.storage_dir / "output" / f"{h}-no_vocals.flac").is_file()


def test_the_worker_publishes_what_it_can_load(worker):
    worker.separator("tiny")
    seen = worker.directory.published()
    assert seen["tiny"] == {"tracks": ["drums", "bass", "other", "vocals"], "available": True}
    assert seen["htdemucs"]["available"] is False


def test_a_song_missing_from_the_store_fails_the_job_and_the_worker_goes_on(worker, song):
    h = enqueue(worker, song)
    worker.store.remove(storage.QUEUE_BUCKET, f"{h}.mp3")
    run_one(worker)
    status = worker.jobs.status(h)
    assert status["state"] == "failed" and "no longer in the object store" in status["error"]


def test_an_object_store_outage_requeues_without_spending_attempts(worker, song):
    h = enqueue(worker, song)
    worker.store = storage.S3Store(f"127.0.0.1:{free_port()}", "a", "b")  # an object store that is down
    started = time.monotonic()
    run_one(worker)
    status = worker.jobs.status(h)
    assert status["state"] == "queued" and status["attempts"] == 0
    assert worker.jobs.queued() == [h] and worker.outage_backoff_s >= 1 and time.monotonic() - started >= 1
    assert "object store was unavailable" in status["error"] and "127.0.0.1" not in status["error"]  # no internal address


def test_a_worker_keeps_the_default_model_and_one_other(worker, tiny_repo):
    import shutil

    for name in ("second", "third"):
        shutil.copy(tiny_repo / "tiny.yaml", tiny_repo / f"{name}.yaml")
    try:
        for name in ("tiny", "second", "third"):
            worker.separator(name)
        assert list(worker.separators) == ["tiny", "third"]
    finally:
        for name in ("second", "third"):
            (tiny_repo / f"{name}.yaml").unlink()


def test_a_full_store_spends_an_attempt_per_try_instead_of_looping(settings, redis_client, faulty_s3, song):
    store = storage.S3Store(faulty_s3.endpoint, "testing", "testing")
    store.ensure_buckets()
    w = Worker(settings.with_(job_max_attempts=2), redis_client, store, name="full")
    w.store_retry_s = (0.1, 0.1)  # tries to store the stems before the attempt counts
    h = enqueue(w, song)
    faulty_s3.full = True
    run_one(w)
    status = w.jobs.status(h)
    assert status["state"] == "queued" and status["attempts"] == 1 and "did not take the results" in status["error"]
    run_one(w)
    status = w.jobs.status(h)
    assert status["state"] == "failed" and status["attempts"] == 2 and "full" in status["error"]
    assert w.jobs.queued() == [] and list(store.names(storage.OUTPUT_BUCKET, h)) == []
    assert list(store.names(storage.QUEUE_BUCKET, h)) == []  # the job has ended: its upload is gone too


def test_the_upload_is_removed_once_the_job_ends_done_or_failed(worker, song, tmp_path):
    done = enqueue(worker, song)
    run_one(worker)
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"not audio" * 100)
    failed = enqueue(worker, bad)
    run_one(worker)
    assert [worker.jobs.status(h)["state"] for h in (done, failed)] == ["done", "failed"]
    assert list((worker.settings.storage_dir / "queue").iterdir()) == []


def test_a_stalled_job_is_given_back_by_the_watchdog(worker, song, monkeypatch):
    exits = []
    monkeypatch.setattr("os._exit", exits.append)  # the real exit is tested with a real process (test_faults)
    worker.settings = worker.settings.with_(job_stall_s=5)
    h = enqueue(worker, song)
    job = worker.jobs.claim(worker.name, 1)
    from msaas.worker import Lane

    worker.running[threading.get_ident()] = Lane(job, time.monotonic() - 6)
    worker._watchdog()
    status = worker.jobs.status(h)
    assert exits == [3] and status["state"] == "queued" and "no progress for 6 s" in status["error"]
    assert worker.jobs.queued() == [h]


@pytest.mark.slow
def test_a_workers_memory_does_not_grow_with_the_songs_length(settings, processes, tmp_path):
    """Peak RSS while separating a 100 s song and a 600 s one, in the same worker process: the song is streamed, so the
    longer one costs little more. Holding the song whole would take 176 MB more for the 500 s between them (44.1 kHz
    stereo float32), its stems four times that. WAV stems: their encoders keep up with the tiny model, so the bounded
    queue in front of them (up to ENCODER_QUEUE blocks, about 100 MB, which MP3 encoders behind a fast model fill
    further on a longer song) does not blur the measure."""
    from test_uploads import status_kb

    from conftest import make_song, msaas_process, start_rest, wait_until

    settings = settings.with_(max_upload_bytes=24 << 20, max_duration_s=700, split_over_s=0)
    client = start_rest(settings, processes)
    worker = msaas_process("worker", settings)
    processes.append(worker)
    warm = client.submit(make_song(tmp_path / "warm.mp3", seconds=5, seed=50))["hash"]
    wait_until(lambda: client.status(warm)["state"] == "done", 120, "the first job (model loaded, warmed up)")
    # Each song's peak over the same baseline (the worker warmed up). Not over the RSS just before each song: memory that
    # the first song's job freed stays resident in the process, so the second song's rise over it would understate it.
    growth, baseline = {}, status_kb(worker.pid, "VmRSS")
    for seconds in (100, 600):
        song = make_song(tmp_path / f"s{seconds}.mp3", seconds=seconds, seed=seconds)
        Path(f"/proc/{worker.pid}/clear_refs").write_text("5")  # the peak (VmHWM) starts again from the current RSS
        h = client.submit(song, format="wav")["hash"]
        wait_until(lambda h=h: client.status(h)["state"] == "done", 600, f"the {seconds} s song")
        growth[seconds] = (status_kb(worker.pid, "VmHWM") - baseline) / 1024
    print(f"worker peak RSS rise: {growth[100]:.0f} MB for 100 s, {growth[600]:.0f} MB for 600 s")
    assert growth[600] < growth[100] + 88  # half what the song held whole would add


def test_a_bug_is_retried_while_a_song_that_cannot_be_separated_fails_at_once(worker, song, tmp_path, monkeypatch):
    """Only SongRejected (not audio, too long, no such part) ends a job at once; any other ValueError is a bug, retried."""

    def bug(*args):
        raise ValueError("an index out of range somewhere")

    monkeypatch.setattr(worker, "_separate", bug)
    h = enqueue(worker, song)
    run_one(worker)
    status = worker.jobs.status(h)
    assert status["state"] == "queued" and status["attempts"] == 1 and "see the worker's log" in status["error"]
    monkeypatch.undo()
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"not audio" * 100)
    h2 = enqueue(worker, bad)
    worker.jobs.r.lrem(keys.QUEUE, 0, worker.jobs.r.lindex(keys.QUEUE, -1))  # the first song's retry: out of the way
    run_one(worker)
    assert worker.jobs.status(h2)["state"] == "failed"


def test_two_stems_on_a_bag_of_specialists_runs_one_and_gives_the_bags_own_track(worker, song, tmp_path, caplog):
    """htdemucs_ft's path on a tiny bag: with two_stems=vocals only the vocals specialist runs, and the vocals stem is
    byte for byte the one the whole bag gives."""
    whole = enqueue(worker, song, model="tiny_ft", format="wav")
    run_one(worker)
    pair = enqueue(worker, song, model="tiny_ft", format="wav", two_stems="vocals")
    with caplog.at_level(logging.INFO, logger="msaas.worker"):
        run_one(worker)
    assert f"job {pair}: tiny_ft runs only what weighs in vocals" in caplog.text

    def stored(h: str, track: str) -> Path:
        path = tmp_path / f"{h}-{track}.wav"
        worker.store.get_file(storage.OUTPUT_BUCKET, storage.stem_name(h, track, "wav"), path)
        return path

    assert stored(pair, "vocals").read_bytes() == stored(whole, "vocals").read_bytes()
    assert worker.jobs.status(pair)["tracks"] == ["vocals", "no_vocals"]
    assert audio.probe(stored(pair, "no_vocals")).samples == audio.probe(song).samples


def test_songs_in_flight_share_the_cpus_for_their_encoders(settings, redis_client):
    from msaas.separation import cpu_budget

    store = storage.LocalStore(settings.storage_dir)
    assert Worker(settings, redis_client, store)._encoder_threads() == 0  # one song: encoding_threads sizes them
    four = Worker(settings.with_(jobs_in_flight=4), redis_client, store)
    assert four.lanes == 4 and four._encoder_threads() == max(1, cpu_budget() // 4)
    assert Worker(settings.with_(jobs_in_flight=4, encoder_threads=3), redis_client, store)._encoder_threads() == 3
