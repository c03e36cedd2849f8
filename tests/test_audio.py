"""PyAV in and out: every format decodes to exactly the samples that went in, aligned."""

import numpy as np
import pytest

from conftest import make_song
from msaas import audio


@pytest.mark.parametrize("fmt", ["mp3", "wav", "flac"])
def test_stems_decode_to_the_exact_length_and_alignment(tmp_path, fmt):
    rate, n = 44100, 44100 * 3 + 321
    x = np.zeros((2, n), np.float32)
    x[:, 30000] = 0.8  # a click to find the alignment by
    x += 0.05 * np.sin(np.arange(n) / 20.0).astype(np.float32)
    audio.encode(tmp_path / f"s.{fmt}", x, rate, fmt)
    y, r = audio.decode(tmp_path / f"s.{fmt}")
    assert r == rate and y.shape == x.shape
    window = slice(29000, 31000)
    lag = np.argmax(np.correlate(y[0, window], x[0, window], "full")) - 1999
    assert lag == 0


def test_mono_input_is_decoded_as_two_identical_channels(tmp_path):
    path = make_song(tmp_path / "mono.wav", seconds=1, channels=1, fmt="wav")
    y, _ = audio.decode(path)
    assert y.shape[0] == 2 and np.array_equal(y[0], y[1])


def test_probe_counts_samples_of_a_48k_flac(tmp_path):
    path = make_song(tmp_path / "s.flac", seconds=2, rate=48000, fmt="flac")
    info = audio.probe(path)
    assert (info.samples, info.sample_rate, info.channels) == (96000, 48000, 2)


@pytest.mark.parametrize("content", [b"", b"hello world, not audio at all", bytes(range(256)) * 400])
def test_non_audio_is_refused(tmp_path, content):
    (tmp_path / "x").write_bytes(content)
    with pytest.raises(audio.NotAudio):
        audio.probe(tmp_path / "x")


def test_audio_over_the_maximum_duration_is_refused(tmp_path):
    path = make_song(tmp_path / "s.mp3", seconds=5)
    with pytest.raises(audio.TooLong):
        audio.probe(path, max_duration_s=2)
    assert audio.probe(path, max_duration_s=10).duration_s == pytest.approx(5, abs=0.01)


def test_a_truncated_mp3_is_refused_and_a_whole_one_is_not(tmp_path):
    whole = make_song(tmp_path / "whole.mp3", seconds=6)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(audio.Truncated, match="cut short"):
        audio.probe(cut)
    assert audio.probe(whole).duration_s == pytest.approx(6, abs=0.01)


