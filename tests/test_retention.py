"""RETENTION_S: a song's record expires in Redis, the sweep removes its objects from either store."""

import time

from msaas import keys, storage
from msaas.jobs import Job, JobQueue
from msaas.retention import Retention


def finished_song(jobs: JobQueue, store, tmp_path, songhash: str, tenant: str | None = None) -> None:
    src = tmp_path / "stem"
    src.write_bytes(b"stem")
    jobs.submit(Job(songhash, "m", tenant=tenant))
    for name in (f"{songhash}-vocals.mp3", f"{songhash}-drums.mp3"):
        store.put_file(storage.OUTPUT_BUCKET, name, src, "audio/mpeg")
    store.put_file(storage.QUEUE_BUCKET, f"{songhash}.part0.f32", src, "application/octet-stream")
    jobs.finish("w1", jobs.claim("w1", 1), ["vocals", "drums"])


def test_a_song_past_its_retention_loses_its_objects_and_record_and_others_stay(redis_client, store, tmp_path):
    jobs = JobQueue(redis_client, retention_s=1)
    finished_song(jobs, store, tmp_path, "old")
    sweep = Retention(redis_client, store, 1)
    assert sweep.sweep() == [] and len(list(store.names(storage.OUTPUT_BUCKET, "old-"))) == 2  # not yet
    time.sleep(1.1)
    jobs.retention_s = 60
    finished_song(jobs, store, tmp_path, "new")
    finished_song(JobQueue(redis_client, retention_s=1), store, tmp_path, "keyed", tenant="t1")
    time.sleep(1.1)
    assert redis_client.zcard(keys.songs_key(None)) == 2 and redis_client.zcard(keys.songs_key("t1")) == 1
    assert sorted(sweep.sweep()) == ["keyed", "old"]
    assert [s["hash"] for s in jobs.songs(None)[1]] == ["new"] and jobs.songs("t1") == (0, [])  # out of the library too
    assert redis_client.zcard(keys.songs_key("t1")) == 0
    assert list(store.names(storage.OUTPUT_BUCKET, "old-")) == [] and list(store.names(storage.QUEUE_BUCKET, "old.")) == []
    assert jobs.status("old") is None and redis_client.zscore(keys.EXPIRING, "old") is None
    assert len(list(store.names(storage.OUTPUT_BUCKET, "new-"))) == 2 and jobs.status("new")["state"] == "done"


def test_a_song_sent_again_before_the_sweep_is_left_alone(redis_client, store, tmp_path):
    jobs = JobQueue(redis_client, retention_s=1)
    finished_song(jobs, store, tmp_path, "again")
    time.sleep(1.1)
    redis_client.delete(keys.job_key("again"))  # expired...
    jobs.submit(Job("again", "m"))  # ...and sent again before any sweep
    assert Retention(redis_client, store, 1).sweep() == []
    assert jobs.status("again")["state"] == "queued" and redis_client.zscore(keys.EXPIRING, "again") is None


def test_no_retention_keeps_everything(redis_client, store, tmp_path):
    jobs = JobQueue(redis_client, retention_s=0)
    finished_song(jobs, store, tmp_path, "kept")
    assert redis_client.ttl(keys.job_key("kept")) == -1 and redis_client.zcard(keys.EXPIRING) == 0
    assert Retention(redis_client, store, 0).sweep() == []
