"""Ensembles: several models over one song, their stems averaged track by track (the waveforms, sample for sample), in one
job. The members run one after another over the song read block by block; the sum so far waits on disk (float32, time
first), so memory stays that of one member whatever the song's length, and the result is exactly the average of each
member's stems alone."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .. import models
from .engine import Emit, ModelUnavailable, Reading, Separator
from .song import SongStream


def track_map(member: list[str], tracks: list[str]) -> list[tuple[int, bool]]:
    """For each of the ensemble's tracks, where a member has it: (its index, False), or (the index of the track it is the
    complement of, True): then it is the member's stems summed less that one, as `two_stems` makes it."""
    out = []
    for track in tracks:
        if track in member:
            out.append((member.index(track), False))
        else:
            out.append((member.index(models.complemented(track)), True))
    return out


class Ensemble:
    """The Separator of several loaded models, whose stems are averaged."""

    can_split = False

    def __init__(self, name: str, members: list[Separator]):
        try:
            self.tracks = models.ensemble_tracks([m.tracks for m in members])
        except ValueError as exc:
            raise ModelUnavailable(f"ensemble {name!r}: {exc}") from None
        rates = {m.samplerate for m in members}
        if len(rates) != 1:
            raise ModelUnavailable(f"ensemble {name!r}: its models run at different rates ({sorted(rates)})")
        self.name, self.members = name, members
        self.samplerate = rates.pop()
        self.device = members[0].device
        self.maps = [track_map(m.tracks, self.tracks) for m in members]

    @property
    def forward_s(self) -> float:
        return sum(m.forward_s for m in self.members)

    def for_track(self, track: str) -> Ensemble | None:
        """The ensemble of each model's cheaper separator for `track`, where any has one."""
        narrowed = [m.for_track(track) or m for m in self.members]
        if all(n is m for n, m in zip(narrowed, self.members, strict=True)):
            return None
        return Ensemble(self.name, narrowed)

    def warm_up(self) -> None:
        for member in self.members:
            member.warm_up()

    def share_batches(self) -> None:
        for member in self.members:
            member.share_batches()

    def _mapped(self, k: int, block: torch.Tensor) -> torch.Tensor:
        total = block.sum(0) if any(rest for _, rest in self.maps[k]) else None
        return torch.stack([total - block[i] if rest else block[i] for i, rest in self.maps[k]])

    def read(self, source: Path, max_duration_s: float | None = None, song: SongStream | None = None) -> Reading:
        readings = [m.read(source, max_duration_s, song) for m in self.members]
        first = readings[0]
        return Reading(first.samples, first.rate, lambda emit, progress: self._separate(readings, emit, progress))

    def stream(self, mix: torch.Tensor, emit: Emit, progress: Callable[[float], None] = lambda f: None) -> None:
        readings = [Reading(mix.shape[-1], self.samplerate, lambda e, p, m=m: m.stream(mix.clone(), e, p)) for m in self.members]
        self._separate(readings, emit, progress)

    def _separate(self, readings: list[Reading], emit: Emit, progress: Callable[[float], None]) -> None:
        n, shape = len(readings), (len(self.tracks), 2)
        before: _Sums | None = None
        for k, reading in enumerate(readings):
            last = k == n - 1
            after = None if last else _Sums(shape)

            def take(block: torch.Tensor, k=k, before=before, after=after, last=last) -> None:
                mapped = self._mapped(k, block)
                if before is not None:
                    mapped = mapped + before.read(mapped.shape[-1])
                if last:
                    emit(mapped / n)
                else:
                    after.write(mapped)

            reading.separate(take, lambda f, k=k: progress((k + f) / n))
            if before is not None:
                before.close()
            before = after


class _Sums:
    """Stems summed so far, on disk: written once in order, then read once in order in blocks of any length."""

    def __init__(self, shape: tuple[int, int]):
        self.shape = shape
        self.file = tempfile.TemporaryFile(prefix="msaas-ensemble-")  # noqa: SIM115 (closed by close)
        self.written = self.read_at = 0

    def write(self, block: torch.Tensor) -> None:
        self.file.write(block.permute(2, 0, 1).contiguous().numpy().astype(np.float32, copy=False).tobytes())
        self.written += block.shape[-1]

    def read(self, k: int) -> torch.Tensor:
        if self.read_at == 0:
            self.file.seek(0)
        if self.read_at + k > self.written:
            raise ValueError(f"an ensemble's models gave songs of different lengths ({self.written} samples, then more)")
        count = k * self.shape[0] * self.shape[1]
        data = np.frombuffer(self.file.read(count * 4), dtype=np.float32).reshape(k, *self.shape)
        self.read_at += k
        return torch.from_numpy(data.copy()).permute(1, 2, 0)

    def close(self) -> None:
        self.file.close()
