"""Each stem's waveform (msaas/peaks.py): taken from the blocks as they are encoded, stored beside the stem, served at
GET /apiv1/peaks, gone with the stem."""

import math

import numpy as np
import pytest
import requests

from conftest import make_song, msaas_process, start_rest, wait_until
from msaas import audio, peaks
from msaas.client import ApiError


def reference(wave: np.ndarray, span: int) -> list[int]:
    """The peaks of a whole stem at once, the slow and obvious way."""
    loudest = np.abs(wave).max(axis=0)
    return [math.ceil(min(1.0, float(loudest[k : k + span].max())) * peaks.SCALE) for k in range(0, loudest.size, span)]


@pytest.mark.parametrize("rate", [44100, 48000, 22050])
def test_peaks_fed_in_blocks_of_any_size_are_the_peaks_of_the_whole(rate):
    rng = np.random.default_rng(rate)
    samples = rate * 3 + 123  # a last span cut short
    wave = (rng.standard_normal((2, samples)) * np.linspace(0, 0.6, samples)).astype(np.float32)
    wave[:, rate : rate + rate // 2] = 0  # half a second of silence
    wave[1, 2 * rate] = 1.7  # one sample beyond full scale, in one channel
    p = peaks.Peaks(rate)
    at = 0
    while at < samples:
        n = int(rng.integers(1, 5000))
        p.add(wave[:, at : at + n])
        at += n
    out = p.finish()
    assert out["rate"] == rate and out["samples"] == samples and out["span"] == rate // peaks.PEAKS_PER_S
    assert len(out["peaks"]) == math.ceil(samples / out["span"])
    assert out["peaks"] == reference(wave, out["span"])
    silent = range(rate // out["span"] + 1, (rate + rate // 2) // out["span"])
    assert all(out["peaks"][k] == 0 for k in silent) and max(out["peaks"]) == peaks.SCALE


@pytest.fixture
def client(settings, processes, redis_client):
    c = start_rest(settings, processes)
    processes.append(msaas_process("worker", settings))
    return c


@pytest.mark.parametrize("fmt, two_stems", [("mp3", None), ("flac", "vocals")])
def test_every_stem_gets_peaks_as_long_as_it_is_and_they_go_with_it(client, settings, tmp_path, fmt, two_stems):
    song = make_song(tmp_path / "song.mp3", seconds=3.3, seed=21)
    choices = {"format": fmt, **({"two_stems": two_stems} if two_stems else {})}
    h = client.submit(song, **choices)["hash"]
    assert wait_until(lambda: client.status(h)["state"] == "done", 120, "the job")
    status = client.status(h)
    assert status["peaks"] == {t: f"/apiv1/peaks/{h}/{t}" for t in status["tracks"]}
    assert len(status["tracks"]) == (2 if two_stems else 4)
    for track in status["tracks"]:
        wave, rate = audio.decode(client.download(h, track, tmp_path / f"{track}.{fmt}"))
        waveform = client.peaks(h, track)
        assert (waveform["rate"], waveform["samples"]) == (rate, wave.shape[1])  # the stem's own duration
        assert len(waveform["peaks"]) == math.ceil(wave.shape[1] / waveform["span"])
        # the stem's envelope: what was encoded, so within what encoding changed (exact but for 16-bit rounding in FLAC)
        expected = np.array(reference(wave, waveform["span"]))
        got = np.array(waveform["peaks"])
        assert expected.max() >= 3  # the stem is not silent, so the comparison can fail
        tolerance = 1 if fmt == "flac" else 1 + 0.2 * expected  # MP3's own error, around the envelope's value
        assert (np.abs(got - expected) <= tolerance).all(), (track, np.abs(got - expected).max(), expected.max())
    removed = status["tracks"][0]
    assert requests.delete(f"{client.base}/apiv1/track/{h}/{removed}", timeout=10).status_code == 200
    with pytest.raises(ApiError) as gone:
        client.peaks(h, removed)
    assert gone.value.status == 404  # the track is forgotten, and its peaks are out of the store
    stored = sorted(p.name for p in (settings.storage_dir / "output").glob(f"{h}-*"))
    assert stored == sorted(f"{h}-{t}{ext}" for t in status["tracks"][1:] for ext in (f".{fmt}", ".peaks.json"))


def test_peaks_of_an_unknown_track_or_song_are_404_json(client, tmp_path):
    r = requests.get(f"{client.base}/apiv1/peaks/{'0' * 56}/vocals", timeout=10)
    assert r.status_code == 404 and "unknown song" in r.json()["error"]
    h = client.submit(make_song(tmp_path / "s.mp3", seconds=2))["hash"]
    assert wait_until(lambda: client.status(h)["state"] == "done", 120, "the job")
    for track in ("guitar", "..", "vocals.peaks.json"):
        r = requests.get(f"{client.base}/apiv1/peaks/{h}/{track}", timeout=10)
        assert r.status_code == 404 and "error" in r.json()
