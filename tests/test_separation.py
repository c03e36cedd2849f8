"""Real Demucs code on a small model saved in demucs' format and loaded the way production loads it."""

import threading

import numpy as np
import pytest
import torch

from conftest import TINY, TINY_FT, make_song
from msaas import audio, models
from msaas.separation import ModelUnavailable, StreamResampler, WholeSong, load_separator, separate_all, separate_file


@pytest.fixture(scope="module")
def tiny(tiny_repo):
    return load_separator(TINY, tiny_repo, "cpu")


def test_model_from_a_local_directory_loads_through_get_model(tiny, tiny_repo):
    assert tiny.tracks == ["drums", "bass", "other", "vocals"] and tiny.samplerate == 44100
    assert models.available(TINY, tiny_repo)
    assert TINY in models.catalog(tiny_repo)


def test_every_stem_has_the_inputs_length_and_rate(tiny, tmp_path):
    song = make_song(tmp_path / "s.wav", seconds=3.3, rate=48000, fmt="wav")
    stems = separate_file(tiny, song, tmp_path, audio.OutputOptions("mp3")).stems
    assert list(stems) == tiny.tracks
    for path in stems.values():
        info = audio.probe(path)
        assert (info.samples, info.sample_rate) == (int(3.3 * 48000), 48000)


def test_separation_is_deterministic(tiny, tmp_path, song):
    a = separate_file(tiny, song, tmp_path / "a" if (tmp_path / "a").mkdir() is None else None, audio.OutputOptions("flac")).stems
    b = separate_file(tiny, song, tmp_path / "b" if (tmp_path / "b").mkdir() is None else None, audio.OutputOptions("flac")).stems
    for track in a:
        assert np.array_equal(audio.decode(a[track])[0], audio.decode(b[track])[0])


def test_stems_sum_back_to_the_song(tmp_path, song):
    """Spleeter's two masks add up to one everywhere (its "average" extension above 11 kHz too), so its stems are the song
    split in two: their sum is the song, to the 16-bit rounding of the stems. (The tiny Demucs's random weights make no
    such promise; its stems are checked against demucs' own apply_model in test_split.py and below.)"""
    sep = load_separator(models.SPLEETER, None, "cpu")
    stems = separate_file(sep, song, tmp_path, audio.OutputOptions("flac")).stems
    assert list(stems) == ["vocals", "accompaniment"]
    parts = [audio.decode(p)[0] for p in stems.values()]
    mix, _ = audio.decode(song)
    total = parts[0] + parts[1]
    assert total.shape == mix.shape
    assert min(np.abs(p).max() for p in parts) > 0.01  # both stems hold sound: not the song and silence
    residual_db = 10 * np.log10(((total - mix) ** 2).mean() / (mix**2).mean())
    print(f"stems' sum against the song: {residual_db:.1f} dB")
    assert residual_db < -75


def test_two_stems_gives_the_track_and_the_rest(tiny, tmp_path, song):
    stems = separate_file(tiny, song, tmp_path, audio.OutputOptions("wav", two_stems="vocals")).stems
    assert list(stems) == ["vocals", "no_vocals"]
    four = separate_file(
        tiny, song, tmp_path / "four" if (tmp_path / "four").mkdir() is None else None, audio.OutputOptions("wav")
    ).stems
    rest = sum(audio.decode(four[t])[0] for t in ("drums", "bass", "other"))
    assert np.abs(audio.decode(stems["no_vocals"])[0] - np.clip(rest, -1, 1)).max() < 2e-4


def test_progress_is_reported_per_stage(tiny, tmp_path, song):
    seen = []
    separate_file(tiny, song, tmp_path, progress=lambda stage, f: seen.append((stage, f)))
    stages = [s for s, _ in seen]
    assert stages[0] == "decoding" and "separating" in stages and stages[-1] == "encoding"
    assert max(f for s, f in seen if s == "separating") == pytest.approx(1.0)


class Stop(BaseException):
    """As the worker's GraceOver: raised from a progress report, not an Exception."""


@pytest.mark.parametrize("stage", ["separating", "encoding"])
def test_a_separation_stopped_at_its_progress_leaves_no_encoder_running(tiny, tmp_path, stage):
    """A worker stopping mid-song exits right after: an encoder thread still writing then would be torn down inside
    LAME or PyAV as the interpreter ends (the process aborts), and write into a deleted directory."""
    song = make_song(tmp_path / "s.wav", seconds=12, fmt="wav")

    stopped = []

    def progress(at: str, fraction: float) -> None:  # as the worker's: once stopped, every report raises
        if stopped or at == stage and (fraction > 0.2 or at == "encoding"):
            stopped.append(at)
            raise Stop

    with pytest.raises(Stop):
        separate_file(tiny, song, tmp_path / "out" if (tmp_path / "out").mkdir() is None else None, progress=progress)
    assert stopped[0] == stage
    assert not [t.name for t in threading.enumerate() if t.name.startswith(("encoder-", "mp3"))]


def test_an_unknown_model_is_a_clear_error(tiny_repo):
    with pytest.raises(ModelUnavailable, match="unknown model 'nope'"):
        load_separator("nope", tiny_repo, "cpu")


def test_a_model_missing_from_the_directory_is_a_clear_error(tmp_path):
    (tmp_path / "htdemucs.yaml").write_text("models: ['955717e8']\n")
    assert not models.available("htdemucs", tmp_path)
    with pytest.raises(ModelUnavailable, match="htdemucs"):
        load_separator("htdemucs", tmp_path, "cpu")


