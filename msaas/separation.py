"""Separation in-process: load a model once, decode a song, run the model, encode each stem sample-exact."""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from . import audio, models

log = logging.getLogger(__name__)
Progress = Callable[[str, float], None]  # (stage, fraction of that stage done)


class ModelUnavailable(RuntimeError):
    """The model's weights cannot be loaded here (no network, not cached, unknown name)."""


Emit = Callable[[torch.Tensor], None]  # receives [tracks, 2, n] blocks, in order, each final


class Separator(Protocol):
    name: str
    tracks: list[str]
    samplerate: int

    def stream(self, mix: torch.Tensor, emit: Emit, progress: Callable[[float], None]) -> None:
        """[2, n] at `samplerate` -> `emit` called with consecutive [len(tracks), 2, k] blocks that add up to n samples.

        `mix` is the separator's to overwrite (a long song is not copied): pass a clone to keep it."""
        ...


def separate_all(separator: Separator, mix: torch.Tensor, progress: Callable[[float], None] = lambda f: None) -> torch.Tensor:
    """The whole song's stems at once, [len(tracks), 2, n] (for tests and small songs)."""
    blocks: list[torch.Tensor] = []
    separator.stream(mix.clone(), blocks.append, progress)
    return torch.cat(blocks, dim=-1)


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

    def stream(self, mix: torch.Tensor, emit: Emit, progress: Callable[[float], None] = lambda f: None) -> None:
        """What `apply_model(split=True, overlap=0.25, shifts=0)` computes, chunk by chunk, each stretch of output emitted as
        soon as no later chunk touches it: memory holds one segment of output, whatever the song's length."""
        from demucs.apply import BagOfModels, TensorChunk, apply_model

        bag = self.model if isinstance(self.model, BagOfModels) else None
        members = list(bag.models) if bag else [self.model]
        weights = torch.tensor(bag.weights if bag else [[1.0] * len(self.tracks)], dtype=torch.float32)
        share = (weights / weights.sum(0))[:, :, None, None]  # each member's part of each source, as apply_model weighs bags
        segments = {float(m.segment) for m in members}
        if len(segments) != 1:
            raise ValueError(f"model {self.name!r} mixes segment lengths {sorted(segments)}, which MSaaS does not stream")
        segment_length = int(self.samplerate * segments.pop())
        stride = int(0.75 * segment_length)
        length = mix.shape[-1]
        ramp = torch.arange(1, segment_length // 2 + 1, dtype=torch.float32)
        weight = torch.cat([ramp, torch.arange(segment_length - segment_length // 2, 0, -1, dtype=torch.float32)])
        weight = weight / weight.max()  # demucs' triangular crossfade between chunks

        ref = mix.mean(0)
        mean, std = ref.mean(), ref.std().clamp_min(1e-8)
        del ref
        normalized = mix.sub_(mean).div_(std)[None]  # in place: the song is held once
        out = torch.zeros(len(self.tracks), 2, segment_length)
        total = torch.zeros(segment_length)
        offsets = list(range(0, length, stride))
        with torch.inference_mode():
            for i, offset in enumerate(offsets):
                chunk = TensorChunk(normalized, offset, segment_length)
                estimate = sum(
                    apply_model(member, chunk, shifts=0, split=False, device=self.device)[0].cpu() * share[m]
                    for m, member in enumerate(members)
                )
                n = estimate.shape[-1]
                out[..., :n] += weight[:n] * estimate
                total[:n] += weight[:n]
                final = (offsets[i + 1] if i + 1 < len(offsets) else length) - offset
                emit(out[..., :final] / total[:final] * std + mean)
                out = torch.cat([out[..., final:], torch.zeros(len(self.tracks), 2, final)], dim=-1)
                total = torch.cat([total[final:], torch.zeros(final)])
                progress((i + 1) / len(offsets))


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


class StreamResampler:
    """julius' `resample_frac` applied block by block; equal to resampling the whole signal at once (the same kernel sees
    the same samples, with julius' replicate padding at the song's two ends only)."""

    def __init__(self, old: int, new: int, length: int):
        import julius

        self.kernel = julius.ResampleFrac(old, new)
        g = math.gcd(old, new)
        self.step_in, self.step_out = old // g, new // g
        reach = self.kernel._width + self.step_in  # input samples an output depends on, either side
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


class StemEncoders:
    """Each track's encoder, fed from a thread of its own so that encoding overlaps with the model's compute; the
    queue between them is bounded, so a slow encoder holds back the separator instead of piling up audio."""

    def __init__(self, paths: dict[str, Path], rate: int, fmt: str, bitrate: int, depth: int = 4):
        self.writers = {track: audio.StemWriter(path, rate, fmt, bitrate) for track, path in paths.items()}
        self.blocks: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="encoders", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (block := self.blocks.get()) is not None:
            if self.error is None:
                try:
                    for i, writer in enumerate(self.writers.values()):
                        writer.write(block[i].numpy())
                except BaseException as exc:  # handed to the separating thread at its next put or at close
                    self.error = exc

    def put(self, block: torch.Tensor) -> None:
        if self.error is not None:
            raise self.error
        if block.shape[-1]:
            self.blocks.put(block)

    def close(self) -> None:
        self.blocks.put(None)
        self.thread.join()
        for writer in self.writers.values():
            writer.close()
        if self.error is not None:
            raise self.error


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
    info: dict | None = None,
) -> dict[str, Path]:
    """Separate one song file into stem files in `out_dir`; every stem has the input's rate and length.
    `info`, when given, receives the song's `samples` and `rate`.

    Stems are encoded as the separator emits them: no stem of the whole song is ever held in memory."""
    progress("decoding", 0.0)
    wave, rate = audio.decode(source, max_duration_s)
    length = wave.shape[1]
    if info is not None:
        info.update(samples=length, rate=rate)
    mix = _resample(torch.from_numpy(wave), rate, separator.samplerate)
    del wave
    tracks = list(separator.tracks)
    pick = tracks.index(two_stems) if two_stems else None
    if two_stems:
        tracks = [two_stems, f"no_{two_stems}"]
    ext = audio.FORMATS[fmt][3]
    paths = {track: out_dir / f"{track}.{ext}" for track in tracks}
    encoders = StemEncoders(paths, rate, fmt, bitrate)
    back = StreamResampler(separator.samplerate, rate, length) if rate != separator.samplerate else None

    def emit(block: torch.Tensor) -> None:
        if pick is not None:
            block = torch.stack([block[pick], block.sum(0) - block[pick]])
        encoders.put(back.push(block) if back else block)

    try:
        separator.stream(mix, emit, lambda f: progress("separating", f))
        if back:
            encoders.put(back.flush())
    finally:
        progress("encoding", 0.5)
        encoders.close()
    return paths
