"""The queue and job records against a real redis-server."""

import json

import pytest

from msaas import keys
from msaas.jobs import BadMessage, Job, JobQueue, ModelDirectory, WorkerRegistry, songhash


def q(client, **kw) -> JobQueue:
    return JobQueue(client, **kw)


def workers(jobs: JobQueue) -> WorkerRegistry:
    return WorkerRegistry(jobs)


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
    assert [(job.songhash, requeued) for job, requeued in workers(jobs).requeue_orphans("taker")] == [("old", True)]
    assert jobs.queued() == ["old", "new"]
    assert jobs.status("old")["state"] == "queued"
    assert not redis_client.sismember(keys.WORKERS, "dead-worker")


def test_live_workers_keep_their_jobs(redis_client):
    jobs = q(redis_client)
    jobs.submit(Job("h1", "m"))
    jobs.claim("alive", 1)
    assert workers(jobs).requeue_orphans("taker") == []
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
    jobs, models = q(redis_client), ModelDirectory(redis_client)
    models.publish(
        "cpu-worker",
        {"htdemucs": {"tracks": ["drums"], "available": False}, "spleeter-2stems": {"tracks": ["vocals"], "available": True}},
    )
    models.publish("gpu-worker", {"htdemucs": {"tracks": ["drums"], "available": True}})
    seen = models.published()
    assert seen["htdemucs"]["available"] is True and seen["spleeter-2stems"]["available"] is True
    workers(jobs).retire("gpu-worker")  # leaves: its word goes with it
    assert models.published()["htdemucs"]["available"] is False


def test_the_model_directory_merges_the_table_with_what_the_workers_say(redis_client, tiny_repo):
    models = ModelDirectory(redis_client, repo=tiny_repo)
    alone = models.entry("tiny")  # no worker has spoken: this process's own look at DEMUCS_REPO
    assert alone.available and not alone.published and alone.tracks is None  # a repo's model: tracks known once loaded
    assert models.entry("spleeter-2stems").tracks == ["vocals", "accompaniment"]  # the table's own
    assert models.entry("no-such-model") is None
    models.publish(
        "w1",
        {
            "spleeter-2stems": {"tracks": None, "available": False},
            "tiny": {"tracks": ["drums", "bass", "other", "vocals"], "available": False},
            "extra": {"tracks": ["a", "b"], "available": True},
        },
    )
    spleeter, tiny, extra = models.entry("spleeter-2stems"), models.entry("tiny"), models.entry("extra")
    assert tiny.published and not tiny.available and tiny.tracks == ["drums", "bass", "other", "vocals"]  # the worker's word
    assert spleeter.tracks == ["vocals", "accompaniment"]  # a worker that says nothing of tracks: the table's
    assert extra.available and extra.tracks == ["a", "b"]  # known from a worker only
    assert list(models.entries())[-1] == "extra"  # the table's models first, in its order
    view = models.view({"tiny": ["x", "y"]})  # what a worker with "tiny" loaded publishes
    assert view["tiny"] == {"tracks": ["x", "y"], "available": True}


# --- a long song split across workers ---------------------------------------------------------
PLAN = {"parts": [[0, 3], [3, 6], [6, 9]], "length": 9, "samples": 9, "rate": 44100, "mean": 0.0, "std": 1.0}


def split_job(jobs, other_songs=("later",)):
    jobs.submit(Job("long", "m", options={"format": "wav"}))
    for h in other_songs:
        jobs.submit(Job(h, "m"))
    job = jobs.claim("w1", 1)
    jobs.splits.split("w1", job, PLAN)
    return job


def test_a_split_song_becomes_parts_at_the_front_of_the_queue(redis_client):
    jobs = q(redis_client)
    split_job(jobs)
    assert redis_client.llen(keys.processing_key("w1")) == 0
    assert jobs.queued() == ["long", "later"]  # one song, however many parts
    taken = [jobs.claim(w, 1) for w in ("w1", "w2", "w3")]
    assert [(t.songhash, t.part, t.options) for t in taken] == [("long", k, {"format": "wav"}) for k in range(3)]
    status = jobs.status("long")
    assert status["state"] == "running" and status["parts"] == 3 and status["attempts"] == 1
    assert "plan" not in status and not [k for k in status if k.startswith("attempts.")]


