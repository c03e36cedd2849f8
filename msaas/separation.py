"""Separation in-process: load a model once, decode a song, run the model, encode each stem sample-exact."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from . import audio, models

log = logging.getLogger(__name__)
Progress = Callable[[str, float], None]  # (stage, fraction of that stage done)


class ModelUnavailable(RuntimeError):
    """The model's weights cannot be loaded here (no network, not cached, unknown name)."""


class Separator(Protocol):
    name: str
    tracks: list[str]
    samplerate: int

    def separate(self, mix: torch.Tensor, progress: Callable[[float], None]) -> torch.Tensor:
        """[2, n] at `samplerate` -> [len(tracks), 2, n]."""
        ...


def cpu_budget() -> int:
    """CPUs this process may really use: its affinity, capped by a cgroup v2/v1 CPU quota."""
    cpus = len(os.sched_getaffinity(0))
    quota = None
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if text[0] != "max":
            quota = int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        try:
            q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
            p = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
            quota = q / p if q > 0 else None
        except (OSError, ValueError):
            pass
    if quota:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


class DemucsSeparator:
    """A Demucs model (or bag of models) loaded through `demucs.pretrained.get_model`."""

    def __init__(self, name: str, repo: Path | None, device: torch.device):
        from demucs.pretrained import get_model

        try:
            model = get_model(name, repo)
        except SystemExit as exc:  # demucs calls sys.exit on a bad --repo
            raise ModelUnavailable(f"model {name!r}: {exc}") from None
        except Exception as exc:
            where = f"the model directory {repo}" if repo else "the model hub or the local cache"
            raise ModelUnavailable(
                f"model {name!r} could not be loaded from {where} ({exc.__class__.__name__}: {str(exc)[:200]}); "
                "put its weights in DEMUCS_REPO with `msaas fetch-model`"
            ) from None
        self.model = model.to(device).eval()
        self.device = device
        self.name = name
        self.tracks = list(model.sources)
        self.samplerate = int(model.samplerate)

    def separate(self, mix: torch.Tensor, progress: Callable[[float], None]) -> torch.Tensor:
        from demucs.apply import BagOfModels, apply_model

        n_models = len(self.model.models) if isinstance(self.model, BagOfModels) else 1
        segment = (
            float(getattr(self.model, "max_allowed_segment", None) or self.model.models[0].segment)
            if isinstance(self.model, BagOfModels)
            else float(self.model.segment)
        )
        stride = int(0.75 * int(self.samplerate * segment))
        total = n_models * max(1, math.ceil(mix.shape[-1] / max(1, stride)))
        done = 0

        def on_chunk(info: dict) -> None:
            nonlocal done
            if info.get("state") == "end":
                done += 1
                progress(min(1.0, done / total))

        ref = mix.mean(0)
        mean, std = ref.mean(), ref.std().clamp_min(1e-8)
        with torch.inference_mode():
            out = apply_model(
                self.model,
                ((mix - mean) / std)[None],
                shifts=0,
                split=True,
                overlap=0.25,
                progress=False,
                device=self.device,
                callback=on_chunk,
            )[0]
        return out * std + mean


def load_separator(name: str, repo: Path | None = None, device: str = "auto") -> Separator:
    info = models.catalog(repo).get(name)
    if info is None:
        raise ModelUnavailable(f"unknown model {name!r}; known: {', '.join(sorted(models.catalog(repo)))}")
    if info["engine"] == "spleeter":
        from .spleeter import SpleeterSeparator

        return SpleeterSeparator(pick_device(device))
    return DemucsSeparator(name, repo, pick_device(device))


def _resample(x: torch.Tensor, old: int, new: int, length: int | None = None) -> torch.Tensor:
    if old == new:
        return x
    import julius

    return julius.resample_frac(x, old, new, output_length=length)


def separate_file(
    separator: Separator,
    source: Path,
    out_dir: Path,
    *,
    fmt: str = "mp3",
    bitrate: int = audio.DEFAULT_BITRATE,
    two_stems: str | None = None,
    max_duration_s: float | None = None,
    progress: Progress = lambda stage, fraction: None,
) -> dict[str, Path]:
    """Separate one song file into stem files in `out_dir`; every stem has the input's rate and length."""
    progress("decoding", 0.0)
    wave, rate = audio.decode(source, max_duration_s)
    length = wave.shape[1]
    mix = _resample(torch.from_numpy(wave), rate, separator.samplerate)
    stems = separator.separate(mix, lambda f: progress("separating", f))
    del mix
    tracks = list(separator.tracks)
    if two_stems:
        k = tracks.index(two_stems)
        stems = torch.stack([stems[k], stems.sum(0) - stems[k]])
        tracks = [two_stems, f"no_{two_stems}"]
    ext = audio.FORMATS[fmt][3]
    written: dict[str, Path] = {}
    for i, track in enumerate(tracks):
        progress("encoding", i / len(tracks))
        stem = _resample(stems[i], separator.samplerate, rate, length).numpy().astype(np.float32, copy=False)
        path = out_dir / f"{track}.{ext}"
        audio.encode(path, stem, rate, fmt, bitrate)
        written[track] = path
    return written
