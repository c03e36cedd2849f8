"""The RoFormer engine: band-split and mel-band RoFormer checkpoints (a `.ckpt` state dict and the `.yaml` config it was
trained with, as Music-Source-Separation-Training publishes them), streamed the way that project's inference cuts a song:
chunks of the config's `chunk_size` every `chunk_size // num_overlap` samples, each output faded in and out linearly over
a tenth of a chunk, summed and divided by the fades' sum, the song mirrored at both ends by the chunks' overlap. Here the
song is read block by block and each stretch of stems emitted as soon as no later chunk touches it: memory flat in its
length. A single-target model (a vocals model) gives the target and the song minus it, so the two sum to the song."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import models
from .engine import Emit, ModelUnavailable, Reading
from .roformer_nets import build
from .song import SongStream


def model_kind(config: dict) -> str:
    """bs_roformer or mel_band_roformer, from the config's `model:` section (the published configs do not say)."""
    params = config.get("model") or {}
    if "freqs_per_bands" in params:
        return "bs_roformer"
    if "num_bands" in params:
        return "mel_band_roformer"
    raise ModelUnavailable("the config describes neither a band-split (freqs_per_bands) nor a mel-band (num_bands) RoFormer")


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors, read without unpickling anything else (weights_only)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items()}


def find_files(name: str, repo: Path | None) -> tuple[Path, Path]:
    """The checkpoint and config: from the model directory when DEMUCS_REPO is set (never downloaded then: an air-gapped
    cluster says so at once), else a named model from the download cache, downloaded there on first use."""
    from torch.hub import get_dir

    torch_home = Path(get_dir()).parent  # torch's own rule (TORCH_HOME), as demucs' downloads follow it
    ckpt, config = models.roformer_files(name, repo, torch_home)
    if ckpt is not None:
        return ckpt, config
    how = f"fetch them with `msaas fetch-model {name} DIR` where there is network, and set DEMUCS_REPO=DIR"
    if repo is not None or name not in models.ROFORMERS:
        raise ModelUnavailable(f"model {name!r}: its checkpoint and config are not in the model directory {repo}; {how}")
    from ..fetch import roformer_files

    try:
        roformer_files(name, models.roformer_cache(torch_home), models.ROFORMERS[name])
    except Exception as exc:  # no network, a host gone: the job fails at once with what to do
        raise ModelUnavailable(
            f"model {name!r} could not be downloaded ({exc.__class__.__name__}: {str(exc)[:150]}); {how}"
        ) from None
    return models.roformer_files(name, repo, torch_home)  # type: ignore[return-value]


