"""The real Flask app over HTTP, against a real redis-server and a real store."""

import base64
import json

import pytest
import requests

import redis
from conftest import make_song
from msaas import keys, storage
from msaas.jobs import songhash


def b64(path):
    return base64.b64encode(path.read_bytes()).decode()


def post_json(live, body, **kw):
    return requests.post(f"{live.url}/apiv1/separate", json=body, timeout=30, **kw)


def leftovers(live):
    """Every key and stored object a request could have left behind (the workers' model list aside)."""
    redis_keys = sorted(k for k in live.backends.redis.keys("*") if not k.startswith("models:"))
    root = live.backends.settings.storage_dir
    objects = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []
    return redis_keys, objects


def test_index_answers_200_for_load_balancers(live_app):
    r = requests.get(live_app.url + "/", timeout=5)
    assert r.status_code == 200 and "MSaaS" in r.text
    assert requests.get(live_app.url + "/healthz", timeout=5).json() == {"ok": True}
    assert requests.get(live_app.url + "/readyz", timeout=5).status_code == 200


def test_json_upload_stores_the_song_and_queues_a_job(live_app, song):
    r = post_json(live_app, {"mp3": b64(song), "callback": {"url": "http://localhost:5000", "data": {"x": 1}}})
    assert r.status_code == 200, r.text
    h = r.json()["hash"]
    assert h == songhash("tiny", {}, song.read_bytes())
    assert "enqueued" in r.json()["reason"]
    assert live_app.backends.store.exists(storage.QUEUE_BUCKET, f"{h}.mp3")
    (raw,) = live_app.backends.redis.lrange(keys.QUEUE, 0, -1)
    assert json.loads(raw) == {"songhash": h, "model": "tiny", "callback": {"url": "http://localhost:5000", "data": {"x": 1}}}
    assert requests.get(f"{live_app.url}/apiv1/queue", timeout=5).json() == {"queue": [h]}
    status = requests.get(f"{live_app.url}/apiv1/status/{h}", timeout=5).json()
    assert status["state"] == "queued" and status["model"] == "tiny" and status["progress"] == 0


def test_multipart_upload_is_the_same_job_as_json(live_app, song):
    h = post_json(live_app, {"mp3": b64(song)}).json()["hash"]
    with open(song, "rb") as f:
        r = requests.post(f"{live_app.url}/apiv1/separate", files={"mp3": f}, timeout=30)
    assert r.status_code == 200 and r.json()["hash"] == h
    assert "not separated again" in r.json()["reason"]
    assert live_app.backends.redis.llen(keys.QUEUE) == 1


def test_choices_change_the_hash_and_travel_with_the_job(live_app, song):
    plain = post_json(live_app, {"mp3": b64(song)}).json()["hash"]
    r = post_json(live_app, {"mp3": b64(song), "two_stems": "vocals", "format": "flac"})
    assert r.status_code == 200 and r.json()["hash"] != plain
    raw = live_app.backends.redis.lrange(keys.QUEUE, 0, 0)[0]
    assert json.loads(raw)["options"] == {"two_stems": "vocals", "format": "flac"}


def test_models_are_listed_with_their_tracks(live_app):
    body = requests.get(f"{live_app.url}/apiv1/models", timeout=5).json()
    by_name = {m["name"]: m for m in body["models"]}
    assert body["default"] == "tiny" and by_name["tiny"]["available"] is True
    assert by_name["htdemucs_6s"]["tracks"][-2:] == ["guitar", "piano"]
    assert by_name["htdemucs"]["available"] is False  # no weights on this machine


