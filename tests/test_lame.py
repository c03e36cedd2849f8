"""LAME called directly: the same audio as FFmpeg's libmp3lame gives, in files that decode to exactly what went in."""

import struct

import av
import numpy as np
import pytest
import torch

from conftest import music, snr_db, write_blocks
from msaas import audio, lame
from msaas.separation import StemEncoders


def test_lame_is_found_where_demucs_is_installed():
    assert lame.available()  # lameenc, a dependency of demucs, carries it: the worker never falls back in our images


@pytest.mark.parametrize("rate,channels,bitrate", [(44100, 2, 320), (22050, 1, 128), (48000, 2, 192), (32000, 1, 96)])
def test_stems_hold_the_audio_ffmpegs_lame_gives_to_the_exact_sample(tmp_path, rate, channels, bitrate):
    wave = music(3.0 + 457 / rate, rate, channels)
    write_blocks(lame.LameStemFile(tmp_path / "direct.mp3", rate, bitrate, channels), wave)
    write_blocks(audio.AvStemFile(tmp_path / "pyav.mp3", rate, "mp3", bitrate, channels), wave)
    direct, decoded_rate = audio.decode(tmp_path / "direct.mp3")
    pyav, _ = audio.decode(tmp_path / "pyav.mp3")
    assert decoded_rate == rate and direct.shape[1] == wave.shape[1]  # the tag trims LAME's delay and padding exactly
    direct, pyav, wave = direct[:channels], pyav[:channels], np.clip(wave, -1, 1)
    # Same LAME, same settings, same input scale: the same frames, but for rare last bits where lameenc's LAME (a later
    # revision) quantizes a transient differently: 40 dB and more below the coding noise, and just as close to the source.
    assert snr_db(pyav, direct) > snr_db(wave, direct) + 40
    assert snr_db(wave, direct) == pytest.approx(snr_db(wave, pyav), abs=0.05) and snr_db(wave, direct) > 15


@pytest.mark.parametrize("samples", [1, 10, 575, 576, 1151, 1152, 1153, 3000])
def test_short_stems_are_exact_too(tmp_path, samples):
    wave = music(1.0, 44100)[:, :samples]
    write_blocks(lame.LameStemFile(tmp_path / "s.mp3", 44100, 320), wave)
    decoded, _ = audio.decode(tmp_path / "s.mp3")
    assert decoded.shape == wave.shape


