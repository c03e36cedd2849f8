"""One MP3 stem encoded on several threads at once, gapless and sample-exact.

The stem is cut at frame boundaries into segments of about 15 s. Each segment is encoded by its own LAME, which also sees
a few frames of audio before and after it (so its psychoacoustic state and its first and last MDCT blocks are those of
one continuous encoding) and whose frames for that audio are dropped; the kept frames are written in order into one file.
Frames are self-contained (LAME's bit reservoir is off: a kept frame cannot borrow bytes from a dropped one); the file's
LAME tag gives the encoder delay and the end padding of the whole, so decoders trim it to the stem's exact length.

For workers whose model runs on a GPU: there the model separates a 10-minute song in seconds, while LAME on one thread
per stem takes several times as long, which is what a job would wait for.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Executor, Future
from pathlib import Path

import numpy as np

from . import lame

SEGMENT_FRAMES = 574  # frames per segment: about 15 s at 44.1 kHz
ROLL_FRAMES = 4  # frames of audio on each side of a segment that its encoder sees and whose frames are dropped


def _encode(spec: tuple[int, int, int], data: np.ndarray, keep: slice) -> tuple[bytes, int, float]:
    """One segment's frames (those in `keep`, by index), how many, and the CPU seconds they took."""
    started = time.thread_time()
    encoder = lame.Encoder(*spec, reservoir=False)
    try:
        frames = lame.split_frames(encoder.encode(data) + encoder.flush())[keep]
    finally:
        encoder.close()
    return b"".join(frames), len(frames), time.thread_time() - started


class ParallelLameStemFile:
    """An `audio.StemFile` (`write` [channels, n] float32 blocks, then `close`) with segments encoded on `pool`,
    at most `parallel` of this stem's at a time (each holds its 15 s of audio until encoded)."""

    def __init__(self, path: Path, sample_rate: int, bitrate_kbps: int, pool: Executor, parallel: int, channels: int = 2):
        self.spec = (sample_rate, channels, bitrate_kbps)
        probe = lame.Encoder(*self.spec, reservoir=False)  # LAME's delay, frame size and bitrate for these settings
        probe.close()
        self.file = lame.Mp3File(path, probe)
        self.pool, self.parallel = pool, max(1, parallel)
        self.frame = probe.frame_samples
        self.frames = SEGMENT_FRAMES  # read here, so a test may shorten the segments
        self.segment, self.roll = self.frames * self.frame, ROLL_FRAMES * self.frame
        self.buffer = np.zeros((channels, 0), dtype=np.float32)
        self.start = 0  # the stem's sample at buffer[:, 0]
        self.cut = 0  # the next segment's first sample (a multiple of the frame)
        self.pending: deque[Future] = deque()
        self.samples = self.written = 0  # samples given, frames in the file
        self.cpu_s = 0.0  # CPU the segments' encoding took, on the pool's threads

    def write(self, block: np.ndarray) -> None:
        self.buffer = np.concatenate([self.buffer, np.clip(block, -1.0, 1.0).astype(np.float32, copy=False)], axis=1)
        self.samples += block.shape[1]
        while self.start + self.buffer.shape[1] >= self.cut + self.segment + self.roll:
            self._submit(last=False)

    def _submit(self, last: bool) -> None:
        begin = max(0, self.cut - self.roll)  # a multiple of the frame: the frames line up with one continuous encoding's
        end = self.start + self.buffer.shape[1] if last else self.cut + self.segment + self.roll
        dropped = (self.cut - begin) // self.frame
        keep = slice(dropped, None if last else dropped + self.frames)
        data = self.buffer[:, begin - self.start : end - self.start].copy()
        while len(self.pending) >= self.parallel:
            self._write(self.pending.popleft())
        self.pending.append(self.pool.submit(_encode, self.spec, data, keep))
        self.cut += self.segment
        drop = max(0, self.cut - self.roll - self.start)
        self.buffer, self.start = self.buffer[:, drop:], self.start + drop

    def _write(self, future: Future) -> None:
        data, frames, cpu_s = future.result()
        self.cpu_s += cpu_s
        self.file.write(data)
        self.written += frames

    def close(self) -> None:
        try:
            if self.start + self.buffer.shape[1] > self.cut or self.cut == 0:
                self._submit(last=True)
            while self.pending:
                self._write(self.pending.popleft())
            self.file.close(self.written, self.samples)
        finally:
            for future in self.pending:
                future.cancel()
            self.file.file.close()