BAD = [
    ("not json", dict(data=b"{nope", headers={"Content-Type": "application/json"}), 400, "JSON"),
    ("json list", dict(json=[1, 2]), 400, "JSON object"),
    ("no mp3", dict(json={"model": "tiny"}), 400, "mp3"),
    ("bad base64", dict(json={"mp3": "!!!not-base64!!!"}), 400, "base64"),
    ("empty song", dict(json={"mp3": ""}), 400, "mp3"),
    ("not audio", dict(json={"mp3": base64.b64encode(b"hello, this is text" * 100).decode()}), 415, "not a song"),
    ("too large", dict(json={"mp3": base64.b64encode(b"\0" * (3 * 1024 * 1024)).decode()}), 413, "MB"),
    ("unknown model", dict(json={"mp3": "SUQz", "model": "nope"}), 422, "unknown model"),
    ("model type", dict(json={"mp3": "SUQz", "model": {"x": 1}}), 422, "unknown model"),
    ("one-model ensemble", dict(json={"mp3": "SUQz", "model": ["x"]}), 400, "an ensemble is 2 to 4"),
    ("bad two_stems", dict(json={"mp3": "SUQz", "model": "htdemucs", "two_stems": "kazoo"}), 400, "two_stems"),
    ("bad format", dict(json={"mp3": "SUQz", "format": "ogg"}), 400, "format"),
    ("bad bitrate", dict(json={"mp3": "SUQz", "bitrate": 33}), 400, "bitrate"),
    ("callback not http", dict(json={"mp3": "SUQz", "callback": {"url": "file:///etc/passwd"}}), 400, "callback"),
    ("callback not object", dict(json={"mp3": "SUQz", "callback": "http://x"}), 400, "callback"),
    ("multipart without file", dict(files={"song": ("a.mp3", b"x")}), 400, "mp3"),
    ("two songs", dict(data=b'{"mp3": "SUQz", "mp3": "SUQz"}'), 400, "two mp3"),
    ("two objects", dict(data=b'{"mp3": "SUQz"} {}'), 400, "more than one"),
    ("cut short", dict(data=b'{"mp3": "SUQzBAAA'), 400, "ends inside"),
    ("padding inside", dict(data=b'{"mp3": "SUQ=SUQz"}'), 400, "base64"),
    ("huge field", dict(data=b'{"mp3": "SUQz", "x": "' + b"a" * 70_000 + b'"}'), 400, "kB allowed"),
    ("mp3 not a string", dict(json={"mp3": 12}), 400, "mp3"),
]


@pytest.mark.parametrize("case,kwargs,status,words", BAD, ids=[b[0] for b in BAD])
def test_bad_uploads_get_a_clear_4xx_and_leave_nothing_behind(live_app, case, kwargs, status, words):
    before = leftovers(live_app)
    r = requests.post(f"{live_app.url}/apiv1/separate", timeout=30, **kwargs)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    assert leftovers(live_app) == before


def test_audio_longer_than_allowed_is_refused(live_app, tmp_path):
    long_song = make_song(tmp_path / "long.mp3", seconds=61, fmt="mp3")
    r = post_json(live_app, {"mp3": b64(long_song)})
    assert r.status_code == 413 and "allowed" in r.json()["error"]


UNKNOWN = ["0" * 56, "not-a-hash", "..%2F..%2Fetc%2Fpasswd", "a" * 57]


@pytest.mark.parametrize("h", UNKNOWN)
def test_unknown_songs_are_404_json(live_app, h):
    for url in (f"/apiv1/status/{h}", f"/apiv1/track/{h}/vocals", f"/apiv1/remove/{h}/vocals"):
        r = requests.get(live_app.url + url, timeout=5)
        assert r.status_code == 404 and "error" in r.json()


def done_job(live, song, tracks=("vocals", "drums")):
    """A song as a worker leaves it: record done, stems in the output bucket."""
    h = post_json(live, {"mp3": b64(song)}).json()["hash"]
    jobs = live.backends.jobs
    job = jobs.claim("w", 1)
    for t in tracks:
        live.backends.store.put_file(storage.OUTPUT_BUCKET, f"{h}-{t}.mp3", song, "audio/mpeg")
    jobs.finish("w", job, list(tracks))
    return h


