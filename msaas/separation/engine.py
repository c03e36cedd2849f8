"""What every separation engine offers its callers (Separator), how one is loaded by name, and the error for weights
that are not here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from .. import models
from .devices import pick_device
from .song import SongStream, load_song

Progress = Callable[[str, float], None]  # (stage, fraction of that stage done)


Emit = Callable[[torch.Tensor], None]  # receives [tracks, 2, n] blocks, in order, each final


class ModelUnavailable(RuntimeError):
    """The model's weights cannot be loaded here (no network, not cached, unknown name)."""


@dataclass(frozen=True)
class Reading:
    """A song file opened by an engine: its own length and rate (which every stem gets), and what separates it."""

    samples: int
    rate: int
    separate: Callable[[Emit, Callable[[float], None]], None]  # (emit, progress): blocks at the engine's rate, in order


class Separator(Protocol):
    """A loaded model, as its callers use it: they rely on what is here and never check an engine's class."""

    name: str
    tracks: list[str]  # the stems, in the model's order
    samplerate: int  # the rate the model runs at (songs are resampled to it and their stems back)
    device: torch.device  # where the model runs (beside a GPU the stems' encoders get every CPU)
    forward_s: float  # wall time in the model's forward passes, all songs together: a job's share is the difference
    can_split: bool  # one song can be separated in parts by several workers and stitched (splitting.py)

    def warm_up(self) -> None:
        """Run the model once on silence, so that its first song does not pay for a fresh process's first pass."""
        ...

    def for_track(self, track: str) -> Separator | None:
        """A cheaper separator for `two_stems=track`: `track` exactly as this one gives it, the other tracks only so that
        their sum stands for the rest; None when there is none (every engine but a Demucs bag of specialists)."""
        ...

    def share_batches(self) -> None:
        """Songs separated at once in this process (JOBS_IN_FLIGHT) put their chunks in the same batches where the engine
        batches chunks (Demucs); elsewhere they take turns on the model."""
        ...

    def read(self, source: Path, max_duration_s: float | None = None, song: SongStream | None = None) -> Reading:
        """`source` opened for separation: its own length and rate, and what runs the model over it. `song`: the file
        already read as a SongStream (its first pass done), for an engine that reads songs block by block."""
        ...

    def stream(self, mix: torch.Tensor, emit: Emit, progress: Callable[[float], None]) -> None:
        """[2, n] at `samplerate` -> `emit` called with consecutive [len(tracks), 2, k] blocks that add up to n samples.

        `mix` is the separator's to overwrite (a long song is not copied): pass a clone to keep it."""
        ...


class WholeSong:
    """`read` for an engine whose `stream` takes the song whole: the file decoded at once, at the engine's rate."""

    samplerate: int

    def stream(self, mix: torch.Tensor, emit: Emit, progress: Callable[[float], None]) -> None:
        raise NotImplementedError

    def read(self, source: Path, max_duration_s: float | None = None, song: SongStream | None = None) -> Reading:
        mix, samples, rate = load_song(source, self.samplerate, max_duration_s)
        return Reading(samples, rate, lambda emit, progress: self.stream(mix, emit, progress))


def separate_all(separator: Separator, mix: torch.Tensor, progress: Callable[[float], None] = lambda f: None) -> torch.Tensor:
    """The whole song's stems at once, [len(tracks), 2, n] (for tests and small songs)."""
    blocks: list[torch.Tensor] = []
    separator.stream(mix.clone(), blocks.append, progress)
    return torch.cat(blocks, dim=-1)


@dataclass(frozen=True)
class Inference:
    """How a Demucs model runs its chunks: `batch` of them per forward pass (DEMUCS_BATCH; 0: the device's default) in
    `precision` (DEMUCS_PRECISION: fp32, fp16 or bf16; the STFT, iSTFT and normalizations stay FP32), on `engine`
    (DEMUCS_ENGINE: torch, onnx for ONNX Runtime on the CPU, or auto: whichever runs a chunk faster at warm-up)."""

    batch: int = 0
    precision: str = "fp32"
    engine: str = "torch"


def load_separator(name: str, repo: Path | None = None, device: str = "auto", inference: Inference = Inference()) -> Separator:
    """The engine the model table names for `name`, its weights loaded (from `repo`, a DEMUCS_REPO, when given)."""
    members = models.ensemble_members(name)
    if members:
        from .ensemble import Ensemble

        return Ensemble(name, [load_separator(m, repo, device, inference) for m in members])
    info = models.catalog(repo).get(name)
    if info is None:
        raise ModelUnavailable(f"unknown model {name!r}; known: {', '.join(sorted(models.catalog(repo)))}")
    if info["engine"] == "spleeter":
        from .spleeter import SpleeterSeparator

        return SpleeterSeparator(pick_device(device))
    if info["engine"] == "roformer":
        from .roformer import RoformerSeparator

        return RoformerSeparator(name, repo, pick_device(device))
    from .demucs import DemucsSeparator

    return DemucsSeparator(name, repo, pick_device(device), inference)