@pytest.mark.parametrize("rate,channels", [(44100, 2), (22050, 1)])
def test_the_tag_is_one_that_ffmpeg_trusts_and_checks_lengths_by(tmp_path, rate, channels):
    wave = music(2.0, rate, channels)
    write_blocks(lame.LameStemFile(tmp_path / "s.mp3", rate, 128, channels), wave)
    with av.open(str(tmp_path / "s.mp3")) as container:
        assert container.streams.audio[0].metadata["encoder"].startswith("LAME")  # set only when the tag's CRC is right
    assert audio.probe(tmp_path / "s.mp3").samples == wave.shape[1]
    data = (tmp_path / "s.mp3").read_bytes()
    tag = lame.split_frames(data)[0]
    length, music_crc = struct.unpack(">IH", tag[tag.index(b"Info") + 148 : tag.index(b"Info") + 154])
    assert length == len(data) and music_crc == lame._crc16(data[len(tag) :])  # as LAME's own tag has them
    (tmp_path / "cut.mp3").write_bytes(data[: len(data) // 2])
    with pytest.raises(audio.Truncated):  # the frame count in the tag tells a cut-short file
        audio.probe(tmp_path / "cut.mp3")


@pytest.mark.parametrize("rate,bitrate", [(8000, 8), (44100, 32)])
def test_bitrates_whose_frames_cannot_hold_the_tag_get_a_larger_first_frame(tmp_path, rate, bitrate):
    wave = music(2.0, rate, 1)
    write_blocks(lame.LameStemFile(tmp_path / "low.mp3", rate, bitrate, 1), wave)
    assert audio.decode(tmp_path / "low.mp3")[0].shape[1] == wave.shape[1]


def test_frames_split_at_their_headers_and_garbage_is_refused():
    encoder = lame.Encoder(44100, 2, 320, reservoir=False)
    data = encoder.encode(music(2.0, 44100)) + encoder.flush()
    frames = lame.split_frames(data)
    assert len(frames) == encoder.frames and b"".join(frames) == data
    assert {len(f) for f in frames} <= {1044, 1045}  # 320 kbps at 44.1 kHz: 144 * 320000 / 44100 bytes, plus padding
    encoder.close()
    with pytest.raises(ValueError, match="frame header"):
        lame.split_frames(b"\xff\xfb\x00\x00" + bytes(100))


def test_settings_lame_cannot_encode_are_refused_clearly():
    with pytest.raises(ValueError, match="LAME refuses"):
        lame.Encoder(96000, 2, 320)


def test_without_lame_the_stems_go_through_pyav(tmp_path, monkeypatch):
    monkeypatch.setattr(lame, "available", lambda: False)
    assert isinstance(audio.open_stem_file(tmp_path / "a.mp3", 44100), audio.AvStemFile)
    encoders = StemEncoders({t: tmp_path / f"{t}.mp3" for t in ("a", "b")}, 44100, "mp3", 320, threads=8)
    assert encoders.pool is None  # segments in parallel need LAME itself
    encoders.put(torch.from_numpy(music(1.0, 44100))[None].expand(2, -1, -1))
    encoders.close()
    assert audio.decode(tmp_path / "a.mp3")[0].shape == (2, 44100)


ENCODE_ONE_STEM = """
import json, sys
from pathlib import Path
import numpy as np
from msaas import audio, lame
t = np.arange(2 * 44100) / 44100
wave = np.stack([0.3 * np.sin(2 * np.pi * 440 * t)] * 2).astype(np.float32)
writer = audio.open_stem_file(Path(sys.argv[1]), 44100)
writer.write(wave)
writer.close()
lib = lame.library()
print(json.dumps({"library": lib._name if lib else None, "music_crc": hasattr(lib, "UpdateMusicCRC"),
                  "writer": type(writer).__name__, "said": lame.describe()}))
"""


def encode_where_lameenc_is_not_lame(tmp_path, hide_system_lame: bool) -> dict:
    """A stem encoded in a fresh process whose `lameenc` is a module no dynamic loader can load (as a wheel without
    LAME's symbols would be): the worker's own library search decides what encodes it, nothing is patched in this process."""
    import json
    import os
    import subprocess
    import sys

    from conftest import ROOT

    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "lameenc.py").write_text("# a stand-in: not a shared library\n")
    if hide_system_lame:  # as on a machine without Debian's libmp3lame0
        (shadow / "sitecustomize.py").write_text(
            "import ctypes.util\n_find = ctypes.util.find_library\n"
            "ctypes.util.find_library = lambda name: None if name == 'mp3lame' else _find(name)\n"
        )
    env = {**os.environ, "PYTHONPATH": f"{shadow}:{ROOT}"}
    out = subprocess.run(
        [sys.executable, "-c", ENCODE_ONE_STEM, str(tmp_path / "stem.mp3")], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_lame_without_update_music_crc_still_writes_exact_stems(tmp_path):
    """Debian's libmp3lame (.ci/run installs libmp3lame0) exports LAME's API but not UpdateMusicCRC."""
    used = encode_where_lameenc_is_not_lame(tmp_path, hide_system_lame=False)
    assert used["writer"] == "LameStemFile" and "mp3lame" in used["library"] and used["music_crc"] is False
    assert "called directly (libmp3lame" in used["said"] and "does not export UpdateMusicCRC" in used["said"]
    decoded, rate = audio.decode(tmp_path / "stem.mp3")
    assert decoded.shape == (2, 2 * 44100) and rate == 44100


def test_with_no_lame_to_load_the_stems_go_through_pyav(tmp_path):
    used = encode_where_lameenc_is_not_lame(tmp_path, hide_system_lame=True)
    said = used.pop("said")
    assert used == {"library": None, "music_crc": False, "writer": "AvStemFile"}
    assert said.startswith("MP3 stems through FFmpeg's libmp3lame in PyAV") and "2.5x the CPU" in said
    decoded, _ = audio.decode(tmp_path / "stem.mp3")
    assert decoded.shape == (2, 2 * 44100)
