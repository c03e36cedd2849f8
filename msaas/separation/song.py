"""A song file at a model's rate: read block by block, never held whole (SongStream), resampled as it streams
(StreamResampler, equal to julius on the whole signal), or held whole for an engine that needs it (load_song)."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .. import audio, compat


class SongStream:
    """A song file at the model's rate, read block by block (never held whole in memory): decoded once, for its length
    and demucs' normalization (the mean and deviation of its mono mix), into a spill file of raw samples in the temporary
    folder, which every later pass (`blocks`) reads back instead of decoding again (a 10-minute song: 212 MB of disk,
    read back at memory speed from the page cache)."""

    def __init__(
        self,
        source: Path,
        model_rate: int,
        max_duration_s: float | None = None,
        stats: tuple[float, float] | None = None,
    ):
        self.model_rate = model_rate
        self.spill = tempfile.TemporaryFile(prefix="msaas-song-")  # gone with this stream
        moments, self.samples = _Moments(), 0
        self.spans: list[int] = []  # each decoded block's length: the spill holds them one after another, planar
        with audio.Decoder(source, max_duration_s) as decoder:
            self.rate = decoder.rate
            same = self.rate == model_rate
            for block in decoder.blocks():
                wave = np.ascontiguousarray(np.broadcast_to(block, (2, block.shape[1])), dtype=np.float32)
                self.spill.write(wave.data)
                if same and stats is None:
                    moments.add(wave)
                self.spans.append(wave.shape[1])
                self.samples += wave.shape[1]
        self.spill.flush()
        if self.samples == 0:
            raise audio.NotAudio("the file decodes to no audio at all")
        self.length = self.samples if same else int(model_rate * self.samples // self.rate)  # julius' output length
        if stats is None and not same:
            for block in self.blocks():
                moments.add(block)
        self.mean, self.std = stats or moments.result()

    def _decoded(self) -> Iterator[torch.Tensor]:
        """The song at its own rate, [2, k] blocks as they were decoded, from the spill (each pass reads at its own
        offsets, so passes may overlap)."""
        at = 0
        for span in self.spans:
            raw = bytearray(2 * 4 * span)  # writable: the block is the caller's to change
            os.preadv(self.spill.fileno(), [raw], at)
            at += len(raw)
            yield torch.from_numpy(np.frombuffer(raw, dtype=np.float32).reshape(2, span))

    def blocks(self) -> Iterator[torch.Tensor]:
        """[2, k] blocks at the model's rate, `length` samples in all (each a fresh tensor, the caller's to change)."""
        if self.rate == self.model_rate:
            yield from self._decoded()
            return
        resampler = StreamResampler(self.rate, self.model_rate, self.length)
        for block in self._decoded():
            yield resampler.push(block)
        yield resampler.flush()


class _Moments:
    """Demucs' normalization statistics of a song seen block by block: mean and deviation (n - 1) of its mono mix."""

    def __init__(self):
        self.n, self.total, self.squares = 0, 0.0, 0.0

    def add(self, block: torch.Tensor | np.ndarray) -> None:
        ref = (block.double() if torch.is_tensor(block) else torch.from_numpy(block.astype(np.float64))).mean(0)
        self.n += ref.shape[0]
        self.total += float(ref.sum())
        self.squares += float((ref * ref).sum())

    def result(self) -> tuple[float, float]:
        mean = self.total / self.n
        variance = (self.squares - self.n * mean * mean) / max(1, self.n - 1)
        return mean, max(math.sqrt(max(variance, 0.0)), 1e-8)


def _resample(x: torch.Tensor, old: int, new: int, length: int | None = None) -> torch.Tensor:
    if old == new:
        return x
    import julius

    return julius.resample_frac(x, old, new, output_length=length)


class StreamResampler:
    """julius' `resample_frac` applied block by block; equal to resampling the whole signal at once (the same kernel sees
    the same samples, with julius' replicate padding at the song's two ends only)."""

    def __init__(self, old: int, new: int, length: int):
        import julius

        self.kernel = julius.ResampleFrac(old, new)
        g = math.gcd(old, new)
        self.step_in, self.step_out = old // g, new // g
        reach = compat.resampler_reach(self.kernel) + self.step_in  # input samples an output depends on, either side
        self.margin = math.ceil(reach / self.step_in) * self.step_in
        self.length = length  # output samples wanted in all
        self.done = 0
        self.buffer: torch.Tensor | None = None  # margin of history, then the samples not yet resampled

    def _run(self, usable: int) -> torch.Tensor:
        """Resample buffer[margin : margin + usable] (usable a multiple of step_in), keeping margin of history."""
        window = self.buffer[..., : usable + 2 * self.margin]
        y = self.kernel(window)
        first = self.margin // self.step_in * self.step_out
        out = y[..., first : first + usable // self.step_in * self.step_out]
        self.buffer = self.buffer[..., usable:]
        out = out[..., : max(0, self.length - self.done)]
        self.done += out.shape[-1]
        return out

    def push(self, block: torch.Tensor) -> torch.Tensor:
        if self.buffer is None:
            self.buffer = block[..., :1].expand(*block.shape[:-1], self.margin)
        self.buffer = torch.cat([self.buffer, block], dim=-1)
        ready = (self.buffer.shape[-1] - 2 * self.margin) // self.step_in * self.step_in
        return self._run(ready) if ready > 0 else block[..., :0]

    def flush(self) -> torch.Tensor:
        if self.buffer is None:
            return torch.zeros(0)
        pending = self.buffer.shape[-1] - self.margin
        pad = (-pending) % self.step_in + self.margin
        self.buffer = torch.cat([self.buffer, self.buffer[..., -1:].expand(*self.buffer.shape[:-1], pad)], dim=-1)
        out = self._run(pending + (-pending) % self.step_in)
        if self.done < self.length:  # julius rounds the last output sample down; pad as it would (edge value)
            out = torch.cat([out, out[..., -1:].expand(*out.shape[:-1], self.length - self.done)], dim=-1)
            self.done = self.length
        return out


def load_song(source: Path, model_rate: int, max_duration_s: float | None = None) -> tuple[torch.Tensor, int, int]:
    """The song held whole at `model_rate`, [2, n'], with its own length and rate (for an engine that takes it whole)."""
    wave, rate = audio.decode(source, max_duration_s)
    length = wave.shape[1]
    return _resample(torch.from_numpy(wave), rate, model_rate), length, rate
