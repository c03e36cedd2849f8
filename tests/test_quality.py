"""Real stems through the whole service: the bundled Spleeter model, MP3 in, MP3 stems out, SDR against the known sources."""

import numpy as np
import pytest
from test_spleeter import sdr

from conftest import msaas_process, wait_http
from msaas import audio, models
from msaas.client import Client
from msaas.embedded import choose_default_model
from synth import SR, normalized, song

pytestmark = pytest.mark.slow


def lag(estimate: np.ndarray, reference: np.ndarray, span: int = 2000) -> int:
    """The shift (in samples) that best aligns estimate with reference."""
    n = len(reference)
    spectrum = np.fft.rfft(estimate, 2 * n) * np.conj(np.fft.rfft(reference, 2 * n))
    corr = np.fft.irfft(spectrum)
    candidates = np.concatenate([corr[: span + 1], corr[-span:]])
    best = int(np.argmax(candidates))
    return best if best <= span else best - len(candidates)


@pytest.mark.parametrize(
    "text,voice,seed,measured_gain",
    [  # measured_gain: the SDR improvement this mix gets (dB), measured at the commit that set it; asserted within 4 dB
        ("Separation as a service: send the song, get the stems back.", "en", 11, 23.3),
        ("Une voix française au-dessus des instruments.", "fr", 12, 26.9),
    ],
)
def test_spleeter_stems_through_the_service_are_real_and_sample_exact(
    settings, redis_client, processes, tmp_path, text, voice, seed, measured_gain
):
    settings = settings.with_(demucs_model=models.SPLEETER, demucs_repo=None, max_upload_bytes=20 * 1024 * 1024)
    processes.append(msaas_process("worker", settings))
    rest = msaas_process("rest", settings)
    processes.append(rest)
    wait_http(f"http://127.0.0.1:{settings.port}/readyz", proc=rest)

    sources = normalized(song(15, text, seed=seed, voice_name=voice))
    mix = sum(sources.values())
    upload = tmp_path / "mix.mp3"
    audio.encode(upload, mix, SR, "mp3", 320)
    heard, _ = audio.decode(upload)  # what the service gets: the mix through MP3

    stems = Client(f"127.0.0.1:{settings.port}").separate(upload, tmp_path / "out")
    assert sorted(stems) == ["accompaniment", "vocals"]
    vocals, rate = audio.decode(stems["vocals"])
    accompaniment, _ = audio.decode(stems["accompaniment"])
    assert rate == SR and vocals.shape == heard.shape == accompaniment.shape

    truth = sources["vocals"]
    gain = sdr(vocals, truth) - sdr(heard, truth)
    print(f"vocals SDR: mixture {sdr(heard, truth):.1f} dB -> stem {sdr(vocals, truth):.1f} dB ({gain:+.1f} dB)")
    assert gain >= measured_gain - 4 and sdr(vocals, truth) >= 4.5  # a regression of a few dB is caught, not 15
    assert lag(vocals[0], truth[0]) == 0 and lag(accompaniment[0], (mix - truth)[0]) == 0


def test_without_htdemucs_weights_the_embedded_default_serves_spleeter(tmp_path, settings):
    model, note = choose_default_model(settings.with_(demucs_model="htdemucs", demucs_repo=tmp_path))
    assert model == models.SPLEETER
    assert "msaas fetch-model htdemucs" in note and "DEMUCS_REPO" in note


def test_available_weights_keep_the_chosen_default(settings):
    assert choose_default_model(settings) == ("tiny", None)
