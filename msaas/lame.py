"""LAME, the MP3 encoder, called directly (ctypes) and written into gapless MP3 files.

Why not FFmpeg's libmp3lame (PyAV)? It is the same LAME with the same settings, but the build inside PyAV's wheel takes
about 2.5 times the CPU of the one inside `lameenc` (a dependency of demucs) on the same input, for the same frames (but
for the last bits of a rare transient: lameenc's is a later revision). Encoding is most of what a job does beside the
model, so the worker calls the faster build itself: `lameenc` exports LAME's whole C API, while its Python API has no float
input, no reservoir switch and no gapless header. A system `libmp3lame` serves too; with neither, `available()` is false
and `audio.open_stem_file` encodes through PyAV as before.

Files are laid out as the `lame` command line lays them out: an Info/LAME tag frame first (frame count, byte count, seek
table, encoder delay, end padding, CRCs), written here, then LAME's frames; decoders that read the tag (FFmpeg, browsers,
players) trim the delay and padding, so a stem decodes to exactly the samples it was given.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import struct
from functools import cache
from pathlib import Path

import numpy as np

QUALITY = 5  # LAME's -q (0 slowest .. 9 fastest); LAME's default (3) costs 40% more for no audible gain at these bitrates
JOINT_STEREO, MONO = 1, 3  # LAME's MPEG_mode values
_BITRATES = {  # kbps by header index: MPEG-1 layer III, MPEG-2/2.5 layer III
    1: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}  # by MPEG version bits
RATES = tuple(sorted(rate for rates in _RATES.values() for rate in rates))  # what an MP3 can be (LAME would resample others)


_GETTERS = "close init_params get_encoder_delay get_frameNum get_framesize get_brate get_out_samplerate".split()
_SETTERS = "in_samplerate out_samplerate num_channels brate quality mode disable_reservoir bWriteVbrTag VBR".split()


@cache
def library() -> ctypes.CDLL | None:
    """LAME's shared library: the one inside `lameenc`, else the system's libmp3lame; None when neither can be loaded."""
    spec = importlib.util.find_spec("lameenc")
    candidates = [spec.origin] if spec and spec.origin else []
    candidates.append(ctypes.util.find_library("mp3lame"))
    for candidate in filter(None, candidates):
        try:
            lib = ctypes.CDLL(candidate)
            for name in _GETTERS:
                getattr(lib, "lame_" + name).argtypes = [ctypes.c_void_p]
            for name in _SETTERS:
                getattr(lib, "lame_set_" + name).argtypes = [ctypes.c_void_p, ctypes.c_int]
            samples = ctypes.POINTER(ctypes.c_float)
            lib.lame_encode_buffer_float.argtypes = [
                ctypes.c_void_p,
                samples,
                samples,
                ctypes.c_int,
                ctypes.c_char_p,
                ctypes.c_int,
            ]
            lib.lame_encode_flush.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
            lib.lame_init.restype = ctypes.c_void_p
            lib.get_lame_very_short_version.restype = ctypes.c_char_p
            if hasattr(lib, "UpdateMusicCRC"):  # LAME's own, outside its API: exported by lameenc's build, not by every one
                lib.UpdateMusicCRC.argtypes = [ctypes.POINTER(ctypes.c_uint16), ctypes.c_char_p, ctypes.c_int]
        except (OSError, AttributeError):  # not there, or a build that does not export LAME's API
            continue
        gfp = lib.lame_init()  # LAME fills its global tables once, here, not in several encoders' threads at once
        lib.lame_init_params(gfp)
        lib.lame_close(gfp)
        return lib
    return None


def available() -> bool:
    return library() is not None


def describe() -> str:
    """Which MP3 encoder the stems get, for a worker's start-up line (the fallback is worth a warning: 2.5x the CPU)."""
    lib = library()
    if lib is None:
        return "MP3 stems through FFmpeg's libmp3lame in PyAV: no loadable LAME (lameenc, libmp3lame), about 2.5x the CPU"
    version = lib.get_lame_very_short_version().decode(errors="replace").strip()
    crc = "" if hasattr(lib, "UpdateMusicCRC") else "; it does not export UpdateMusicCRC, so the music CRC stays 0"
    return f"MP3 stems through {version} called directly ({Path(lib._name).name}{crc})"