class RoformerSeparator:
    """A RoFormer checkpoint from the model directory: `<name>.ckpt` and `<name>.yaml`."""

    can_split = False  # splitting.py cuts songs along Demucs' chunk plan

    def __init__(self, name: str, repo: Path | None, device: torch.device):
        ckpt, config_file = find_files(name, repo)
        config = models.read_roformer_config(config_file)
        try:
            self.net = build(model_kind(config), dict(config["model"]))
            self.net.load_state_dict(load_state(ckpt))
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ModelUnavailable(
                f"model {name!r}: {ckpt.name} does not load with {config_file.name}: {str(exc)[:300]}"
            ) from None
        self.net = self.net.to(device).eval()
        self.name = name
        self.device = device
        self.tracks = models.roformer_tracks(config)
        self.samplerate = int(config["audio"]["sample_rate"])
        self.chunk = int(config["audio"]["chunk_size"])
        self.overlap = int((config.get("inference") or {}).get("num_overlap", 2))
        self.forward_s = 0.0

    def for_track(self, track: str) -> None:
        return None  # one network gives every track

    def share_batches(self) -> None:
        pass  # songs in flight together take turns on the network, chunk by chunk

    def warm_up(self) -> None:
        """One chunk of silence through the network (a fresh process's first pass costs a few times the next ones)."""
        for _ in self._chunks(iter([torch.zeros(2, self.chunk)]), self.chunk):
            pass
        self.forward_s = 0.0

    def read(self, source: Path, max_duration_s: float | None = None, song: SongStream | None = None) -> Reading:
        """Block by block: a first pass for the length, the second as the model goes."""
        song = song or SongStream(source, self.samplerate, max_duration_s)
        return Reading(song.samples, song.rate, lambda emit, progress: self._separate(song.blocks(), song.length, emit, progress))

    def stream(self, mix: torch.Tensor, emit: Emit, progress: Callable[[float], None] = lambda f: None) -> None:
        self._separate(iter([mix]), mix.shape[-1], emit, progress)

    def _separate(self, blocks: Iterator[torch.Tensor], length: int, emit: Emit, progress: Callable[[float], None]) -> None:
        target_only = len(self.tracks) == 2 and self.tracks[1] == models.complement(self.tracks[0])
        for mix, stems in self._chunks(blocks, length, progress):
            emit(torch.cat([stems, (mix - stems[0])[None]]) if target_only else stems)

    def _chunks(
        self, blocks: Iterator[torch.Tensor], length: int, progress: Callable[[float], None] = lambda f: None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(the song, its stems) over consecutive stretches, [2, k] and [stems, 2, k], that add up to `length` samples."""
        size, step = self.chunk, self.chunk // self.overlap
        song = Mirrored(blocks, length, size - step)
        padded = length + 2 * song.border
        fade = size // 10 if step < size - size // 10 else 0  # chunks that do not overlap are not faded
        window = torch.ones(size)
        if fade:
            window[:fade], window[-fade:] = torch.linspace(0, 1, fade), torch.linspace(1, 0, fade)
        offsets = range(0, padded, step)
        sums = weights = None  # from padded sample `at` on
        at = 0
        with torch.inference_mode():
            for i, offset in enumerate(offsets):
                part = song.padded(offset, min(size, padded - offset))
                n = part.shape[-1]
                if n < size:
                    part = F.pad(part[None], (0, size - n), mode="reflect" if n > size // 2 else "constant")[0]
                started = time.perf_counter()
                out = self.net(part[None].to(self.device))[0, :, :, :n].float().cpu()  # [stems, 2, n]
                self.forward_s += time.perf_counter() - started
                w = window.clone()  # flat where no other chunk covers the song: its first start, its last end
                if fade and offset == 0:
                    w[:fade] = 1
                if fade and offset + step >= padded:
                    w[-fade:] = 1
                w = w[:n]
                if sums is None:
                    sums, weights = out * w, w
                else:  # the new chunk reaches at least as far as the ones before it
                    rel = offset - at
                    grown, total = torch.zeros(*out.shape[:-1], rel + n), torch.zeros(rel + n)
                    grown[..., : sums.shape[-1]], total[: weights.shape[-1]] = sums, weights
                    grown[..., rel:] += out * w
                    total[rel:] += w
                    sums, weights = grown, total
                final = (offset + step if i + 1 < len(offsets) else padded) - at
                lo, hi = max(at, song.border), min(at + final, song.border + length)  # the song's own samples
                if lo < hi:
                    stems = sums[..., lo - at : hi - at] / weights[lo - at : hi - at]
                    yield song.samples(lo - song.border, hi - song.border), stems
                sums, weights, at = sums[..., final:], weights[final:], at + final
                progress((i + 1) / len(offsets))


class Mirrored:
    """A song read from a stream of [2, n] blocks, seen padded by `border` mirrored samples at each end (as
    `F.pad(mode="reflect")` pads it, and not at all when it is not longer than two borders): chunks must be asked for in
    order, and the buffer holds from the current chunk's start (less a border) on, whatever the song's length."""

    def __init__(self, blocks: Iterator[torch.Tensor], length: int, border: int):
        self.blocks, self.length = blocks, length
        self.border = border if length > 2 * border and border > 0 else 0
        self.buffer = torch.zeros(2, 0)
        self.start = 0  # the song's sample at buffer[..., 0]
        self.most = 0  # the longest the buffer has been (samples)

    def _have(self, stop: int) -> None:
        pending, have = [], self.start + self.buffer.shape[-1]
        while have < stop:
            block = next(self.blocks, None)
            if block is None:
                raise ValueError(f"the song ended at {have} samples, not {self.length}")
            pending.append(block)
            have += block.shape[-1]
        if pending:
            self.buffer = torch.cat([self.buffer, *pending], dim=-1)
            self.most = max(self.most, self.buffer.shape[-1])

    def samples(self, lo: int, hi: int) -> torch.Tensor:
        """The song's own samples [lo, hi), still in the buffer."""
        self._have(hi)
        return self.buffer[..., lo - self.start : hi - self.start]

    def padded(self, offset: int, n: int) -> torch.Tensor:
        """Samples [offset, offset + n) of the padded song."""
        b, last = self.border, self.length - 1
        index = torch.arange(offset - b, offset - b + n)
        index = torch.where(index < 0, -index, index)
        index = torch.where(index > last, 2 * last - index, index)
        keep = max(0, min(offset - b, last - b))  # what this and later chunks still need (the end mirrors back)
        if keep > self.start:
            drop = min(keep - self.start, self.buffer.shape[-1])
            self.buffer, self.start = self.buffer[..., drop:], self.start + drop
        self._have(int(index.max()) + 1)
        return self.buffer[:, index - self.start]
