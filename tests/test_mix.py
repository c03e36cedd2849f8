"""GET /apiv1/mix and `msaas mix`: a song's stems mixed back with a gain per track, against real processes."""

import subprocess

import numpy as np
import pytest
import requests

from conftest import BIN, make_song, msaas_process, snr_db, start_rest, wait_until
from msaas import audio, mixing


@pytest.fixture
def done(settings, processes, tmp_path):
    """A client, and a function that separates a song with the tiny model in a format and returns its hash."""
    client = start_rest(settings, processes)
    processes.append(msaas_process("worker", settings))

    def separate(fmt: str, seconds: float = 3.3, seed: int = 14) -> str:
        h = client.submit(make_song(tmp_path / f"s{seed}.mp3", seconds=seconds, seed=seed), format=fmt)["hash"]
        assert wait_until(lambda: client.status(h)["state"] == "done", 120, "the job")
        return h

    return client, separate


def stems_of(client, h, tmp_path, ext):
    return {t: audio.decode(client.download(h, t, tmp_path / f"{t}.{ext}"))[0] for t in client.status(h)["tracks"]}


def test_the_mix_is_the_sum_of_the_stems_with_their_gains(done, tmp_path):
    client, separate = done
    h = separate("flac")
    stems = stems_of(client, h, tmp_path, "flac")
    mixed, _ = audio.decode(client.mix(h, {"vocals": 0, "drums": 1.5}, tmp_path / "karaoke.flac"))
    expected = np.clip(1.5 * stems["drums"] + stems["bass"] + stems["other"], -1, 1)
    assert mixed.shape == expected.shape  # exact length: the song's
    assert 10 * np.log10(((mixed - expected) ** 2).sum() / (expected**2).sum()) < -60
    silent, _ = audio.decode(client.mix(h, dict.fromkeys(stems, 0), tmp_path / "silent.flac"))
    assert silent.shape == expected.shape and not silent.any()  # everything muted: silence, of the song's length
    # from the command line, the same file
    out = tmp_path / "cli.flac"
    run = subprocess.run(
        [str(BIN / "msaas"), "mix", h, "--vocals", "0", "--drums", "1.5", "--out", str(out), "--server", client.base],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert np.array_equal(audio.decode(out)[0], mixed)


def test_an_mp3_mix_is_exact_in_length_and_in_time(done, tmp_path):
    client, separate = done
    h = separate("mp3", seed=15)
    stems = stems_of(client, h, tmp_path, "mp3")
    mixed, _ = audio.decode(client.mix(h, {"vocals": "0"}, tmp_path / "karaoke.mp3"))
    expected = stems["drums"] + stems["bass"] + stems["other"]
    assert mixed.shape == expected.shape
    in_time = snr_db(expected, mixed)
    assert in_time > 15 and in_time > snr_db(expected[:, 1:], mixed[:, :-1]) + 3  # lag 0, through one more MP3 encoding


@pytest.mark.parametrize(
    "query, words",
    [("kazoo=1", "no track 'kazoo'"), ("vocals=9", "from 0 to 4"), ("vocals=abc", "from 0 to 4"), ("vocals=nan", "from 0")],
)
def test_bad_gains_are_a_clear_400(done, query, words):
    client, separate = done
    h = separate("wav", seconds=1.2, seed=16)
    response = requests.get(f"{client.base}/apiv1/mix/{h}?{query}", timeout=30)
    assert response.status_code == 400 and words in response.json()["error"]


def test_gains_default_to_one_and_silence_keeps_the_length():
    assert mixing.parse_gains({"vocals": "0.5"}, ["drums", "vocals"]) == {"drums": 1.0, "vocals": 0.5}
    assert mixing.parse_gains({}, ["a"]) == {"a": 1.0}
