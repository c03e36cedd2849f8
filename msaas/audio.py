"""Audio in and out through PyAV: sample-exact decode of anything FFmpeg reads, gapless MP3/WAV/FLAC stems."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import av
import numpy as np

from . import lame


@dataclass(frozen=True)
class Format:
    """An output format of the stems: how PyAV writes it, and how it is stored and served."""

    container: str
    codec: str
    sample_format: str
    ext: str
    content_type: str


FORMATS = {
    "mp3": Format("mp3", "libmp3lame", "fltp", "mp3", "audio/mpeg"),
    "wav": Format("wav", "pcm_s16le", "s16", "wav", "audio/wav"),
    "flac": Format("flac", "flac", "s16", "flac", "audio/flac"),
}
BITRATES = (96, 128, 160, 192, 224, 256, 320)
MP3_RATES = lame.RATES  # an MP3 stem keeps its song's sample rate, which must be one of these
DEFAULT_BITRATE = 320


@dataclass(frozen=True)
class OutputOptions:
    """What a client asked its stems to be: a job's `options`, where a default is left out (rest checks them)."""

    format: str = "mp3"
    bitrate: int = DEFAULT_BITRATE  # kbps, for MP3
    two_stems: str | None = None  # a track, and the rest summed: `<track>` and `no_<track>`

    @classmethod
    def of(cls, options: dict) -> OutputOptions:
        return cls(options.get("format", "mp3"), int(options.get("bitrate", DEFAULT_BITRATE)), options.get("two_stems"))

    @property
    def file_format(self) -> Format:
        return FORMATS[self.format]


# FFmpeg opens only what MSaaS accepts, and only from the file it is given: the demuxers of MP3, WAV, FLAC, OGG and
# MP4/M4A (FFmpeg's `mov`), no protocol but `file` (a playlist or a reference inside a file cannot make it fetch a URL or
# open another file), and no MP4 external data references. Untrusted bytes meet as little of FFmpeg as they can.
DEMUXERS = "mp3,wav,flac,ogg,mov"
UPLOAD_TYPES = {  # demuxer -> (extension, content type) of an upload as stored
    "mp3": ("mp3", "audio/mpeg"),
    "wav": ("wav", "audio/wav"),
    "flac": ("flac", "audio/flac"),
    "ogg": ("ogg", "audio/ogg"),
    "mov": ("m4a", "audio/mp4"),
}
OPEN_OPTIONS = {"format_whitelist": DEMUXERS, "protocol_whitelist": "file", "enable_drefs": "0"}
MAX_CHANNELS = 8  # more is not a song; a header claiming hundreds would make every block that much larger


class SongRejected(ValueError):
    """The song cannot be separated as asked: trying again would fail the same way, so its job fails at once."""


class NotAudio(SongRejected):
    """The bytes are not audio that FFmpeg can decode."""


class TooLong(SongRejected):
    """The audio is longer than the configured maximum."""


class Truncated(NotAudio):
    """An MP3 whose LAME/Xing/VBRI header promises more audio than the file holds."""


@dataclass(frozen=True)
class AudioInfo:
    samples: int
    sample_rate: int
    channels: int
    codec: str
    container: str = "mp3"  # FFmpeg's demuxer: mp3, wav, flac, ogg, or mov (MP4/M4A)

    @property
    def file_type(self) -> tuple[str, str]:
        """The extension and content type the file is stored with (as what it is, whatever name it was sent under)."""
        return UPLOAD_TYPES.get(self.container.split(",")[0], ("bin", "application/octet-stream"))

    @property
    def duration_s(self) -> float:
        return self.samples / self.sample_rate


