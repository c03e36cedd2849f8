"""A song's stems mixed back into one file with a gain per track (what a listener made in the page's mixer, or karaoke:
every track but the vocals): the stems decoded block by block side by side, summed, encoded as stems are. No torch here."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from . import audio

MAX_GAIN = 4.0  # +12 dB: more only clips


class BadGains(ValueError):
    pass


def parse_gains(query: dict[str, str], tracks: list[str]) -> dict[str, float]:
    """`?vocals=0&drums=1.5`: a gain per named track, 0 to MAX_GAIN; a track not named keeps 1."""
    gains = dict.fromkeys(tracks, 1.0)
    for name, value in query.items():
        if name not in gains:
            raise BadGains(f"the song has no track {name!r}; its tracks: {', '.join(tracks)}")
        try:
            gain = float(value)
        except ValueError:
            gain = float("nan")
        if not 0.0 <= gain <= MAX_GAIN:  # NaN fails too
            raise BadGains(f"the gain of {name} must be a number from 0 to {MAX_GAIN:g}, not {value!r}")
        gains[name] = gain
    return gains


class _Blocks:
    """One stem's decoded samples, taken in blocks of any length."""

    def __init__(self, blocks: Iterator[np.ndarray]):
        self.blocks, self.pending = blocks, np.zeros((2, 0), dtype=np.float32)

    def take(self, n: int) -> np.ndarray:
        while self.pending.shape[1] < n:
            block = next(self.blocks, None)
            if block is None:
                break
            block = np.broadcast_to(block, (2, block.shape[1])) if block.shape[0] == 1 else block
            self.pending = np.concatenate([self.pending, block], axis=1)
        out, self.pending = self.pending[:, :n], self.pending[:, n:]
        return out


def _silence(length: int, block: int) -> Iterator[np.ndarray]:
    for at in range(0, length, block):
        yield np.zeros((2, min(block, length - at)), dtype=np.float32)


def _summed(sources: list[tuple[_Blocks, np.float32]], block: int) -> Iterator[np.ndarray]:
    """The sources' weighted sum, block by block, as long as all of them last (every stem has the song's length)."""
    while True:
        parts = [(source.take(block), gain) for source, gain in sources]
        n = min(p.shape[1] for p, _ in parts)
        if n == 0:
            return
        yield np.clip(sum(p[:, :n] * gain for p, gain in parts), -1.0, 1.0).astype(np.float32)


def mix(stems: dict[str, Path], gains: dict[str, float], out: Path, fmt: str, bitrate: int, block: int = 1 << 16) -> int:
    """Write the stems' weighted sum to `out` in `fmt`; every stem has the song's length and rate, and so has the mix.
    Returns its length in samples. Tracks of gain 0 are not decoded at all (but for the length, when all of them are)."""
    heard = {track: path for track, path in stems.items() if gains.get(track, 1.0) > 0}
    with contextlib.ExitStack() as opened:
        decoders = {track: opened.enter_context(audio.Decoder(path)) for track, path in heard.items()}
        if decoders:
            rate = next(iter(decoders.values())).rate
            blocks = _summed([(_Blocks(d.blocks()), np.float32(gains.get(t, 1.0))) for t, d in decoders.items()], block)
        else:  # everything muted: silence of the song's length
            info = audio.probe(next(iter(stems.values())))
            rate, blocks = info.sample_rate, _silence(info.samples, block)
        writer = audio.open_stem_file(out, rate, fmt, bitrate)
        written = 0
        try:
            for data in blocks:
                writer.write(data)
                written += data.shape[1]
        finally:
            writer.close()
    return written
