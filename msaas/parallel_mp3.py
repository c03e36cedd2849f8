"""One MP3 stem encoded on several threads at once, gapless and sample-exact.

The stem is cut at frame boundaries into segments of about 15 s. Each segment is encoded by its own LAME, which also sees
a few frames of audio before and after it (so its psychoacoustic state and its first and last MDCT blocks are those of
one continuous encoding) and whose frames for that audio are dropped; the kept frames are muxed in order into one file.
Frames are self-contained (LAME's bit reservoir is off: a kept frame cannot borrow bytes from a dropped one), the encoder
delay and end padding in the LAME header are the first and last segments', so decoders trim it to the stem's exact length.

For workers whose model runs on a GPU: there the model separates a 10-minute song in seconds, while LAME on one thread
per stem takes half a minute (3.3 s of CPU per minute of stem), which is what a job would wait for.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Executor, Future
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from . import audio

SEGMENT_FRAMES = 574  # frames per segment: about 15 s at 44.1 kHz
ROLL_FRAMES = 4  # frames of audio on each side of a segment that its encoder sees and whose frames are dropped


def frame_samples(rate: int) -> int:
    """Samples per MP3 frame: 1152 for MPEG-1 rates (32 kHz and up), 576 for MPEG-2/2.5's lower rates."""
    return 1152 if rate >= 32000 else 576


def _encoder(rate: int, layout: str, bitrate_kbps: int) -> av.CodecContext:
    context = av.CodecContext.create("libmp3lame", "w")
    context.sample_rate, context.layout, context.format = rate, layout, "fltp"
    context.time_base = Fraction(1, rate)
    audio.configure_mp3(context, bitrate_kbps, reservoir=False)
    return context


def _encode(
    context: av.CodecContext | None,
    spec: tuple[int, str, int],
    data: np.ndarray,
    first_sample: int,
    keep: slice,
) -> tuple[list[av.Packet], float]:
    """One segment's frames (those in `keep`, by index) and the CPU seconds they took."""
    started = time.thread_time()
    context = context or _encoder(*spec)
    rate, layout, _ = spec
    packets: list[av.Packet] = []
    step = rate * 10
    for at in range(0, data.shape[1], step):
        packets += context.encode(audio.frame(data[:, at : at + step], "fltp", layout, rate, first_sample + at))
    packets += context.encode(None)
    return packets[keep], time.thread_time() - started


class ParallelMp3Writer:
    """`audio.StemWriter`'s interface (`write` [channels, n] float32 blocks, then `close`) with segments encoded on `pool`,
    at most `parallel` of this stem's at a time (each holds its 15 s of audio until encoded)."""

    def __init__(self, path: Path, sample_rate: int, bitrate_kbps: int, pool: Executor, parallel: int, channels: int = 2):
        self.layout = "stereo" if channels == 2 else "mono"
        self.spec = (sample_rate, self.layout, bitrate_kbps)
        self.container = av.open(str(path), "w", format="mp3")
        self.stream = self.container.add_stream("libmp3lame", rate=sample_rate, layout=self.layout)
        audio.configure_mp3(self.stream.codec_context, bitrate_kbps, reservoir=False)
        self.pool, self.parallel = pool, max(1, parallel)
        self.frame = frame_samples(sample_rate)
        self.frames = SEGMENT_FRAMES  # read here, so a test may shorten the segments
        self.segment, self.roll = self.frames * self.frame, ROLL_FRAMES * self.frame
        self.buffer = np.zeros((channels, 0), dtype=np.float32)
        self.start = 0  # the stem's sample at buffer[:, 0]
        self.cut = 0  # the next segment's first sample (a multiple of the frame)
        self.pending: deque[Future] = deque()
        self.cpu_s = 0.0  # CPU the segments' encoding took, on the pool's threads

    def write(self, block: np.ndarray) -> None:
        self.buffer = np.concatenate([self.buffer, np.clip(block, -1.0, 1.0).astype(np.float32, copy=False)], axis=1)
        while self.start + self.buffer.shape[1] >= self.cut + self.segment + self.roll:
            self._submit(last=False)

    def _submit(self, last: bool) -> None:
        begin = max(0, self.cut - self.roll)  # a multiple of the frame: the frames line up with one continuous encoding's
        end = self.start + self.buffer.shape[1] if last else self.cut + self.segment + self.roll
        dropped = (self.cut - begin) // self.frame
        keep = slice(dropped, None if last else dropped + self.frames)
        data = self.buffer[:, begin - self.start : end - self.start].copy()
        while len(self.pending) >= self.parallel:
            self._mux(self.pending.popleft())
        context = self.stream.codec_context if self.cut == 0 else None  # the first segment sets the stream's header
        self.pending.append(self.pool.submit(_encode, context, self.spec, data, begin, keep))
        self.cut += self.segment
        drop = max(0, self.cut - self.roll - self.start)
        self.buffer, self.start = self.buffer[:, drop:], self.start + drop

    def _mux(self, future: Future) -> None:
        packets, cpu_s = future.result()
        self.cpu_s += cpu_s
        for packet in packets:
            packet.stream = self.stream
            self.container.mux(packet)

    def close(self) -> None:
        try:
            if self.start + self.buffer.shape[1] > self.cut or self.cut == 0:
                self._submit(last=True)
            while self.pending:
                self._mux(self.pending.popleft())
        finally:
            for future in self.pending:
                future.cancel()
            self.container.close()