@pytest.mark.parametrize("track", ["vocals", "vocals.mp3"])
def test_a_stem_downloads_as_audio_mpeg(live_app, song, track):
    h = done_job(live_app, song)
    r = requests.get(f"{live_app.url}/apiv1/track/{h}/{track}", timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"] == "audio/mpeg"
    assert r.content == song.read_bytes()


@pytest.mark.parametrize("track", ["guitar", "..", "vocals.wav", "VOCALS", "vocals%00", "a" * 40])
def test_unknown_tracks_are_404_json(live_app, song, track):
    h = done_job(live_app, song)
    r = requests.get(f"{live_app.url}/apiv1/track/{h}/{track}", timeout=5)
    assert r.status_code == 404 and "error" in r.json()


@pytest.mark.parametrize("how", ["get-remove", "delete-track"])
def test_removing_a_stem_deletes_it(live_app, song, how):
    h = done_job(live_app, song)
    if how == "get-remove":
        r = requests.get(f"{live_app.url}/apiv1/remove/{h}/drums", timeout=5)
    else:
        r = requests.delete(f"{live_app.url}/apiv1/track/{h}/drums", timeout=5)
    assert r.status_code == 200 and r.json()["removed"] is True
    assert not live_app.backends.store.exists(storage.OUTPUT_BUCKET, f"{h}-drums.mp3")
    assert requests.get(f"{live_app.url}/apiv1/track/{h}/drums", timeout=5).status_code == 404
    assert requests.get(f"{live_app.url}/apiv1/status/{h}", timeout=5).json()["tracks"] == ["vocals"]
    assert requests.delete(f"{live_app.url}/apiv1/track/{h}/drums", timeout=5).status_code == 404


def test_a_model_the_workers_cannot_load_is_refused_at_upload(live_app, song):
    live_app.backends.directory.publish("w1", {"htdemucs": {"tracks": ["drums", "bass", "other", "vocals"], "available": False}})
    r = post_json(live_app, {"mp3": b64(song), "model": "htdemucs"})
    assert r.status_code == 422 and "fetch-model" in r.json()["error"]


def test_redis_down_is_503_and_nothing_is_stored(settings, song):
    from conftest import LiveApp, free_port
    from msaas import jobs
    from msaas.rest import create_app

    client = jobs.connect(f"redis://127.0.0.1:{free_port()}/0")
    live = LiveApp(create_app(settings, client, storage.LocalStore(settings.storage_dir)), settings.port)
    try:
        r = post_json(live, {"mp3": b64(song)})
        assert r.status_code == 503 and "redis" in r.json()["error"]
        assert not list(settings.storage_dir.rglob("*.mp3"))
        assert requests.get(live.url + "/readyz", timeout=10).status_code == 503
        assert requests.get(live.url + "/", timeout=5).status_code == 200
    finally:
        live.close()


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_songs_that_are_not_mp3_are_accepted_and_stored_as_what_they_are(live_app, tmp_path, fmt):
    path = make_song(tmp_path / f"song.{fmt}", seconds=1.5, rate=48000, fmt=fmt)
    with open(path, "rb") as f:  # sent under an MP3's name: what it is decides, not what it is called
        r = requests.post(f"{live_app.url}/apiv1/separate", files={"mp3": ("song.mp3", f)}, timeout=30)
    assert r.status_code == 200, r.text
    h = r.json()["hash"]
    assert live_app.backends.jobs.queued() == [h]
    store = live_app.backends.store
    assert list(store.names(storage.QUEUE_BUCKET, h)) == [f"{h}.{fmt}"]
    (raw,) = live_app.backends.redis.lrange(keys.QUEUE, 0, -1)
    assert json.loads(raw)["upload"] == fmt


def test_api_keys_when_configured_guard_every_api_route(settings, redis_client, song):
    from conftest import LiveApp
    from msaas.rest import create_app

    live = LiveApp(
        create_app(settings.with_(api_keys=("k1", "k2")), redis_client, storage.LocalStore(settings.storage_dir)), settings.port
    )
    try:
        r = post_json(live, {"mp3": b64(song)})
        assert r.status_code == 401 and "API key" in r.json()["error"] and r.headers["WWW-Authenticate"].startswith("Bearer")
        assert requests.get(f"{live.url}/apiv1/queue", headers={"Authorization": "Bearer nope"}, timeout=5).status_code == 401
        assert not live.backends.redis.keys("job:*")
        assert post_json(live, {"mp3": b64(song)}, headers={"Authorization": "Bearer k2"}).status_code == 200
        assert requests.get(live.url + "/", timeout=5).status_code == 200  # health checks need no key
    finally:
        live.close()


def test_a_truncated_mp3_is_refused_with_422_and_nothing_left(live_app, tmp_path):
    data = make_song(tmp_path / "s.mp3", seconds=6).read_bytes()
    before = leftovers(live_app)
    r = post_json(live_app, {"mp3": base64.b64encode(data[: len(data) // 2]).decode()})
    assert r.status_code == 422 and "cut short" in r.json()["error"]
    assert leftovers(live_app) == before


def test_a_song_at_a_rate_no_mp3_has_is_refused_for_mp3_stems_and_taken_for_wav(live_app, tmp_path):
    hires = b64(make_song(tmp_path / "hires.flac", seconds=1, rate=96000, fmt="flac"))
    before = leftovers(live_app)
    r = post_json(live_app, {"mp3": hires})
    assert r.status_code == 422 and "96000 Hz" in r.json()["error"] and "wav or flac" in r.json()["error"]
    assert leftovers(live_app) == before
    assert post_json(live_app, {"mp3": hires, "format": "wav"}).json()["reason"] == "Song enqueued for separation"


def test_all_stems_download_as_one_zip(live_app, song, tmp_path):
    import io
    import zipfile

    h = done_job(live_app, song)
    r = requests.get(f"{live_app.url}/apiv1/zip/{h}", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as archive:
        assert archive.namelist() == ["vocals.mp3", "drums.mp3"]
        assert archive.read("vocals.mp3") == song.read_bytes()
    queued = post_json(live_app, {"mp3": b64(make_song(tmp_path / "other.mp3", seconds=1, seed=9))}).json()["hash"]
    assert requests.get(f"{live_app.url}/apiv1/zip/{queued}", timeout=5).status_code == 404


def test_json_is_read_as_it_streams_whatever_the_field_order_escapes_or_data_url(live_app, song):
    """The song's base64 is decoded block by block: `\\/` escapes, line breaks, a data: URL and fields before or after it
    give the same bytes, hence the same songhash as the plain body."""
    encoded = b64(song)
    plain = post_json(live_app, {"mp3": encoded, "two_stems": "vocals"})
    assert plain.status_code == 200, plain.text
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    for body in (
        '{"two_stems": "vocals", "mp3": "' + encoded.replace("/", "\\/") + '"}',
        '{ "mp3" : ' + json.dumps(wrapped) + ' ,"two_stems":"vocals" }',
        '{"mp3": "data:audio/mpeg;base64,' + encoded + '", "two_stems": "vocals"}',
    ):
        r = requests.post(f"{live_app.url}/apiv1/separate", data=body.encode(), timeout=30)
        assert r.status_code == 200 and r.json()["hash"] == plain.json()["hash"], r.text


def test_more_uploads_at_once_than_allowed_get_503_with_retry_after(settings, redis_client, song):
    from conftest import LiveApp
    from msaas.rest import create_app

    live = LiveApp(
        create_app(settings.with_(max_uploads=1), redis_client, storage.LocalStore(settings.storage_dir)), settings.port
    )
    try:
        assert live.backends.uploads.acquire(blocking=False)  # one upload under way
        r = post_json(live, {"mp3": b64(song)})
        assert r.status_code == 503 and r.headers["Retry-After"] and "uploads" in r.json()["error"]
        assert leftovers(live) == ([], [])
        live.backends.uploads.release()
        assert post_json(live, {"mp3": b64(song)}).status_code == 200
    finally:
        live.close()


def test_songs_at_too_high_a_rate_or_with_outsized_stems_are_refused_up_front(live_app, tmp_path):
    b = live_app.backends
    hi = make_song(tmp_path / "hi.flac", seconds=1, rate=96000, fmt="flac")
    b.settings = b.settings.with_(max_sample_rate=48000)
    r = requests.post(f"{live_app.url}/apiv1/separate", files={"mp3": ("hi.flac", hi.read_bytes())}, data={"format": "flac"})
    assert r.status_code == 422 and "48000 Hz" in r.json()["error"]
    b.settings = b.settings.with_(max_sample_rate=192000, max_stems_bytes=1_000_000)
    song = make_song(tmp_path / "s.wav", seconds=3, fmt="wav")  # 4 WAV stems of 3 s: 2.1 MB
    r = requests.post(f"{live_app.url}/apiv1/separate", files={"mp3": ("s.wav", song.read_bytes())}, data={"format": "wav"})
    assert r.status_code == 413 and "stems" in r.json()["error"] and "mp3" in r.json()["error"]
    assert leftovers(live_app) == ([], [])
    r = requests.post(f"{live_app.url}/apiv1/separate", files={"mp3": ("s.wav", song.read_bytes())})  # 4 MP3 stems: 0.5 MB
    assert r.status_code == 200, r.text


def test_a_full_object_store_is_507_and_nothing_is_half_written(settings, redis_client, faulty_s3, song):
    from conftest import LiveApp
    from msaas.rest import create_app

    store = storage.S3Store(faulty_s3.endpoint, "testing", "testing")
    live = LiveApp(create_app(settings, redis_client, store), settings.port)
    try:
        faulty_s3.full = True
        r = post_json(live, {"mp3": b64(song)})
        assert r.status_code == 507 and "full" in r.json()["error"] and r.headers["Retry-After"]
        assert list(store.names(storage.QUEUE_BUCKET, "")) == [] and leftovers(live)[0] == []
        faulty_s3.full = False
        assert post_json(live, {"mp3": b64(song)}).status_code == 200
    finally:
        live.close()


def test_a_full_redis_is_507_and_nothing_is_half_written(settings, song, tmp_path):
    from conftest import LiveApp, free_port
    from msaas import jobs, redisproc
    from msaas.rest import create_app

    port = free_port()
    server = redisproc.start(port, tmp_path / "redis", persist=False, maxmemory="64mb")
    client = jobs.connect(f"redis://127.0.0.1:{port}/0")
    live = LiveApp(create_app(settings, client, storage.LocalStore(settings.storage_dir)), settings.port)
    try:
        client.config_set("maxmemory", client.info("memory")["used_memory"] // 2)  # as full as a bounded redis gets
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            client.set("filler", "x")
        r = post_json(live, {"mp3": b64(song)})
        assert r.status_code == 507 and "redis" in r.json()["error"] and "full" in r.json()["error"]
        assert not list(settings.storage_dir.rglob("*.mp3")) and not client.keys("job:*") and client.llen(keys.QUEUE) == 0
    finally:
        live.close()
        server.terminate()
        server.wait()


def keyed_app(settings, redis_client, **changes):
    from conftest import LiveApp
    from msaas.rest import create_app

    settings = settings.with_(api_keys=("key-one", "key-two"), **changes)
    return LiveApp(create_app(settings, redis_client, storage.LocalStore(settings.storage_dir)), settings.port)


def as_key(key):
    return {"Authorization": f"Bearer {key}"}


def test_each_key_is_a_tenant_that_cannot_see_list_or_remove_another_keys_songs(settings, redis_client, song):
    live = keyed_app(settings, redis_client)
    try:
        one = post_json(live, {"mp3": b64(song)}, headers=as_key("key-one")).json()["hash"]
        two = post_json(live, {"mp3": b64(song)}, headers=as_key("key-two")).json()["hash"]
        assert one != two and one != songhash(settings.demucs_model, {}, song.read_bytes())  # the key's id is in the hash
        again = post_json(live, {"mp3": b64(song)}, headers=as_key("key-one")).json()
        assert again["hash"] == one and "not separated again" in again["reason"]  # dedupe within a key
        live.backends.jobs.finish("w", live.backends.jobs.claim("w", 1), ["vocals"])  # key one's song is done
        (live.backends.settings.storage_dir / "output" / f"{one}-vocals.mp3").write_bytes(b"stem")
        get = lambda path, key: requests.get(f"{live.url}{path}", headers=as_key(key), timeout=10)  # noqa: E731
        assert get("/apiv1/queue", "key-one").json() == {"queue": []}
        assert get("/apiv1/queue", "key-two").json() == {"queue": [two]}
        for path in (f"/apiv1/status/{one}", f"/apiv1/track/{one}/vocals", f"/apiv1/zip/{one}", f"/apiv1/remove/{one}/vocals"):
            assert get(path, "key-two").status_code == 404, path
        r = requests.delete(f"{live.url}/apiv1/track/{one}/vocals", headers=as_key("key-two"), timeout=10)
        assert r.status_code == 404 and (live.backends.settings.storage_dir / "output" / f"{one}-vocals.mp3").exists()
        status = get(f"/apiv1/status/{one}", "key-one").json()
        assert status["state"] == "done" and "tenant" not in status
        assert get(f"/apiv1/track/{one}/vocals", "key-one").content == b"stem"
    finally:
        live.close()


def test_uploads_past_the_rate_limit_get_429_with_retry_after_counted_per_key(settings, redis_client, tmp_path):
    live = keyed_app(settings, redis_client, rate_limit="2/minute")
    try:
        songs = [b64(make_song(tmp_path / f"s{i}.mp3", seconds=1, seed=30 + i)) for i in range(4)]
        assert [post_json(live, {"mp3": songs[i]}, headers=as_key("key-one")).status_code for i in range(2)] == [200, 200]
        r = post_json(live, {"mp3": songs[2]}, headers=as_key("key-one"))
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0 and "RATE_LIMIT" in r.json()["error"]
        assert post_json(live, {"mp3": songs[3]}, headers=as_key("key-two")).status_code == 200  # another key's count
        assert requests.get(f"{live.url}/apiv1/queue", headers=as_key("key-one"), timeout=5).status_code == 200  # polls free
        assert len(live.backends.jobs.queued("x")) == 0 and redis_client.llen(keys.QUEUE) == 3
    finally:
        live.close()


def test_a_key_may_have_only_so_many_songs_waiting(settings, redis_client, tmp_path):
    live = keyed_app(settings, redis_client, max_queued_songs=2)
    try:
        songs = [b64(make_song(tmp_path / f"s{i}.mp3", seconds=1, seed=40 + i)) for i in range(3)]
        assert [post_json(live, {"mp3": s}, headers=as_key("key-one")).status_code for s in songs[:2]] == [200, 200]
        r = post_json(live, {"mp3": songs[2]}, headers=as_key("key-one"))
        assert r.status_code == 429 and "MAX_QUEUED_SONGS" in r.json()["error"] and r.headers["Retry-After"]
        assert post_json(live, {"mp3": songs[2]}, headers=as_key("key-two")).status_code == 200
    finally:
        live.close()


def test_a_queued_song_says_how_many_wait_before_it(live_app, song, tmp_path):
    import base64

    from conftest import make_song

    hashes = []
    for seed in (31, 32, 33):
        body = {"mp3": base64.b64encode(make_song(tmp_path / f"q{seed}.mp3", seconds=1, seed=seed).read_bytes()).decode()}
        hashes.append(requests.post(f"{live_app.url}/apiv1/separate", json=body, timeout=30).json()["hash"])
    positions = [requests.get(f"{live_app.url}/apiv1/status/{h}", timeout=30).json()["queue_position"] for h in hashes]
    assert positions == [0, 1, 2]  # no worker: first come, first taken


def test_a_running_song_says_about_how_long_it_has_left(live_app, redis_client, song):
    import time

    h = requests.post(f"{live_app.url}/apiv1/separate", json={"mp3": base64.b64encode(song.read_bytes()).decode()}, timeout=30)
    h = h.json()["hash"]
    status = lambda: requests.get(f"{live_app.url}/apiv1/status/{h}", timeout=30).json()  # noqa: E731
    # as a worker records it: running since 30 s ago, a quarter done; then too early to say
    redis_client.hset(keys.job_key(h), mapping={"state": "running", "progress": 0.25, "started": time.time() - 30})
    assert status()["eta_s"] == pytest.approx(90, abs=2) and "queue_position" not in status()
    redis_client.hset(keys.job_key(h), mapping={"progress": 0.01})
    assert "eta_s" not in status()