def test_an_mp3_without_a_length_header_is_not_called_truncated(tmp_path):
    whole = make_song(tmp_path / "whole.mp3", seconds=6)
    data = bytearray(whole.read_bytes())
    for tag in (b"Xing", b"Info"):  # as if another encoder had written no header: FFmpeg then only estimates the length
        at = data.find(tag)
        if at >= 0:
            data[at : at + 4] = b"\0\0\0\0"
    plain = tmp_path / "plain.mp3"
    plain.write_bytes(bytes(data[: len(data) // 2]))
    assert audio.probe(plain).duration_s > 2


def write_with_pyav(path, container_format, codec, rate=48000, seconds=1.0):
    """A short tone in any container and codec PyAV's FFmpeg can write."""
    import av

    t = np.arange(int(rate * seconds)) / rate
    wave = np.stack([0.3 * np.sin(2 * np.pi * 440 * t)] * 2).astype(np.float32)
    with av.open(str(path), "w", format=container_format) as out:
        stream = out.add_stream(codec, rate=rate, layout="stereo")
        frame = av.AudioFrame.from_ndarray(wave, format="fltp", layout="stereo")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


@pytest.mark.parametrize("container_format,codec,name", [("ipod", "aac", "s.m4a"), ("ogg", "libopus", "s.ogg")])
def test_the_formats_msaas_accepts_beyond_mp3_wav_and_flac_are_read(tmp_path, container_format, codec, name):
    info = audio.probe(write_with_pyav(tmp_path / name, container_format, codec))
    assert info.channels == 2 and 0.9 < info.duration_s < 1.2


def test_ffmpeg_opens_only_the_demuxers_msaas_accepts(tmp_path):
    aiff = write_with_pyav(tmp_path / "s.aiff", "aiff", "pcm_s16be")
    with pytest.raises(audio.NotAudio):
        audio.probe(aiff)


def test_a_playlist_cannot_make_ffmpeg_fetch_a_url_or_open_another_file(tmp_path):
    """FFmpeg's own defaults refuse these as well; MSaaS's whitelists (demuxers, `file` only) keep it so whatever they
    become (the test just above is the one a missing whitelist fails)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from conftest import free_port, make_song

    asked = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    local = make_song(tmp_path / "local.mp3", seconds=1)
    try:
        for body in (
            f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nhttp://127.0.0.1:{server.server_port}/secret.ts\n#EXT-X-ENDLIST\n",
            f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile://{local}\n#EXT-X-ENDLIST\n",
            f"ffconcat version 1.0\nfile '{local}'\n",
        ):
            playlist = tmp_path / "song.mp3"
            playlist.write_text(body)
            with pytest.raises(audio.NotAudio):
                audio.probe(playlist)
    finally:
        server.shutdown()
    assert asked == []


def test_the_demucs_command_lines_mp3_stems_start_late_and_run_long_as_the_readme_says(tmp_path):
    """What README quotes: demucs writes MP3 stems through lameenc with no gapless header, so a decoder gives back the
    encoder's delay and padding as audio. Measured on a 5 s signal, decoded with PyAV (FFmpeg) and with sphn (demucs' own
    reader): 1,105 samples (25 ms) late, and 1,836 samples longer than the signal."""
    import sphn
    import torch
    from demucs.audio import save_audio

    from conftest import music

    rate = 44100
    wave = music(5.0, rate)
    save_audio(torch.from_numpy(wave), tmp_path / "demucs.mp3", rate)  # as `demucs` saves a stem: 320 kbps, preset 2
    decoded, decoded_rate = audio.decode(tmp_path / "demucs.mp3")
    by_sphn = sphn.read(str(tmp_path / "demucs.mp3"))[0]
    assert decoded_rate == rate
    for got in (decoded, by_sphn):
        corr = np.correlate(got[0, :20000], wave[0, :15000], mode="valid")
        assert int(np.argmax(corr)) == 1105  # late by LAME's delay (576 + 529)
        assert got.shape[1] - wave.shape[1] == 1836  # the delay and LAME's end padding, all of it decoded as audio
    ours = tmp_path / "msaas.mp3"
    audio.encode(ours, wave, rate, "mp3", 320)
    assert audio.decode(ours)[0].shape == wave.shape  # MSaaS's own: exact length, lag 0 (test_lame has the rest)


def test_output_options_read_a_jobs_options_with_their_defaults():
    assert audio.OutputOptions.of({}) == audio.OutputOptions("mp3", 320, None)
    flac = audio.OutputOptions.of({"format": "flac", "two_stems": "vocals"})
    assert (flac.format, flac.two_stems, flac.file_format.ext, flac.file_format.content_type) == (
        "flac",
        "vocals",
        "flac",
        "audio/flac",
    )
    assert audio.OutputOptions.of({"bitrate": "192"}).bitrate == 192


@pytest.mark.parametrize(
    "fmt,expected", [("mp3", ("mp3", "audio/mpeg")), ("wav", ("wav", "audio/wav")), ("flac", ("flac", "audio/flac"))]
)
def test_an_upload_is_typed_by_what_it_is_not_by_its_name(tmp_path, fmt, expected):
    path = make_song(tmp_path / f"song.{fmt}", seconds=0.5, fmt=fmt)
    misnamed = path.rename(tmp_path / "song.ogg")
    assert audio.probe(misnamed).file_type == expected