class Decoder:
    """The first audio stream of a file, decoded to planar float32 blocks at its own rate; a context manager."""

    def __init__(self, path: Path, max_duration_s: float | None = None):
        try:
            self.container = av.open(str(path), "r", options=OPEN_OPTIONS)
        except (av.FFmpegError, ValueError, OSError) as exc:
            raise NotAudio(f"not an audio file FFmpeg can read ({exc.__class__.__name__})") from None
        if not self.container.streams.audio:
            self.container.close()
            raise NotAudio("the file holds no audio stream")
        self.stream = self.container.streams.audio[0]
        self.rate = self.stream.codec_context.sample_rate
        self.channels = self.stream.codec_context.channels
        self.codec = self.stream.codec_context.name
        self.format = self.container.format.name
        if not self.rate or not self.channels:
            self.container.close()
            raise NotAudio("the audio stream has no sample rate or channels")
        if self.channels > MAX_CHANNELS:
            self.container.close()
            raise NotAudio(f"the audio has {self.channels} channels; MSaaS takes songs of up to {MAX_CHANNELS}")
        self.max_duration_s = max_duration_s
        claimed = float(self.container.duration / av.time_base) if self.container.duration else None
        self.claimed_s = claimed
        if max_duration_s and claimed and claimed > max_duration_s * 1.05:
            self.container.close()
            raise TooLong(f"the audio lasts {claimed:.0f} s, more than the {max_duration_s:.0f} s allowed")

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc) -> None:
        self.container.close()

    def blocks(self) -> Iterator[np.ndarray]:
        """[channels, n] blocks (mono stays mono; more than two channels are mixed down to stereo)."""
        limit = int(self.max_duration_s * self.rate) if self.max_duration_s else None
        # Same rate in and out: swresample only changes layout and format, so no delay is added.
        resampler = av.AudioResampler(format="fltp", layout="mono" if self.channels == 1 else "stereo", rate=self.rate)
        total = 0
        try:
            for frame in self.container.decode(self.stream):
                for out in resampler.resample(frame):
                    block = out.to_ndarray()
                    total += block.shape[1]
                    if limit and total > limit:
                        raise TooLong(f"the audio is longer than the {self.max_duration_s:.0f} s allowed")
                    yield block
            for out in resampler.resample(None):
                yield out.to_ndarray()
        except av.FFmpegError as exc:
            raise NotAudio(f"the audio could not be decoded ({exc.__class__.__name__})") from None


def _mp3_length_header(path: Path) -> bool:
    """Whether the first MP3 frame is a LAME/Xing/VBRI header: then the length it states is exact, not estimated."""
    with open(path, "rb") as handle:
        head = handle.read(10)
        start = 0
        if head[:3] == b"ID3" and len(head) == 10:  # skip an ID3v2 tag: syncsafe size, plus a footer if flagged
            start = 10 + ((head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | (head[9] & 0x7F))
            start += 10 if head[5] & 0x10 else 0
        handle.seek(start)
        frame = handle.read(256)
    return any(tag in frame for tag in (b"Xing", b"Info", b"VBRI"))


def probe(path: Path, max_duration_s: float | None = None) -> AudioInfo:
    """Decode the whole file without keeping it: the exact sample count, or NotAudio/Truncated/TooLong."""
    with Decoder(path, max_duration_s) as decoder:
        samples = sum(block.shape[1] for block in decoder.blocks())
        if samples == 0:
            raise NotAudio("the file decodes to no audio at all")
        decoded_s, claimed_s = samples / decoder.rate, decoder.claimed_s
        # Only a header's stated length is trusted: without one, FFmpeg estimates it from the bitrate.
        if decoder.codec.startswith("mp3") and claimed_s and decoded_s < claimed_s - max(0.2, 0.01 * claimed_s):
            if _mp3_length_header(path):
                raise Truncated(f"the MP3 is cut short: its header says {claimed_s:.1f} s, the file holds {decoded_s:.1f} s")
        return AudioInfo(samples, decoder.rate, decoder.channels, decoder.codec, decoder.format)


def decode(path: Path, max_duration_s: float | None = None) -> tuple[np.ndarray, int]:
    """The whole file as float32 [2, samples] (mono is duplicated) and its sample rate.

    Counted first, then decoded into one array: the song is held once, never as blocks plus their concatenation."""
    with Decoder(path, max_duration_s) as decoder:
        samples = sum(block.shape[1] for block in decoder.blocks())
    if samples == 0:
        raise NotAudio("the file decodes to no audio at all")
    wave = np.empty((2, samples), dtype=np.float32)
    at = 0
    with Decoder(path, max_duration_s) as decoder:
        rate = decoder.rate
        for block in decoder.blocks():
            n = min(block.shape[1], samples - at)
            wave[:, at : at + n] = block[:, :n]  # a mono block fills both channels
            at += n
    return wave, rate


def configure_mp3(context: av.CodecContext, bitrate_kbps: int) -> None:
    """LAME's settings through FFmpeg, as `lame.Encoder` sets them: for the fallback when that cannot load LAME."""
    context.bit_rate = bitrate_kbps * 1000
    context.options = {"compression_level": str(lame.QUALITY)}


def frame(data: np.ndarray, sample_format: str, layout: str, rate: int, pts: int) -> av.AudioFrame:
    """Samples for an encoder: `data` laid out as `sample_format` wants ([channels, n] planar, [1, n * channels] packed)."""
    out = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=sample_format, layout=layout)
    out.sample_rate, out.pts = rate, pts
    return out