class Identity(WholeSong):
    """A separator whose one stem is the mix itself: checks the audio path around any model."""

    name, tracks, samplerate = "identity", ["all"], 44100
    device, forward_s, can_split = torch.device("cpu"), 0.0, False

    def warm_up(self):
        pass

    def stream(self, mix, emit, progress):
        for start in range(0, mix.shape[-1], 30000):  # blocks of any size, as real separators emit
            emit(mix[None, :, start : start + 30000].clone())
        progress(1.0)


@pytest.mark.parametrize("rate", [44100, 48000, 22050])
def test_the_audio_path_keeps_length_and_alignment_to_the_sample(tmp_path, rate):
    n = int(rate * 2.5) + 17
    x = (0.02 * np.sin(np.arange(n) / 7.0)).astype(np.float32)[None].repeat(2, 0)
    for at in (rate // 3, rate, 2 * rate):
        x[:, at] = 0.9  # clicks to align by
    song = tmp_path / "song.mp3"
    audio.encode(song, x, rate, "mp3")
    decoded, _ = audio.decode(song)
    stems = separate_file(Identity(), song, tmp_path, audio.OutputOptions("mp3")).stems
    stem, stem_rate = audio.decode(stems["all"])
    assert stem_rate == rate and stem.shape == decoded.shape
    window = slice(rate - 500, rate + 500)
    lag = int(np.argmax(np.correlate(stem[0, window], decoded[0, window], "full"))) - 999
    assert lag == 0


def _error_db(estimate, reference) -> float:
    error = float(((estimate - reference) ** 2).sum())
    return 10 * np.log10(max(error, 1e-30) / float((reference**2).sum()))


def _apply_model_whole(separator, mix):
    """demucs' own whole-song path, as its command line runs it (no random shift)."""
    from demucs.apply import apply_model

    ref = mix.mean(0)
    mean, std = ref.mean(), ref.std().clamp_min(1e-8)
    with torch.inference_mode():
        out = apply_model(separator.model, ((mix - mean) / std)[None], shifts=0, split=True, overlap=0.25)[0]
    return out * std + mean


def test_streamed_demucs_equals_a_whole_song_apply_model(tiny):
    mix = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 44100 * 15)).astype(np.float32) * 0.1)
    blocks = []
    tiny.stream(mix.clone(), blocks.append)
    assert len(blocks) > 3 and sum(b.shape[-1] for b in blocks) == mix.shape[-1]
    assert _error_db(torch.cat(blocks, -1), _apply_model_whole(tiny, mix)) < -60


def test_a_weighted_bag_of_models_streams_like_apply_model(tiny_repo, tmp_path):
    import shutil

    import yaml

    from conftest import build_tiny_model

    repo = build_tiny_model(tmp_path / "bag", name="one")
    for f in tiny_repo.glob("tiny0001*.th"):
        shutil.copy(f, repo / f.name.replace("tiny0001", "tiny0002"))
    (repo / "pair.yaml").write_text(yaml.safe_dump({"models": ["tiny0001", "tiny0002"], "weights": [[1, 0, 2, 1], [1, 1, 0, 1]]}))
    pair = load_separator("pair", repo, "cpu")
    mix = torch.from_numpy(np.random.default_rng(2).standard_normal((2, 44100 * 9)).astype(np.float32) * 0.1)
    assert _error_db(separate_all(pair, mix), _apply_model_whole(pair, mix)) < -60


@pytest.mark.parametrize("old,new", [(48000, 44100), (44100, 48000), (22050, 44100), (44100, 22050), (32000, 44100)])
def test_the_stream_resampler_equals_resampling_the_whole_signal(old, new):
    import julius

    x = torch.from_numpy(np.random.default_rng(3).standard_normal((2, old * 3 + 123)).astype(np.float32))
    length = int(x.shape[-1] * new / old)
    whole = julius.resample_frac(x, old, new, output_length=length)
    resampler = StreamResampler(old, new, length)
    sizes = np.random.default_rng(4).integers(1, 40000, size=100)
    pieces, at = [], 0
    for size in sizes:
        if at >= x.shape[-1]:
            break
        pieces.append(resampler.push(x[..., at : at + size]))
        at += size
    pieces.append(resampler.flush())
    streamed = torch.cat(pieces, -1)
    assert streamed.shape == whole.shape
    assert _error_db(streamed, whole) < -100


def test_a_bag_of_specialists_runs_only_the_asked_tracks_and_gives_it_exactly(tiny_repo):
    """htdemucs_ft's shape on a tiny bag: `two_stems` runs only the specialist of that track (half the forward passes
    here, a quarter for htdemucs_ft), and that track is bit for bit the whole bag's."""
    bag = load_separator(TINY_FT, tiny_repo, "cpu")
    vocals = bag.for_track("vocals")
    assert vocals is not None and len(vocals._members()[0]) == 1 and vocals.tracks == bag.tracks
    mix = torch.randn(2, 44100 * 5) * 0.1
    whole, alone = separate_all(bag, mix), separate_all(vocals, mix)
    assert torch.equal(alone[3], whole[3]) and torch.equal(separate_all(bag.for_track("drums"), mix)[0], whole[0])
    assert not torch.allclose(alone[0], whole[0])  # the other tracks are the specialist's own, for the rest's sum only
    assert load_separator(TINY, tiny_repo, "cpu").for_track("vocals") is None  # one model: nothing to leave out