def test_the_last_part_done_queues_the_stitch_once(redis_client):
    jobs = q(redis_client)
    split_job(jobs, other_songs=())
    parts = [jobs.claim(f"w{k}", 1) for k in range(3)]
    jobs.progress(parts[0], "separating", 0.5)
    assert jobs.status("long")["progress"] == round(0.9 * 0.5 / 3, 4)
    assert jobs.splits.finish_part("w0", parts[0], 3) == 1
    assert jobs.splits.finish_part("w2", parts[2], 3) == 2
    assert redis_client.llen(keys.QUEUE) == 0
    assert jobs.splits.finish_part("w1", parts[1], 3) == 3
    assert jobs.status("long")["progress"] == 0.9
    again = jobs.claim("w0", 1)  # part 1 rerun (its worker presumed dead) finishes a second time: no second stitch
    assert again.stitch and again.part is None
    assert jobs.splits.finish_part("w1", parts[1], 3) == 3
    assert redis_client.llen(keys.QUEUE) == 0
    jobs.finish("w0", again, ["vocals"])
    assert jobs.status("long")["state"] == "done" and not redis_client.exists(keys.parts_key("long"))
    assert all(redis_client.llen(keys.processing_key(f"w{k}")) == 0 for k in range(3))


def test_parts_count_their_own_attempts_and_one_failing_for_good_fails_the_song(redis_client):
    jobs = q(redis_client, max_attempts=2)
    split_job(jobs, other_songs=())
    part = jobs.claim("w1", 1)
    assert jobs.fail("w1", part, "boom", retry=True) is True  # back at the front, the song still running
    assert jobs.status("long")["state"] == "running"
    part = jobs.claim("w1", 1)
    assert part.part == 0
    assert jobs.fail("w1", part, "boom again", retry=True) is False
    status = jobs.status("long")
    assert status["state"] == "failed" and status["error"] == "boom again"
    assert not redis_client.exists(keys.parts_key("long"))
    other = jobs.claim("w2", 1)
    assert jobs.splits.finish_part("w2", other, 3) == -1  # the song has ended: nothing more is queued
    assert redis_client.llen(keys.processing_key("w2")) == 0


def test_a_dead_workers_part_goes_back_without_requeueing_its_song(redis_client):
    jobs = q(redis_client, heartbeat_ttl_s=1)
    split_job(jobs, other_songs=())
    jobs.claim("dead", 1)
    redis_client.delete(keys.heartbeat_key("dead"))
    assert len(workers(jobs).requeue_orphans("taker")) == 1
    assert jobs.status("long")["state"] == "running"
    assert jobs.claim("w2", 1).part == 0


def kill(redis_client, worker):
    """As if the worker died: its heartbeat key is gone (its TTL ran out)."""
    redis_client.delete(keys.heartbeat_key(worker))


def test_a_job_whose_worker_dies_every_time_fails_after_its_attempts_and_the_next_song_runs(redis_client):
    jobs = q(redis_client, max_attempts=2)
    jobs.submit(Job("poison", "m", {"url": "http://x/", "data": 7}))
    jobs.submit(Job("fine", "m"))
    for n in (1, 2):
        assert jobs.claim(f"w{n}", 1).songhash == "poison"
        kill(redis_client, f"w{n}")
        ((job, requeued),) = workers(jobs).requeue_orphans("survivor")
        assert job.songhash == "poison" and requeued is (n < 2)
    status = jobs.status("poison")
    assert status["state"] == "failed" and status["attempts"] == 2
    assert "the worker stopped 2 times while separating this song" in status["error"]
    assert [json.loads(r)["songhash"] for r in redis_client.lrange(keys.DEAD, 0, -1)] == ["poison"]
    assert jobs.claim("w3", 1).songhash == "fine"  # the queue goes on
    assert redis_client.llen(keys.processing_key("survivor")) == 0
    (entry,) = [json.loads(e) for e in redis_client.hvals(keys.OUTBOX_MESSAGES)]  # the failed callback is due
    assert json.loads(entry["body"]) == {"hash": "poison", "state": "failed", "tracks": [], "error": status["error"], "data": 7}


def test_a_job_given_back_past_its_attempts_by_an_older_worker_fails_when_taken(redis_client):
    jobs = q(redis_client, max_attempts=2)
    jobs.submit(Job("poison", "m"))
    redis_client.hset(keys.job_key("poison"), "attempts", 2)  # taken twice, given back without a check
    assert jobs.claim("w1", 1) is None
    assert jobs.status("poison")["state"] == "failed" and redis_client.llen(keys.processing_key("w1")) == 0


