"""JOBS_IN_FLIGHT: one worker process separating several songs at once, their chunks sharing the model's batches; real
worker processes, a real redis-server, the tiny model."""

import signal

import numpy as np
import pytest

from conftest import TINY, make_song, msaas_process, start_rest, wait_until
from msaas import audio
from msaas.separation import Inference, load_separator, separate_file

pytestmark = pytest.mark.slow


def test_a_worker_separates_songs_in_flight_together_and_each_as_alone(settings, processes, tmp_path, redis_client):
    settings = settings.with_(jobs_in_flight=3, demucs_batch=4, torch_threads=2)
    client = start_rest(settings, processes)
    log = tmp_path / "worker.log"
    processes.append(msaas_process("worker", settings, log=log))
    wait_until(lambda: "3 song(s) in flight at once" in log.read_text(), 60, "the worker")
    songs = [make_song(tmp_path / f"s{k}.mp3", seconds=s, seed=40 + k) for k, s in enumerate((21.0, 17.5, 19.2))]
    hashes = [client.submit(song, format="flac")["hash"] for song in songs]
    assert wait_until(lambda: all(client.status(h)["state"] == "done" for h in hashes), 240, "the jobs")
    statuses = [client.status(h) for h in hashes]
    assert max(s["started"] for s in statuses) < min(s["finished"] for s in statuses)  # all three ran at once
    alone = load_separator(TINY, settings.demucs_repo, "cpu", Inference(batch=4))
    for k, (song, h) in enumerate(zip(songs, hashes, strict=True)):
        (tmp_path / f"alone{k}").mkdir()
        expected = separate_file(alone, song, tmp_path / f"alone{k}", audio.OutputOptions("flac")).stems
        for track, path in expected.items():
            got = audio.decode(client.download(h, track, tmp_path / f"got{k}" / f"{track}.flac"))[0].astype(np.float64)
            want = audio.decode(path)[0].astype(np.float64)
            assert got.shape == want.shape
            error = ((got - want) ** 2).sum() / (want**2).sum()
            assert error == 0 or 10 * np.log10(error) < -80, (k, track, 10 * np.log10(error))


def test_sigterm_past_the_grace_puts_every_song_in_flight_back(settings, processes, tmp_path, redis_client):
    settings = settings.with_(jobs_in_flight=2)
    client = start_rest(settings, processes)
    hashes = [client.submit(make_song(tmp_path / f"s{k}.mp3", seconds=30, seed=50 + k))["hash"] for k in range(2)]
    log = tmp_path / "worker.log"
    worker = msaas_process("worker", settings.with_(worker_grace_s=0.5), log=log)
    processes.append(worker)
    wait_until(lambda: all(client.status(h).get("stage") == "separating" for h in hashes), 120, "both to separate")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0, log.read_text()[-4000:]
    for h in hashes:
        status = client.status(h)
        assert status["state"] == "queued" and status["attempts"] == 0, status
    assert sorted(client.queue()) == sorted(hashes)
    assert log.read_text().count("put back in the queue (the worker is stopping)") == 2
