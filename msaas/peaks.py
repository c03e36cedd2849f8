"""A stem's waveform for drawing: the loudest sample of every 1/PEAKS_PER_S of a second, taken from the blocks as they
are encoded (no second decode), stored beside the stem as JSON (`<songhash>-<track>.peaks.json`):

    {"rate": 44100, "samples": 132300, "span": 882, "scale": 255, "peaks": [0, 17, 255, ...]}

`peaks[k]` is the largest |sample| over both channels of samples `k*span` to `(k+1)*span` (the last span may be short),
as a fraction of `scale`, rounded up (any sound shows); `len(peaks) == ceil(samples / span)`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

PEAKS_PER_S = 50  # 20 ms a peak: a 10-minute stem is 30,000 peaks, about 100 kB of JSON
SCALE = 255


def path_for(stem: Path) -> Path:
    """Where a stem file's peaks are written beside it: `vocals.mp3` -> `vocals.peaks.json`."""
    return stem.with_name(f"{stem.stem}.peaks.json")


class Peaks:
    """Fed the stem's blocks ([channels, n] floats at `rate`) in order; `finish` gives the JSON form."""

    def __init__(self, rate: int):
        self.rate = rate
        self.span = max(1, rate // PEAKS_PER_S)
        self.samples = 0
        self.values: list[int] = []
        self.pending = np.zeros(0, dtype=np.float32)

    def add(self, block: np.ndarray) -> None:
        loudest = np.abs(block).max(axis=0) if block.ndim == 2 else np.abs(block)
        self.samples += loudest.shape[0]
        data = np.concatenate([self.pending, loudest]) if self.pending.size else loudest
        whole = data.shape[0] // self.span * self.span
        if whole:
            self.values.extend(_quantized(data[:whole].reshape(-1, self.span).max(axis=1)))
        self.pending = data[whole:]

    def finish(self) -> dict:
        if self.pending.size:
            self.values.extend(_quantized(self.pending.max(keepdims=True)))
            self.pending = self.pending[:0]
        assert len(self.values) == math.ceil(self.samples / self.span)
        return {"rate": self.rate, "samples": self.samples, "span": self.span, "scale": SCALE, "peaks": self.values}

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.finish(), separators=(",", ":")))


def _quantized(values: np.ndarray) -> list[int]:
    return np.ceil(np.minimum(values, 1.0) * SCALE).astype(int).tolist()