def test_a_clean_stop_gives_the_attempt_back(redis_client):
    jobs = q(redis_client, max_attempts=1)
    jobs.submit(Job("h1", "m"))
    jobs.claim("w1", 1)
    assert workers(jobs).retire("w1") == 1
    status = jobs.status("h1")
    assert status["state"] == "queued" and status["attempts"] == 0 and jobs.queued() == ["h1"]


@pytest.mark.parametrize("raw", ["{not json", "[1, 2]", '{"model": "m"}', '{"songhash": "a", "model": "m", "part": "x"}'])
def test_a_message_that_does_not_parse_is_dead_lettered_and_never_crashes_a_worker(redis_client, raw):
    jobs = q(redis_client)
    redis_client.lpush(keys.QUEUE, raw)
    jobs.submit(Job("fine", "m"))
    assert jobs.queued() == ["fine"]  # listed around it, not a 500
    assert jobs.claim("w1", 1) is None
    assert redis_client.lrange(keys.DEAD, 0, -1) == [raw] and redis_client.llen(keys.processing_key("w1")) == 0
    assert jobs.claim("w1", 1).songhash == "fine"


def test_giving_back_the_same_message_twice_queues_it_once(redis_client):
    jobs = q(redis_client)
    jobs.submit(Job("h1", "m"))
    job = jobs.claim("w1", 1)
    assert jobs.give_back("w1", job, refund=False) is True
    assert jobs.give_back("w1", job, refund=False) is False  # no longer held: nothing changes
    assert redis_client.llen(keys.QUEUE) == 1 and int(redis_client.hget(keys.job_key("h1"), "stops")) == 1


def test_the_dead_letter_list_stays_bounded(redis_client):
    jobs = q(redis_client, max_attempts=1)
    for i in range(keys.DEAD_MAX + 5):
        redis_client.lpush(keys.QUEUE, f"garbage {i}")
        jobs.claim("w1", 1)
    assert redis_client.llen(keys.DEAD) == keys.DEAD_MAX


def test_output_options_travel_under_their_own_key_and_older_messages_still_read():
    job = Job("h1", "m", None, {"format": "wav", "part": "not the part field"})
    body = json.loads(job.to_message())
    assert body["options"] == {"format": "wav", "part": "not the part field"} and "part" not in body
    again = Job.from_message(job.to_message())
    assert again.options == job.options and again.part is None and again.whole
    older = '{"bitrate": 192, "callback": null, "format": "mp3", "model": "m", "songhash": "h2"}'  # as workers wrote them
    assert Job.from_message(older).options == {"bitrate": 192, "format": "mp3"}
    assert json.loads(Job("h3", "m").to_message()) == {"songhash": "h3", "model": "m", "callback": None}  # the course's


def test_a_queue_written_by_the_previous_version_is_run_by_this_one(redis_client):
    """A rolling upgrade: messages and records an older rest wrote (options at the top level) are taken, run and ended."""
    jobs = q(redis_client)
    redis_client.hset(keys.job_key("old1"), mapping={"state": "queued", "stage": "queued", "progress": 0, "model": "m",
                                                      "options": '{"format": "flac"}', "created": 1, "updated": 1, "attempts": 0})  # fmt: skip
    redis_client.lpush(keys.QUEUE, '{"callback": null, "format": "flac", "model": "m", "songhash": "old1"}')
    job = jobs.claim("w1", 1)
    assert job.songhash == "old1" and job.options == {"format": "flac"}
    jobs.finish("w1", job, ["vocals"])
    assert jobs.status("old1")["state"] == "done" and redis_client.llen(keys.processing_key("w1")) == 0


def test_an_uploads_format_travels_with_its_job_and_an_mp3s_message_stays_the_courses():
    flac = Job.from_message(Job("h1", "m", upload="flac").to_message())
    assert flac.upload == "flac" and flac.task(part=0).upload == "flac"  # its parts find the same file
    assert "upload" not in json.loads(Job("h1", "m").to_message())
    assert Job.from_message('{"songhash": "h2", "model": "m", "callback": null}').upload == "mp3"  # older messages
    with pytest.raises(BadMessage):
        Job.from_message('{"songhash": "h3", "model": "m", "upload": "../../etc"}')