class Encoder:
    """One LAME encoder: float32 [channels, n] blocks in ([-1, 1]), MP3 frames out (bytes), CBR at `bitrate_kbps`.

    `reservoir=False` makes every frame self-contained (no bytes borrowed from the frames before it): `parallel_mp3`."""

    def __init__(self, rate: int, channels: int, bitrate_kbps: int, reservoir: bool = True):
        self.lib = lib = library()
        if lib is None:
            raise RuntimeError("no LAME library: install lameenc (pip) or libmp3lame")
        self.channels = channels
        self.gfp = lib.lame_init()
        if not self.gfp:
            raise MemoryError("lame_init failed")
        lib.lame_set_in_samplerate(self.gfp, rate)
        lib.lame_set_out_samplerate(self.gfp, rate)
        lib.lame_set_num_channels(self.gfp, channels)
        lib.lame_set_mode(self.gfp, JOINT_STEREO if channels == 2 else MONO)
        lib.lame_set_VBR(self.gfp, 0)
        lib.lame_set_brate(self.gfp, bitrate_kbps)
        lib.lame_set_quality(self.gfp, QUALITY)
        lib.lame_set_disable_reservoir(self.gfp, 0 if reservoir else 1)
        lib.lame_set_bWriteVbrTag(self.gfp, 0)  # the tag is Mp3File's: it covers frames from several encoders
        if lib.lame_init_params(self.gfp) < 0 or lib.lame_get_out_samplerate(self.gfp) != rate:  # no resampling inside
            self.close()
            raise ValueError(f"LAME refuses {bitrate_kbps} kbps at {rate} Hz, {channels} channel(s)")
        self.rate = rate
        self.bitrate = lib.lame_get_brate(self.gfp)  # LAME's nearest where the rate's MPEG version has no such bitrate
        self.delay = lib.lame_get_encoder_delay(self.gfp)
        self.frame_samples = lib.lame_get_framesize(self.gfp)

    def encode(self, block: np.ndarray) -> bytes:
        n = block.shape[1]
        if n == 0:
            return b""
        # LAME's float input is in 16-bit units (+-32768), scaled here as FFmpeg's libmp3lame scales it
        left = np.multiply(block[0], 32768.0, dtype=np.float32)
        right = np.multiply(block[-1], 32768.0, dtype=np.float32)
        out = ctypes.create_string_buffer(n * 5 // 4 + 7200)  # LAME's worst case
        pointer = ctypes.POINTER(ctypes.c_float)
        size = self.lib.lame_encode_buffer_float(
            self.gfp, left.ctypes.data_as(pointer), right.ctypes.data_as(pointer), n, out, len(out)
        )
        if size < 0:
            raise RuntimeError(f"LAME failed to encode ({size})")
        return out.raw[:size]

    def flush(self) -> bytes:
        out = ctypes.create_string_buffer(7200)
        size = self.lib.lame_encode_flush(self.gfp, out, len(out))
        if size < 0:
            raise RuntimeError(f"LAME failed to flush ({size})")
        return out.raw[:size]

    @property
    def frames(self) -> int:
        """Frames encoded so far (LAME's output can end inside a frame: its bytes are not whole frames until `flush`)."""
        return self.lib.lame_get_frameNum(self.gfp)

    def close(self) -> None:
        if self.gfp:
            self.lib.lame_close(self.gfp)
            self.gfp = None


def frame_length(header: bytes) -> int:
    """Bytes in the MPEG-1/2/2.5 layer III frame that starts with this 4-byte header."""
    version, layer, bitrate_index, rate_index = header[1] >> 3 & 3, header[1] >> 1 & 3, header[2] >> 4, header[2] >> 2 & 3
    if header[0] != 0xFF or header[1] & 0xE0 != 0xE0 or layer != 1 or version == 1 or not 0 < bitrate_index < 15:
        raise ValueError("not an MPEG layer III frame header")
    kbps, rate = _BITRATES[1 if version == 3 else 2][bitrate_index], _RATES[version][rate_index]
    return (144 if version == 3 else 72) * kbps * 1000 // rate + (header[2] >> 1 & 1)


def split_frames(data: bytes) -> list[bytes]:
    """A flushed encoder's output cut into its frames."""
    frames, at = [], 0
    while at < len(data):
        length = frame_length(data[at : at + 4])
        frames.append(data[at : at + length])
        at += length
    return frames


def _crc16(data: bytes, crc: int = 0) -> int:
    """CRC-16 (polynomial 0x8005, reflected), as the LAME tag's CRC fields use."""
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


class Mp3File:
    """An MP3 file written as LAME's output comes, then given its Info/LAME tag by `close(frames, samples)`.

    The first frame's room is reserved for the tag; `close` writes it there with the frame count, the byte count, a seek
    table, LAME's encoder delay and the end padding that makes the file decode to exactly `samples` samples, and the
    CRCs LAME puts in its tag (of the audio, and of the tag itself)."""

    def __init__(self, path: Path, encoder: Encoder):
        """For the frames of `encoder` or of encoders with its settings."""
        self.rate, self.channels, self.bitrate = encoder.rate, encoder.channels, encoder.bitrate
        self.delay, self.frame_samples = encoder.delay, encoder.frame_samples
        self.header = self._header()
        self.tag_length = frame_length(self.header)
        self.file = open(path, "wb")  # noqa: SIM115 (closed by close)
        self.file.write(bytes(self.tag_length))
        self.bytes = 0
        self.update_crc = getattr(library(), "UpdateMusicCRC", None)
        self.music_crc = ctypes.c_uint16(0)  # of every byte after the tag frame; left 0 where LAME does not export it

    def _header(self) -> bytes:
        version = next(v for v, rates in _RATES.items() if self.rate in rates)
        table = _BITRATES[1 if version == 3 else 2]
        for bitrate_index in range(table.index(self.bitrate), len(table)):  # the stream's bitrate, unless its frames are
            header = bytes(  # too small for the tag (below 40 kbps or so): then the first bitrate whose frame holds it
                [
                    0xFF,
                    0xE0 | version << 3 | 1 << 1 | 1,  # layer III, no CRC
                    bitrate_index << 4 | _RATES[version].index(self.rate) << 2,
                    (3 if self.channels == 1 else 1) << 6,  # mono, or joint stereo
                ]
            )
            if frame_length(header) >= 4 + 32 + 156:
                break
        return header

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.bytes += len(data)
        if self.update_crc and data:
            self.update_crc(ctypes.byref(self.music_crc), data, len(data))

    def close(self, frames: int, samples: int) -> None:
        """Writes the tag for `frames` frames (the tag's own not counted) that hold `samples` samples after the delay."""
        try:
            self.file.seek(0)
            self.file.write(self._tag(frames, samples))
        finally:
            self.file.close()

    def _tag(self, frames: int, samples: int) -> bytes:
        padding = frames * self.frame_samples - self.delay - samples
        if not 0 <= padding < 4096 or self.delay >= 4096:
            raise ValueError(f"{frames} frames cannot hold {samples} samples after a delay of {self.delay}")
        mpeg1 = self.header[1] >> 3 & 3 == 3
        side_info = (32 if self.channels == 2 else 17) if mpeg1 else (17 if self.channels == 2 else 9)
        total = self.tag_length + self.bytes
        toc = bytes(min(255, 256 * i // 100) for i in range(100))  # CBR: bytes grow linearly with time
        version = library().get_lame_very_short_version()[:9].ljust(9, b"\0")  # "LAME3.100", as LAME writes it
        tag = b"".join(
            [
                self.header,
                bytes(side_info),
                b"Info",
                struct.pack(">IIi", 0x0F, frames, total),  # frames, bytes, TOC and quality present
                toc,
                struct.pack(">I", 100 - 10 * QUALITY),  # LAME's quality indicator for CBR: 100 - 10 * q
                version,
                bytes([0x01]),  # tag revision 0, CBR
                bytes(1 + 4 + 2 + 2 + 1),  # lowpass, ReplayGain peak, radio and audiophile gains, flags: not given
                bytes([min(255, self.bitrate)]),
                (self.delay << 12 | padding).to_bytes(3, "big"),
                bytes(1 + 1 + 2),  # misc, MP3 gain, preset/surround: not given
                struct.pack(">IH", total, self.music_crc.value),  # music length (the whole file), music CRC
            ]
        )
        tag += struct.pack(">H", _crc16(tag))  # of everything before it (190 bytes in a stereo MPEG-1 frame)
        return tag + bytes(self.tag_length - len(tag))


class LameStemFile:
    """One stem encoded as it comes (an `audio.StemFile`): `write` [channels, n] float32 blocks, then `close`."""

    cpu_s = 0.0  # all of it on the writing thread

    def __init__(self, path: Path, rate: int, bitrate_kbps: int, channels: int = 2):
        self.encoder = Encoder(rate, channels, bitrate_kbps)
        try:
            self.file = Mp3File(path, self.encoder)
        except BaseException:
            self.encoder.close()
            raise
        self.samples = 0

    def write(self, block: np.ndarray) -> None:
        self.file.write(self.encoder.encode(np.clip(block, -1.0, 1.0)))
        self.samples += block.shape[1]

    def close(self) -> None:
        try:
            self.file.write(self.encoder.flush())
            self.file.close(self.encoder.frames, self.samples)
        finally:
            self.file.file.close()
            self.encoder.close()