class StemFile(Protocol):
    """What every writer of one stem file offers (PyAV's AvStemFile, LAME's lame.LameStemFile, parallel_mp3's
    ParallelLameStemFile): `write` [channels, n] float32 blocks in [-1, 1] as they come, then `close`."""

    cpu_s: float  # CPU spent encoding on threads other than the writing one (a pool's); 0 when all of it is the caller's

    def write(self, block: np.ndarray) -> None: ...

    def close(self) -> None: ...


def open_stem_file(
    path: Path, sample_rate: int, fmt: str = "mp3", bitrate_kbps: int = DEFAULT_BITRATE, channels: int = 2
) -> StemFile:
    """A writer for one stem (`write` [channels, n] float32 blocks, then `close`): MP3 through LAME itself
    (`lame.LameStemFile`, at 0.4x the CPU of FFmpeg's build of it), anything else, or MP3 without it, through PyAV."""
    if fmt == "mp3" and lame.available():
        return lame.LameStemFile(path, sample_rate, bitrate_kbps, channels)
    return AvStemFile(path, sample_rate, fmt, bitrate_kbps, channels)


class AvStemFile:
    """Encodes one stem incrementally through PyAV; call `write` with [channels, n] float32 blocks, then `close`."""

    cpu_s = 0.0  # all of it on the writing thread

    def __init__(self, path: Path, sample_rate: int, fmt: str = "mp3", bitrate_kbps: int = DEFAULT_BITRATE, channels: int = 2):
        form = FORMATS[fmt]
        self.sample_format = form.sample_format
        self.sample_rate = sample_rate
        self.layout = "stereo" if channels == 2 else "mono"
        self.container = av.open(str(path), "w", format=form.container)
        self.stream = self.container.add_stream(form.codec, rate=sample_rate, layout=self.layout)
        if fmt == "mp3":
            configure_mp3(self.stream.codec_context, bitrate_kbps)
        self.pts = 0

    def write(self, block: np.ndarray) -> None:
        block = np.clip(block, -1.0, 1.0)
        if self.sample_format == "s16":
            data = np.ascontiguousarray((block.T * 32767.0).round().astype(np.int16)).reshape(1, -1)
        else:
            data = np.ascontiguousarray(block, dtype=np.float32)
        samples = frame(data, self.sample_format, self.layout, self.sample_rate, self.pts)
        self.pts += block.shape[1]
        for packet in self.stream.encode(samples):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode(None):
            self.container.mux(packet)
        self.container.close()


def encode(path: Path, audio: np.ndarray, sample_rate: int, fmt: str = "mp3", bitrate_kbps: int = DEFAULT_BITRATE) -> None:
    writer = open_stem_file(path, sample_rate, fmt, bitrate_kbps, channels=audio.shape[0])
    try:
        step = sample_rate * 10
        for start in range(0, audio.shape[1], step):
            writer.write(audio[:, start : start + step])
    finally:
        writer.close()
