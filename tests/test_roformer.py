"""The RoFormer engine on small random-weight checkpoints saved as the published ones are (conftest.TINY_ROFORMERS),
loaded through the production path (load_separator, the model directory)."""

import json
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import BIN, TINY_CHUNK, make_song, snr_db, start_rest, wait_until
from msaas import audio, models
from msaas.separation import ModelUnavailable, SongStream, load_separator, separate_all, separate_file
from msaas.separation.roformer_nets import mel_bands

BS, MEL = "tiny-bs-roformer", "tiny-mel-roformer"

# What librosa 0.11.0 gives for `filters.mel(sr=44100, n_fft=2048, n_mels=60) > 0` (first and last bin forced in, as
# the reference model code does), per band: the bands of the published mel-band RoFormers. mel_bands also matched it for
# 48 kHz and for 48 and 64 bands when it was written.
LIBROSA_60_BANDS = [7, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 9, 9, 9, 10, 10, 11, 13, 13, 13, 15, 16, 17, 19, 20]
LIBROSA_60_BANDS += [20, 22, 24, 26, 28, 29, 31, 33, 36, 39, 41, 44, 47, 50, 54, 57, 61, 66, 71, 76, 80, 86, 93, 99, 105]
LIBROSA_60_BANDS += [113, 122, 130]


@pytest.fixture(scope="module")
def bs(tiny_repo):
    return load_separator(BS, tiny_repo, "cpu")


@pytest.fixture(scope="module")
def mel(tiny_repo):
    return load_separator(MEL, tiny_repo, "cpu")


def test_checkpoints_have_the_published_layout_and_load_with_every_key(bs, mel, tiny_repo):
    state = torch.load(tiny_repo / f"{BS}.ckpt", weights_only=True)
    for key in (  # Music-Source-Separation-Training's module paths, which the published checkpoints carry
        "layers.0.0.layers.0.0.rotary_embed.freqs",
        "layers.0.0.layers.0.0.to_qkv.weight",
        "layers.0.0.layers.0.0.to_gates.bias",
        "layers.0.0.layers.0.0.to_out.0.weight",
        "layers.0.1.layers.0.1.net.4.bias",
        "final_norm.gamma",
        "band_split.to_features.16.0.gamma",
        "mask_estimators.0.to_freqs.0.0.2.weight",  # mask_estimator_depth 2: one hidden layer for band-split
    ):
        assert key in state, key
    assert "layers.0.0.norm.gamma" not in state  # band-split's transformers have no output norm
    state = torch.load(tiny_repo / f"{MEL}.ckpt", weights_only=True)
    assert "layers.0.0.norm.gamma" in state and "final_norm.gamma" not in state
    assert "mask_estimators.3.to_freqs.7.0.4.weight" in state  # mask_estimator_depth 2: two hidden layers for mel-band
    assert bs.tracks == ["vocals", "instrumental"] and mel.tracks == ["bass", "drums", "vocals", "other"]
    assert bs.samplerate == 44100 and not bs.can_split
    assert (
        models.read_roformer_config(tiny_repo / f"{BS}.yaml")["model"]["freqs_per_bands"][-1] == 33
    )  # the !!python/tuple tag, read safely


def test_mel_bands_are_librosas():
    bands = mel_bands(44100, 2048, 60)
    assert bands.sum(1).tolist() == LIBROSA_60_BANDS and bands.any(0).all()


def test_a_checkpoint_that_does_not_match_its_config_is_a_clear_error(tiny_repo, tmp_path):
    (tmp_path / "odd.yaml").write_text((tiny_repo / f"{MEL}.yaml").read_text())
    (tmp_path / "odd.ckpt").write_bytes((tiny_repo / f"{BS}.ckpt").read_bytes())
    with pytest.raises(ModelUnavailable, match="odd.ckpt does not load with odd.yaml"):
        load_separator("odd", tmp_path, "cpu")


def test_a_named_model_without_its_weights_says_how_to_fetch_them(tmp_path):
    assert not models.available("bs-roformer-vocals", tmp_path)
    with pytest.raises(ModelUnavailable, match="msaas fetch-model bs-roformer-vocals DIR"):
        load_separator("bs-roformer-vocals", tmp_path, "cpu")


