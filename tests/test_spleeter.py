"""The bundled Spleeter 2-stem model: safe loading, exact windowing, real separation (SDR against known sources)."""

import pickle
import zipfile

import numpy as np
import pytest
import torch

from msaas import models
from msaas.separation import separate_all
from msaas.separation.spleeter import CHECKPOINTS, HOP, N_FFT, PATCH, SpleeterSeparator, UNet, load_checkpoint
from synth import normalized, song


def sdr(estimate: np.ndarray, reference: np.ndarray) -> float:
    return float(10 * np.log10((reference**2).sum() / ((reference - estimate) ** 2).sum()))


@pytest.fixture(scope="session")
def spleeter():
    return SpleeterSeparator("cpu")


@pytest.fixture(scope="session")
def known_song():
    """20 s: a voice over synthesized drums, bass and chords; the sources are the truth."""
    sources = normalized(song(20, "I am the voice you should find in the vocals stem. Listen to me.", seed=3))
    return sources, sum(sources.values())


def test_the_weights_ship_with_the_project_and_are_available_offline():
    folder = models.spleeter_checkpoints()
    assert folder is not None and all((folder / name).is_file() for name in CHECKPOINTS)
    assert models.available(models.SPLEETER)


def test_every_layer_of_the_unet_matches_the_checkpoints():
    weights = load_checkpoint(models.spleeter_checkpoints() / CHECKPOINTS[0])
    state = {k: v for k, v in UNet().state_dict().items() if not k.endswith("num_batches_tracked")}  # a counter, not a weight
    assert set(weights) == set(state)
    assert all(weights[k].shape == state[k].shape for k in state)


def test_a_checkpoint_that_runs_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.ckpt"
    torch.save({"down1_conv.1.weight": Evil()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)
    assert zipfile.is_zipfile(path)


def test_windowed_separation_equals_a_whole_song_pass(spleeter, known_song):
    _, mix = known_song
    x = torch.from_numpy(mix)
    windowed = separate_all(spleeter, x)
    with torch.inference_mode():
        spec = torch.stft(x, N_FFT, HOP, window=spleeter.window, center=True, pad_mode="constant", return_complex=True)
        masks = torch.cat([spleeter.masks(spec[..., p : p + PATCH]) for p in range(0, spec.shape[-1], PATCH)], dim=-1)
        whole = torch.stack([torch.istft(m * spec, N_FFT, HOP, window=spleeter.window, length=x.shape[-1]) for m in masks])
    error_db = 10 * np.log10(((windowed - whole) ** 2).sum().item() / (whole**2).sum().item())
    assert error_db < -60


def test_stems_sum_back_to_the_mix(spleeter, known_song):
    _, mix = known_song
    stems = separate_all(spleeter, torch.from_numpy(mix)).numpy()
    assert np.abs(stems.sum(0) - mix).max() < 1e-4


def test_vocals_come_out_of_the_mix(spleeter, known_song):
    sources, mix = known_song
    vocals, accompaniment = separate_all(spleeter, torch.from_numpy(mix)).numpy()
    truth_vocals = sources["vocals"]
    truth_accompaniment = mix - truth_vocals
    assert sdr(vocals, truth_vocals) - sdr(mix, truth_vocals) > 20  # measured: -16.8 dB -> +7.2 dB, a 24 dB gain
    assert sdr(accompaniment, truth_accompaniment) > sdr(mix, truth_accompaniment) + 5
