"""The queue and job records against a real redis-server."""

import json

from msaas import keys
from msaas.jobs import Job, JobQueue, songhash


def q(client, **kw) -> JobQueue:
    return JobQueue(client, **kw)


def test_submit_pushes_a_small_json_message_and_a_record(redis_client):
    jobs = q(redis_client)
    assert jobs.submit(Job("h1", "htdemucs", {"url": "http://x/", "data": 1})) is None
    (raw,) = redis_client.lrange(keys.QUEUE, 0, -1)
    assert json.loads(raw) == {"songhash": "h1", "model": "htdemucs", "callback": {"url": "http://x/", "data": 1}}
    status = jobs.status("h1")
    assert status["state"] == "queued" and status["progress"] == 0 and status["model"] == "htdemucs"


def test_the_same_job_is_never_queued_twice(redis_client):
    jobs = q(redis_client)
    jobs.submit(Job("h1", "m"))
    assert jobs.submit(Job("h1", "m")) == "queued"
    assert redis_client.llen(keys.QUEUE) == 1


def test_queue_lists_songs_oldest_first(redis_client):
    jobs = q(redis_client)
    for h in ("a", "b", "c"):
        jobs.submit(Job(h, "m"))
    assert jobs.queued() == ["a", "b", "c"]
    assert jobs.claim("w1", 1).songhash == "a"
    assert jobs.queued() == ["b", "c"]


def test_claim_moves_the_job_into_the_workers_processing_list(redis_client):
    jobs = q(redis_client)
    jobs.submit(Job("h1", "m"))
    job = jobs.claim("w1", 1)
    assert redis_client.llen(keys.QUEUE) == 0
    assert redis_client.lrange(keys.processing_key("w1"), 0, -1) == [job.raw]
    assert jobs.status("h1")["state"] == "running" and jobs.status("h1")["attempts"] == 1
    jobs.finish("w1", job, ["vocals", "drums"])
    assert redis_client.llen(keys.processing_key("w1")) == 0
    assert jobs.status("h1")["state"] == "done" and jobs.status("h1")["tracks"] == ["vocals", "drums"]


def test_claim_times_out_on_an_empty_queue(redis_client):
    assert q(redis_client).claim("w1", 0.1) is None


def test_failures_are_retried_then_dead_lettered(redis_client):
    jobs = q(redis_client, max_attempts=2)
    jobs.submit(Job("h1", "m"))
    assert jobs.fail("w1", jobs.claim("w1", 1), "boom", retry=True) is True
    assert jobs.status("h1")["state"] == "queued"
    assert jobs.fail("w1", jobs.claim("w1", 1), "boom again", retry=True) is False
    status = jobs.status("h1")
    assert status["state"] == "failed" and status["error"] == "boom again"
    assert [json.loads(r)["songhash"] for r in redis_client.lrange(keys.DEAD, 0, -1)] == ["h1"]


def test_a_failed_job_may_be_submitted_again(redis_client):
    jobs = q(redis_client)
    jobs.submit(Job("h1", "m"))
    jobs.fail("w1", jobs.claim("w1", 1), "no model", retry=False)
    assert jobs.submit(Job("h1", "m")) is None
    assert jobs.status("h1")["state"] == "queued" and jobs.status("h1")["attempts"] == 0


def test_jobs_of_a_worker_without_heartbeat_are_requeued_at_the_front(redis_client):
    jobs = q(redis_client, heartbeat_ttl_s=1)
    jobs.submit(Job("old", "m"))
    jobs.submit(Job("new", "m"))
    jobs.claim("dead-worker", 1)
    redis_client.delete(keys.heartbeat_key("dead-worker"))  # as if its TTL ran out
    assert jobs.requeue_orphans() == 1
    assert jobs.queued() == ["old", "new"]
    assert jobs.status("old")["state"] == "queued"
    assert not redis_client.sismember(keys.WORKERS, "dead-worker")


def test_live_workers_keep_their_jobs(redis_client):
    jobs = q(redis_client)
    jobs.submit(Job("h1", "m"))
    jobs.claim("alive", 1)
    assert jobs.requeue_orphans() == 0
    assert jobs.status("h1")["state"] == "running"


def test_songhash_depends_on_model_choices_and_bytes():
    base = songhash("htdemucs", {}, b"song")
    assert len(base) == 56 and base == songhash("htdemucs", {}, b"song")
    assert (
        len(
            {
                base,
                songhash("htdemucs_ft", {}, b"song"),
                songhash("htdemucs", {"two_stems": "vocals"}, b"song"),
                songhash("htdemucs", {}, b"song2"),
            }
        )
        == 4
    )


def test_forgetting_tracks_keeps_the_others_and_ends_with_an_empty_list(redis_client):
    jobs = q(redis_client)
    jobs.submit(Job("h1", "m"))
    jobs.finish("w1", jobs.claim("w1", 1), ["vocals", "drums"])
    assert jobs.forget_track("h1", "drums") is True
    assert jobs.forget_track("h1", "drums") is False
    assert jobs.status("h1")["tracks"] == ["vocals"]
    jobs.forget_track("h1", "vocals")
    assert jobs.status("h1")["tracks"] == []


def test_a_model_is_available_when_any_live_worker_can_load_it(redis_client):
    jobs = q(redis_client)
    jobs.publish_models(
        "cpu-worker",
        {"htdemucs": {"tracks": ["drums"], "available": False}, "spleeter-2stems": {"tracks": ["vocals"], "available": True}},
    )
    jobs.publish_models("gpu-worker", {"htdemucs": {"tracks": ["drums"], "available": True}})
    seen = jobs.published_models()
    assert seen["htdemucs"]["available"] is True and seen["spleeter-2stems"]["available"] is True
    jobs.retire("gpu-worker")  # leaves: its word goes with it
    assert jobs.published_models()["htdemucs"]["available"] is False
