"""An MP3 stem encoded on several threads: gapless to the sample, and as good at every cut as one continuous encoding."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from conftest import TINY, make_song, music, snr_db, write_blocks
from msaas import audio, parallel_mp3
from msaas.separation import StemEncoders, cpu_budget, encoding_threads, load_separator, separate_file, torch_threads


def parallel(path, wave: np.ndarray, rate: int, threads: int) -> parallel_mp3.ParallelLameStemFile:
    with ThreadPoolExecutor(threads) as pool:
        writer = parallel_mp3.ParallelLameStemFile(path, rate, 320, pool, threads, wave.shape[0])
        write_blocks(writer, wave)
    return writer


@pytest.mark.parametrize("rate,channels", [(44100, 2), (22050, 2), (48000, 1)])
def test_segments_join_into_one_gapless_stem_as_good_as_one_encoder(tmp_path, monkeypatch, rate, channels):
    wave = music(20.0 + 123 / rate, rate, channels)
    write_blocks(audio.open_stem_file(tmp_path / "lame.mp3", rate, "mp3", 320, channels), wave)
    parallel(tmp_path / "continuous.mp3", wave, rate, 1)  # one segment: LAME without its bit reservoir
    monkeypatch.setattr(parallel_mp3, "SEGMENT_FRAMES", 50)  # a cut every 1.2-2.6 s: a dozen cuts in 20 s
    writer = parallel(tmp_path / "many.mp3", wave, rate, 4)
    lame, _ = audio.decode(tmp_path / "lame.mp3")
    one, _ = audio.decode(tmp_path / "continuous.mp3")
    many, decoded_rate = audio.decode(tmp_path / "many.mp3")
    assert decoded_rate == rate and many.shape[1] == wave.shape[1]  # the LAME header trims delay and padding exactly
    lame, one, many = lame[:channels], one[:channels], many[:channels]
    assert snr_db(wave, many) > snr_db(wave, lame) - 1.0  # the reservoir's worth at 320 kbps: a fraction of a dB
    segment = 50 * writer.frame  # samples per MP3 frame: 1152 at MPEG-1 rates, 576 below 32 kHz
    cuts = range(segment, wave.shape[1], segment)
    assert len(cuts) >= 7
    for cut in cuts:  # around each cut: no click, no gap, no echo of a dropped frame
        near = slice(cut - 2048, cut + 2048)
        assert snr_db(wave[:, near], many[:, near]) > snr_db(wave[:, near], one[:, near]) - 1.0, cut
    assert writer.cpu_s > 0


def test_a_stem_shorter_than_a_segment_is_one_encoding(tmp_path):
    wave = music(0.3, 44100)
    parallel(tmp_path / "short.mp3", wave, 44100, 2)
    decoded, _ = audio.decode(tmp_path / "short.mp3")
    assert decoded.shape == wave.shape and snr_db(wave, decoded) > 10


def test_encoders_use_segments_only_with_two_threads_per_track(tmp_path):
    paths = {t: tmp_path / f"{t}.mp3" for t in ("a", "b")}
    serial = StemEncoders(paths, 44100, "mp3", 320, threads=3)
    parallel = StemEncoders(paths, 44100, "mp3", 320, threads=4)
    flac = StemEncoders({t: tmp_path / f"{t}.flac" for t in ("a", "b")}, 44100, "flac", 320, threads=8)
    for encoders in (serial, parallel, flac):
        encoders.put(torch.from_numpy(music(1.0, 44100))[None].expand(2, -1, -1))
        encoders.close()
    assert serial.pool is None and flac.pool is None
    assert isinstance(parallel.writers[0], parallel_mp3.ParallelLameStemFile) and parallel.cpu_s > 0


def test_gpu_workers_encode_on_every_cpu_and_give_torch_one(tiny_repo):
    tiny = load_separator(TINY, tiny_repo, "cpu")
    assert encoding_threads(tiny) == 0  # StemEncoders: one thread per track
    assert encoding_threads(tiny, 6) == 6
    tiny.device = torch.device("cuda")  # as a GPU worker's separator says (nothing runs on it here)
    assert encoding_threads(tiny) == cpu_budget()  # every CPU this process may use (its affinity, capped by a quota)
    tiny.device = torch.device("cpu")
    assert torch_threads(0, "cpu") == cpu_budget() and torch_threads(0, "cuda") == 1 and torch_threads(3, "cuda") == 3


def test_a_separation_with_parallel_encoders_matches_the_serial_one(tiny_repo, tmp_path, monkeypatch):
    monkeypatch.setattr(parallel_mp3, "SEGMENT_FRAMES", 40)
    tiny = load_separator(TINY, tiny_repo, "cpu")
    song = make_song(tmp_path / "song.mp3", seconds=8.0)
    runs = {}
    for name, fmt, threads in (("wav", "wav", 0), ("serial", "mp3", 0), ("parallel", "mp3", 8)):
        (tmp_path / name).mkdir()
        stems = separate_file(tiny, song, tmp_path / name, audio.OutputOptions(fmt), encoder_threads=threads).stems
        runs[name] = {track: audio.decode(path)[0] for track, path in stems.items()}
    for track, reference in runs["wav"].items():
        serial, parallel = runs["serial"][track], runs["parallel"][track]
        assert parallel.shape == reference.shape
        assert snr_db(reference, parallel) > snr_db(reference, serial) - 1.0, track


def test_an_encoder_that_fails_fails_the_stems_and_leaves_no_thread_behind(tmp_path):
    paths = {t: tmp_path / f"{t}.mp3" for t in ("a", "b")}
    encoders = StemEncoders(paths, 44100, "mp3", 320, threads=4)
    encoders.put(torch.from_numpy(music(1.0, 44100))[None].expand(2, -1, -1))
    encoders.put(torch.zeros(2, 5, 1000))  # five channels: no encoder takes that
    with pytest.raises(ValueError, match="dimension"):
        encoders.close()
    assert encoders.pool._shutdown and not any(thread.is_alive() for thread in encoders.threads)