def reference_demix(sep, mix: torch.Tensor) -> torch.Tensor:
    """The whole song in memory, cut as Music-Source-Separation-Training's demix cuts it (batch size 1): mirrored by the
    chunks' overlap at both ends, chunks every chunk_size // num_overlap, linear fades over a tenth of a chunk (none at
    the first start and the last end), the weighted sum over the weights' sum."""
    size, step = sep.chunk, sep.chunk // sep.overlap
    border, n = size - step, mix.shape[-1]
    padded = F.pad(mix[None], (border, border), mode="reflect")[0] if n > 2 * border else mix
    fade = size // 10
    window = torch.ones(size)
    window[:fade], window[-fade:] = torch.linspace(0, 1, fade), torch.linspace(1, 0, fade)
    result = torch.zeros(sep.net.mask_estimators.__len__(), 2, padded.shape[-1])
    counter = torch.zeros(padded.shape[-1])
    with torch.inference_mode():
        for i in range(0, padded.shape[-1], step):
            part = padded[:, i : i + size]
            length = part.shape[-1]
            if length < size:
                part = F.pad(part[None], (0, size - length), mode="reflect" if length > size // 2 else "constant")[0]
            w = window.clone()
            if i == 0:
                w[:fade] = 1
            if i + step >= padded.shape[-1]:
                w[-fade:] = 1
            result[..., i : i + length] += sep.net(part[None])[0, ..., :length] * w[:length]
            counter[i : i + length] += w[:length]
    out = result / counter
    return out[..., border:-border] if n > 2 * border else out


def db(reference: torch.Tensor, other: torch.Tensor) -> float:
    return float(10 * torch.log10(((other - reference) ** 2).sum() / (reference**2).sum()))


@pytest.mark.parametrize("name", [BS, MEL])
def test_streamed_from_the_file_block_by_block_equals_the_whole_song_pass(name, tiny_repo, tmp_path):
    sep = load_separator(name, tiny_repo, "cpu")
    path = make_song(tmp_path / "s.wav", seconds=2.3, seed=7, fmt="wav")
    song = SongStream(path, sep.samplerate)
    whole = torch.cat(list(song.blocks()), dim=-1)
    expected = reference_demix(sep, whole)
    blocks: list[torch.Tensor] = []
    sep.read(path).separate(blocks.append, lambda f: None)
    streamed = torch.cat(blocks, dim=-1)
    assert len(blocks) > 10 and streamed.shape[-1] == whole.shape[-1]  # emitted as chunks finish, every sample once
    assert db(expected[0], streamed[0]) < -60
    if name == BS:  # the target, and the song minus it
        assert torch.allclose(streamed.sum(0), whole, atol=1e-5)
    else:
        assert db(expected, streamed) < -60


def test_a_song_shorter_than_two_overlaps_and_one_of_exactly_a_chunk(bs):
    # the last: not mirrored, its final chunk shorter than its fade-in (one step and 500 samples)
    for n in (TINY_CHUNK // 3, TINY_CHUNK, TINY_CHUNK + 1, 3 * TINY_CHUNK // 2 + 7, TINY_CHUNK // 2 + 500):
        mix = torch.randn(2, n) * 0.1
        stems = separate_all(bs, mix)
        assert stems.shape == (2, 2, n) and torch.isfinite(stems).all()
        assert db(reference_demix(bs, mix)[0], stems[0]) < -60


def test_stems_through_the_service_are_exact_in_length_and_sum_to_the_song(settings, processes, tmp_path):
    from conftest import msaas_process

    client = start_rest(settings, processes)
    processes.append(msaas_process("worker", settings))
    said = subprocess.run(
        [str(BIN / "msaas"), "models", "--server", f"127.0.0.1:{settings.port}"], capture_output=True, text=True, timeout=60
    )
    listed = {m["name"]: m for m in json.loads(said.stdout)["models"]}  # the CLI's list is the API's
    assert listed[BS]["available"] and listed[BS]["engine"] == "roformer" and listed[BS]["tracks"] == ["vocals", "instrumental"]
    assert listed["bs-roformer-vocals"]["license"] and not listed["bs-roformer-vocals"]["available"]
    path = make_song(tmp_path / "s.mp3", seconds=3.1, rate=48000, seed=8)  # through both resamplers
    h = client.submit(path, model=BS, format="wav")["hash"]
    assert wait_until(lambda: client.status(h)["state"] in ("done", "failed"), 180, "the job")
    assert client.status(h)["state"] == "done", client.status(h)
    song, rate = audio.decode(path)
    stems = {}
    for track in ("vocals", "instrumental"):
        stems[track], stem_rate = audio.decode(client.download(h, track, tmp_path / f"{track}.wav"))
        assert stem_rate == rate and stems[track].shape == song.shape  # exact length, the song's rate
    together = stems["vocals"] + stems["instrumental"]
    # lag 0: the two add back to the song, but for what the way to 44.1 kHz and back drops above 22 kHz (one sample late
    # would be about 23 dB; it is about 79)
    assert snr_db(song, together) > 60 and snr_db(song[:, 1:], together[:, :-1]) < 30


def test_a_separate_file_run_gives_each_track_its_file(mel, tmp_path):
    path = make_song(tmp_path / "s.mp3", seconds=1.2, seed=9)
    report = separate_file(mel, path, tmp_path / "out" if (tmp_path / "out").mkdir() is None else None)
    assert list(report.stems) == mel.tracks
    for stem in report.stems.values():
        assert audio.probe(stem).samples == audio.probe(path).samples


@pytest.fixture
def hub(tmp_path):
    """torch.hub's cache (TORCH_HOME/hub) in a temporary directory, as a fresh worker without DEMUCS_REPO has it."""
    import torch.hub

    before = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torch" / "hub"))
    yield tmp_path / "torch"
    torch.hub.set_dir(before)


def test_a_named_roformer_is_downloaded_on_first_use_without_a_model_directory(tiny_repo, tmp_path, hub, monkeypatch):
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from conftest import free_port

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), functools.partial(Quiet, directory=str(tiny_repo)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        named = {**models.ROFORMERS["bs-roformer-vocals"], "checkpoint": f"{base}/{BS}.ckpt", "config": f"{base}/{BS}.yaml"}
        monkeypatch.setitem(models.ROFORMERS, "bs-roformer-vocals", named)
        assert not models.available("bs-roformer-vocals", None, hub)
        sep = load_separator("bs-roformer-vocals", None, "cpu")
        assert sep.tracks == ["vocals", "instrumental"] and models.available("bs-roformer-vocals", None, hub)
        assert sorted(p.name for p in models.roformer_cache(hub).iterdir()) == [
            "bs-roformer-vocals.ckpt",
            "bs-roformer-vocals.yaml",
        ]
    finally:
        server.shutdown()


def test_without_network_a_named_roformer_fails_at_once_saying_how_to_fetch_it(tmp_path, hub, monkeypatch):
    import time

    from conftest import free_port

    gone = f"http://127.0.0.1:{free_port()}"  # nothing listens: as a cluster without egress, or a host gone
    named = {**models.ROFORMERS["bs-roformer-vocals"], "checkpoint": f"{gone}/a.ckpt", "config": f"{gone}/a.yaml"}
    monkeypatch.setitem(models.ROFORMERS, "bs-roformer-vocals", named)
    started = time.monotonic()
    with pytest.raises(ModelUnavailable, match="could not be downloaded .*msaas fetch-model bs-roformer-vocals DIR"):
        load_separator("bs-roformer-vocals", None, "cpu")
    assert time.monotonic() - started < 15
    assert not list(models.roformer_cache(hub).glob("*"))  # nothing half-downloaded left to load


def test_the_song_is_read_block_by_block_and_held_a_chunk_at_a_time(tmp_path):
    """Mirrored, the RoFormer engine's view of a song stream: the song padded by reflection at both ends as a whole-song
    F.pad would pad it, while holding about one chunk of it, whatever the song's length."""
    from msaas.separation.roformer import Mirrored

    path = make_song(tmp_path / "s.wav", seconds=30, seed=13, fmt="wav")
    stream = SongStream(path, 44100)
    whole = torch.cat(list(stream.blocks()), dim=-1)
    size, step = 44100 * 2, 44100
    padded = F.pad(whole[None], (size - step, size - step), mode="reflect")[0]
    song = Mirrored(stream.blocks(), stream.length, size - step)
    for offset in range(0, padded.shape[-1], step):
        n = min(size, padded.shape[-1] - offset)
        assert torch.equal(song.padded(offset, n), padded[:, offset : offset + n])
    assert song.most < 2 * size  # not the song (30 s): about a chunk and a border


@pytest.mark.parametrize("name", ["bs-roformer-vocals", "mel-roformer-vocals"])
def test_the_named_roformers_sizes_are_those_of_their_published_architectures(name):
    """The table's sizes (what /apiv1/models says a download takes) are the published configs' networks saved by
    bench/engines.py: 4 bytes a parameter and a little pickling."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from engines import PUBLISHED

    from msaas.separation.roformer_nets import build

    with torch.device("meta"):  # the shapes only, no memory
        net = build(models.ROFORMERS[name]["kind"], dict(PUBLISHED[name]))
    weights = 4 * sum(t.numel() for t in net.state_dict().values())
    assert 0 < models.ROFORMERS[name]["state_dict_bytes"] - weights < 0.001 * weights
