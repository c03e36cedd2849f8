"""The library: GET /apiv1/songs lists a caller's songs newest first, a page at a time; DELETE /apiv1/song removes a
whole song. Against a real rest process, a real worker and a real redis-server."""

import json
import time

import pytest
import requests

from conftest import make_song, msaas_process, start_rest, wait_until
from msaas import keys
from msaas.client import ApiError, Client


def objects(settings, songhash):
    return sorted(str(p.relative_to(settings.storage_dir)) for p in settings.storage_dir.rglob(f"{songhash}*") if p.is_file())


def test_songs_are_listed_newest_first_a_page_at_a_time_with_their_names(settings, processes, tmp_path, redis_client):
    client = start_rest(settings, processes)
    processes.append(msaas_process("worker", settings))
    sent = []
    for i, name in enumerate(["first song.mp3", "second.mp3", "third.mp3"]):
        path = make_song(tmp_path / name, seconds=1.5 + i / 2, seed=30 + i)
        sent.append(client.submit(path, multipart=True)["hash"])  # the form's file name is the song's name
        time.sleep(0.01)
    named = client.submit(make_song(tmp_path / "x.mp3", seconds=1, seed=40), name="C:\\music\\Mix\x07 of\tit.mp3")["hash"]
    sent.append(named)
    for h in sent:
        assert wait_until(lambda h=h: client.status(h)["state"] == "done", 120, "the jobs")

    page = client.songs(limit=2)
    assert page["total"] == 4 and page["offset"] == 0 and page["next"] == 2
    assert [s["hash"] for s in page["songs"]] == [named, sent[2]]  # newest first
    newest = page["songs"][0]
    assert newest["name"] == "Mix of it.mp3"  # the last path part, printable, spaces collapsed
    assert newest["model"] == "tiny" and newest["state"] == "done"
    assert newest["tracks"] == ["drums", "bass", "other", "vocals"]
    assert abs(newest["duration_s"] - 1.0) < 0.05 and newest["created"] <= time.time()
    rest = client.songs(offset=2, limit=2)
    assert [s["hash"] for s in rest["songs"]] == [sent[1], sent[0]] and rest["next"] is None
    assert [s["name"] for s in rest["songs"]] == ["second.mp3", "first song.mp3"]
    for bad in ("0", "101", "x", "-1"):
        r = requests.get(f"{client.base}/apiv1/songs", params={"limit": bad}, timeout=10)
        assert r.status_code == 400 and "limit" in r.json()["error"]


def test_deleting_a_song_removes_its_stems_peaks_record_and_listing(settings, processes, tmp_path, redis_client):
    client = start_rest(settings, processes)
    worker = msaas_process("worker", settings)
    processes.append(worker)
    path = make_song(tmp_path / "gone.mp3", seconds=2, seed=50)
    kept = client.submit(make_song(tmp_path / "kept.mp3", seconds=1, seed=51))["hash"]
    h = client.submit(path)["hash"]
    assert wait_until(lambda: client.status(h)["state"] == client.status(kept)["state"] == "done", 120, "the jobs")
    assert objects(settings, h) == sorted(
        f"output/{h}-{t}{ext}" for t in ("drums", "bass", "other", "vocals") for ext in (".mp3", ".peaks.json")
    )

    assert client.delete(h) == {"hash": h, "removed": True, "objects": 8}
    assert objects(settings, h) == []
    with pytest.raises(ApiError) as gone:
        client.status(h)
    assert gone.value.status == 404
    assert [s["hash"] for s in client.songs()["songs"]] == [kept]  # the other song is untouched
    assert objects(settings, kept) and not redis_client.exists(keys.job_key(h))
    with pytest.raises(ApiError) as again:
        client.delete(h)
    assert again.value.status == 404
    # the song is unknown again: sent once more, it is separated anew
    assert client.submit(path)["reason"] == "Song enqueued for separation"

    # a song still waiting is not deleted from under its job
    worker.terminate()
    worker.wait(30)
    waiting = client.submit(make_song(tmp_path / "waiting.mp3", seconds=1, seed=52))["hash"]
    r = requests.delete(f"{client.base}/apiv1/song/{waiting}", timeout=10)
    assert r.status_code == 409 and "queued" in r.json()["error"]
    assert client.status(waiting)["state"] == "queued" and waiting in client.queue()


def test_each_key_lists_and_deletes_only_its_own_songs(settings, processes, tmp_path, redis_client):
    start_rest(settings.with_(api_keys=("key-a", "key-b")), processes)
    processes.append(msaas_process("worker", settings.with_(api_keys=("key-a", "key-b"))))
    base = f"127.0.0.1:{settings.port}"
    a, b = Client(base, api_key="key-a"), Client(base, api_key="key-b")
    song = make_song(tmp_path / "shared.mp3", seconds=1, seed=60)
    ha, hb = a.submit(song)["hash"], b.submit(song)["hash"]
    assert wait_until(lambda: a.status(ha)["state"] == b.status(hb)["state"] == "done", 120, "the jobs")
    assert [s["hash"] for s in a.songs()["songs"]] == [ha] and [s["hash"] for s in b.songs()["songs"]] == [hb]
    with pytest.raises(ApiError) as other:
        a.delete(hb)
    assert other.value.status == 404 and b.status(hb)["state"] == "done"
    a.delete(ha)
    assert a.songs()["total"] == 0 and b.songs()["total"] == 1
    assert requests.get(f"http://{base}/apiv1/songs", timeout=10).status_code == 401
    indexes = sorted(k for k in redis_client.keys(f"{keys.SONGS_PREFIX}*"))
    assert len(indexes) == 1 and json.dumps(indexes) != json.dumps([keys.songs_key(None)])
