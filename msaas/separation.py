"""Separation in-process: load a model once, decode a song, run the model, encode each stem sample-exact."""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import torch

from . import audio, lame, models, parallel_mp3

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


def torch_threads(setting: int, device: str) -> int:
    """Torch's CPU threads: `setting` when set; else every CPU this process may use for a model on the CPU, and one for a
    model on a GPU (torch then only adds blocks up on the CPU, while OpenMP threads spinning between those small loops
    would hold the CPUs that the stems' encoders need)."""
    if setting > 0:
        return setting
    return cpu_budget() if pick_device(device).type == "cpu" else 1


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
        self.forward_s = 0.0  # wall time spent in the model's forward passes, all songs together

    def _members(self) -> tuple[list, torch.Tensor]:
        from demucs.apply import BagOfModels

        bag = self.model if isinstance(self.model, BagOfModels) else None
        members = list(bag.models) if bag else [self.model]
        weights = torch.tensor(bag.weights if bag else [[1.0] * len(self.tracks)], dtype=torch.float32)
        return members, (weights / weights.sum(0))[:, :, None, None]  # each member's part of each source, as apply_model weighs

    def chunk_plan(self, length: int) -> ChunkPlan:
        segments = {float(m.segment) for m in self._members()[0]}
        if len(segments) != 1:
            raise ModelUnavailable(f"model {self.name!r} mixes segment lengths {sorted(segments)}, which MSaaS does not stream")
        return ChunkPlan(length, int(self.samplerate * segments.pop()))

    def weighted_chunks(
        self, source: ChunkSource, plan: ChunkPlan, chunks: range, progress: Callable[[float], None] = lambda f: None
    ) -> Iterator[torch.Tensor]:
        """Each chunk's estimate times its crossfade weight, [tracks, 2, n], for the chunks numbered `chunks`."""
        from demucs.apply import apply_model

        members, share = self._members()
        with torch.inference_mode():
            for done, i in enumerate(chunks, 1):
                chunk = source(plan.offsets[i], plan.segment_length)
                started = time.perf_counter()
                estimate = sum(
                    apply_model(member, chunk, shifts=0, split=False, device=self.device)[0].cpu() * share[m]
                    for m, member in enumerate(members)
                )
                self.forward_s += time.perf_counter() - started
                yield plan.weight[: estimate.shape[-1]] * estimate
                progress(done / len(chunks))

    def warm_up(self) -> None:
        """One chunk of silence through the model: a fresh process's first forward pass costs a few times the next
        ones (kernels picked and memory laid out for these shapes), which would otherwise land on the first song."""
        plan = self.chunk_plan(self.chunk_plan(1).segment_length)
        for _ in self.weighted_chunks(whole(torch.zeros(2, plan.length)), plan, range(1)):
            pass
        self.forward_s = 0.0

    def stream(self, mix: torch.Tensor, emit: Emit, progress: Callable[[float], None] = lambda f: None) -> None:
        """What `apply_model(split=True, overlap=0.25, shifts=0)` computes, chunk by chunk, each stretch of output emitted as
        soon as no later chunk touches it: memory holds one segment of output, whatever the song's length."""
        plan = self.chunk_plan(mix.shape[-1])
        mean, std = normalize_(mix)
        self._separate(whole(mix), plan, mean, std, emit, progress)

    def stream_song(self, song: SongStream, emit: Emit, progress: Callable[[float], None] = lambda f: None) -> None:
        """`stream` for a song read from its file block by block: memory holds a few segments of it, never all of it."""
        plan = self.chunk_plan(song.length)
        self._separate(Window(song.blocks(), song.mean, song.std), plan, song.mean, song.std, emit, progress)

    def _separate(
        self, source: ChunkSource, plan: ChunkPlan, mean: float, std: float, emit: Emit, progress: Callable[[float], None]
    ) -> None:
        chunks = range(len(plan.offsets))
        for start, block in plan.overlap_add(chunks, self.weighted_chunks(source, plan, chunks, progress)):
            emit(block / plan.totals(start, start + block.shape[-1]) * std + mean)


class ChunkPlan:
    """How `apply_model(split=True, overlap=0.25)` cuts a song of `length` samples: chunks of `segment_length` every
    `stride` samples, each output weighted by a triangular crossfade, the weighted sum divided by the weights' sum.

    Sums are taken in chunk order (at most two chunks cover a sample), so any run of chunks computed apart and added
    afterwards (`overlap_add`, then `splitting.stitch`) gives exactly the whole song's numbers."""

    def __init__(self, length: int, segment_length: int):
        self.length = length
        self.segment_length = segment_length
        self.stride = int(0.75 * segment_length)
        self.offsets = list(range(0, length, self.stride))
        ramp = torch.arange(1, segment_length // 2 + 1, dtype=torch.float32)
        weight = torch.cat([ramp, torch.arange(segment_length - segment_length // 2, 0, -1, dtype=torch.float32)])
        self.weight = weight / weight.max()  # demucs' triangular crossfade between chunks

    def end(self, i: int) -> int:
        return min(self.offsets[i] + self.segment_length, self.length)

    def span(self, chunks: range) -> tuple[int, int]:
        """The samples that the chunks numbered `chunks` touch."""
        return self.offsets[chunks.start], self.end(chunks.stop - 1)

    def split(self, parts: int) -> list[range]:
        """The chunks cut into `parts` consecutive runs of nearly equal length."""
        n = len(self.offsets)
        parts = max(1, min(parts, n))
        return [range(n * k // parts, n * (k + 1) // parts) for k in range(parts)]

    def totals(self, start: int, stop: int) -> torch.Tensor:
        """The sum of the chunks' weights at samples [start, stop)."""
        total = torch.zeros(stop - start)
        first = max(0, (start - self.segment_length) // self.stride)
        for i in range(first, len(self.offsets)):
            offset = self.offsets[i]
            if offset >= stop:
                break
            lo, hi = max(start, offset), min(stop, self.end(i))
            if lo < hi:
                total[lo - start : hi - start] += self.weight[lo - offset : hi - offset]
        return total

    def overlap_add(self, chunks: range, weighted: Iterable[torch.Tensor]) -> Iterator[tuple[int, torch.Tensor]]:
        """Sum the weighted outputs of consecutive chunks; yields (first sample, [tracks, 2, k]) blocks as soon as no
        later chunk of the run touches them, ending with the last chunk's whole tail."""
        pending: torch.Tensor | None = None  # sums from `at` on
        at = self.offsets[chunks.start]
        for i, estimate in zip(chunks, weighted, strict=True):
            offset = self.offsets[i]
            if pending is None:
                pending = estimate.clone()
            else:
                head = pending.shape[-1] - (offset - at)
                estimate[..., :head] += pending[..., offset - at :]  # the earlier chunk's part first, as apply_model adds
                pending = torch.cat([pending[..., : offset - at], estimate], dim=-1)
            final = (self.offsets[i + 1] if i + 1 < len(self.offsets) else self.length) - at
            if i + 1 == chunks.stop:
                final = pending.shape[-1]
            yield at, pending[..., :final]
            pending, at = pending[..., final:], at + final


ChunkSource = Callable[[int, int], object]  # (offset, segment length) -> a demucs TensorChunk of the normalized song


def whole(normalized: torch.Tensor) -> ChunkSource:
    """Chunks of a song held whole."""
    from demucs.apply import TensorChunk

    return lambda offset, length: TensorChunk(normalized[None], offset, length)


class SongStream:
    """A song file at the model's rate, read block by block (never held whole): first for its length and for demucs'
    normalization (the mean and deviation of its mono mix), then as often as `blocks` is called."""

    def __init__(
        self,
        source: Path,
        model_rate: int,
        max_duration_s: float | None = None,
        stats: tuple[float, float] | None = None,
    ):
        self.source, self.model_rate, self.max_duration_s = source, model_rate, max_duration_s
        with audio.Decoder(source, max_duration_s) as decoder:
            self.rate = decoder.rate
        same = self.rate == model_rate
        moments = _Moments()
        self.samples = sum((moments.add(b) if same and stats is None else b).shape[-1] for b in self._decoded())
        if self.samples == 0:
            raise audio.NotAudio("the file decodes to no audio at all")
        self.length = self.samples if same else int(model_rate * self.samples // self.rate)  # julius' output length
        if stats is None and not same:
            for block in self.blocks():
                moments.add(block)
        self.mean, self.std = stats or moments.result()

    def _decoded(self) -> Iterator[torch.Tensor]:
        with audio.Decoder(self.source, self.max_duration_s) as decoder:
            for block in decoder.blocks():
                wave = torch.from_numpy(block)
                yield wave.expand(2, -1).contiguous() if wave.shape[0] == 1 else wave

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

    def add(self, block: torch.Tensor) -> torch.Tensor:
        ref = block.double().mean(0)
        self.n += ref.shape[0]
        self.total += float(ref.sum())
        self.squares += float((ref * ref).sum())
        return block

    def result(self) -> tuple[float, float]:
        mean = self.total / self.n
        variance = (self.squares - self.n * mean * mean) / max(1, self.n - 1)
        return mean, max(math.sqrt(max(variance, 0.0)), 1e-8)


class Window:
    """The normalized song around the chunk being separated, fed from a stream of blocks: from one segment before the
    chunk to its end, whatever the song's length. Chunks must be asked for in order."""

    def __init__(self, blocks: Iterator[torch.Tensor], mean: float, std: float):
        self.blocks, self.mean, self.std = blocks, mean, std
        self.buffer = torch.zeros(2, 0)
        self.start = 0  # the song's sample at buffer[..., 0]
        self.most = 0  # the longest the buffer has been (samples)

    def __call__(self, offset: int, length: int):
        from demucs.apply import TensorChunk

        keep = max(0, offset - length)  # a short last chunk is centred, reaching back before its offset
        if keep > self.start:
            drop = min(keep - self.start, self.buffer.shape[-1])
            self.buffer, self.start = self.buffer[..., drop:], self.start + drop
        pending, have = [], self.start + self.buffer.shape[-1]
        while have < offset + length:
            block = next(self.blocks, None)
            if block is None:  # the song's end: the chunk is its last, padded with zeros by TensorChunk
                break
            if have < keep:  # the buffer is empty and the window starts further on (a part of a split song)
                skip = min(keep - have, block.shape[-1])
                block, have = block[..., skip:], have + skip
                self.start = have
            pending.append(block.sub_(self.mean).div_(self.std))
            have += block.shape[-1]
        if pending:
            self.buffer = torch.cat([self.buffer, *pending], dim=-1)
        self.most = max(self.most, self.buffer.shape[-1])
        end = min(have, offset + length)
        return TensorChunk(self.buffer[None, :, : end - self.start], offset - self.start, length)


def normalize_(mix: torch.Tensor) -> tuple[float, float]:
    """Demucs' normalization of a song held whole, in place (held once): minus the mono mix's mean, over its deviation."""
    ref = mix.mean(0)
    mean, std = float(ref.mean()), float(ref.std().clamp_min(1e-8))
    del ref
    mix.sub_(mean).div_(std)
    return mean, std


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


ENCODER_QUEUE = 12  # blocks (about 6 s of song each, 8 MB for 4 stems) an encoder may lag behind the model


def idle_priority() -> None:
    """Let the calling thread run only on CPU time that the rest of the process leaves idle (Linux SCHED_IDLE)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux: an ordinary thread
        pass


def encoding_threads(separator: Separator, setting: int = 0) -> int:
    """Threads for the stems' encoders: `setting` when set; else one per stem beside a model on the CPU (torch has the
    CPUs, the encoders use what it leaves), every CPU this process may use beside a model on a GPU (where encoding is
    what a job waits for: each MP3 stem is then encoded on several threads, `parallel_mp3`)."""
    if setting > 0:
        return setting
    device = getattr(separator, "device", None)
    return cpu_budget() if device is not None and device.type != "cpu" else 0


class StemEncoders:
    """Each track's encoder in a thread of its own, fed through a bounded queue, at idle priority.

    The encoders use the CPU time the model leaves (torch's threads wait on each other within each layer), so encoding
    costs the separation next to nothing; when they fall `depth` blocks behind, the separator waits for them instead of
    piling up audio. At the end they drain in parallel (LAME and PyAV let go of the GIL). With `threads` of at least two per
    track, each MP3 track is itself encoded on several of them (`parallel_mp3`), from a pool of that many threads."""

    def __init__(self, paths: dict[str, Path], rate: int, fmt: str, bitrate: int, depth: int = ENCODER_QUEUE, threads: int = 0):
        per_track = threads // len(paths)
        self.pool = (
            ThreadPoolExecutor(threads, thread_name_prefix="mp3", initializer=idle_priority)
            if fmt == "mp3" and per_track > 1 and lame.available()
            else None
        )
        self.writers = [
            parallel_mp3.ParallelMp3Writer(path, rate, bitrate, self.pool, per_track)
            if self.pool
            else audio.stem_writer(path, rate, fmt, bitrate)
            for path in paths.values()
        ]
        self.queues: list[queue.Queue] = [queue.Queue(maxsize=depth) for _ in self.writers]
        self.error: BaseException | None = None
        self.cpu = [0.0] * len(self.writers)
        self.threads = [
            threading.Thread(target=self._run, args=(i,), name=f"encoder-{track}", daemon=True) for i, track in enumerate(paths)
        ]
        for thread in self.threads:
            thread.start()

    @property
    def cpu_s(self) -> float:
        """The CPU time encoding took (beside the model)."""
        return sum(self.cpu) + sum(getattr(writer, "cpu_s", 0.0) for writer in self.writers)

    def _run(self, i: int) -> None:
        idle_priority()
        started = time.thread_time()
        while (block := self.queues[i].get()) is not None:
            if self.error is None:
                try:
                    self.writers[i].write(block.numpy())
                except BaseException as exc:  # handed to the separating thread at its next put or at close
                    self.error = exc
        self.cpu[i] = time.thread_time() - started

    def put(self, block: torch.Tensor) -> None:
        if self.error is not None:
            raise self.error
        if block.shape[-1]:
            for i, stems in enumerate(self.queues):
                stems.put(block[i])

    def close(self) -> None:
        for stems in self.queues:
            stems.put(None)
        for thread in self.threads:
            thread.join()
        for writer in self.writers:  # every file closed, whichever fails
            try:
                writer.close()
            except BaseException as exc:
                self.error = self.error or exc
        if self.pool:
            self.pool.shutdown(cancel_futures=True)
        if self.error is not None:
            raise self.error


def load_song(separator: Separator, source: Path, max_duration_s: float | None = None) -> tuple[torch.Tensor, int, int]:
    """The song at the separator's rate, [2, n'], with its own length and rate."""
    wave, rate = audio.decode(source, max_duration_s)
    length = wave.shape[1]
    return _resample(torch.from_numpy(wave), rate, separator.samplerate), length, rate


class StemSink:
    """Where separated blocks go: the two-stem pick, back to the song's rate, each stem's encoder (in `out_dir`)."""

    def __init__(
        self,
        separator: Separator,
        out_dir: Path,
        length: int,
        rate: int,
        fmt: str,
        bitrate: int,
        two_stems: str | None,
        threads: int = 0,
    ):
        """`threads`: the ENCODER_THREADS setting (0: `encoding_threads` picks)."""
        tracks = list(separator.tracks)
        self.pick = tracks.index(two_stems) if two_stems else None
        if two_stems:
            tracks = [two_stems, f"no_{two_stems}"]
        ext = audio.FORMATS[fmt][3]
        self.paths = {track: out_dir / f"{track}.{ext}" for track in tracks}
        self.encoders = StemEncoders(self.paths, rate, fmt, bitrate, threads=encoding_threads(separator, threads))
        self.back = StreamResampler(separator.samplerate, rate, length) if rate != separator.samplerate else None

    def put(self, block: torch.Tensor) -> None:
        if self.pick is not None:
            block = torch.stack([block[self.pick], block.sum(0) - block[self.pick]])
        self.encoders.put(self.back.push(block) if self.back else block)

    def finish(self) -> None:
        if self.back:
            self.encoders.put(self.back.flush())

    def close(self) -> None:
        self.encoders.close()


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
    encoder_threads: int = 0,
    song: SongStream | None = None,
) -> dict[str, Path]:
    """Separate one song file into stem files in `out_dir`; every stem has the input's rate and length.
    `info`, when given, receives the song's `samples` and `rate`, the seconds spent reading it (`read_s`: the first pass,
    or the whole decode for a separator that takes it whole), separating it (`separate_s`), of which in the model's
    forward passes (`forward_s`, when the separator counts them), then waiting for the encoders to finish (`drain_s`),
    and the CPU seconds the encoders took (`encode_cpu_s`).
    `encoder_threads`: the ENCODER_THREADS setting (0: `encoding_threads` picks). `song`: `source` already read as a
    SongStream (its first pass done), for a Demucs separator.

    Stems are encoded as the separator emits them: no stem of the whole song is ever held in memory."""
    progress("decoding", 0.0)
    started = time.perf_counter()
    if isinstance(separator, DemucsSeparator):  # read block by block
        song = song or SongStream(source, separator.samplerate, max_duration_s)
        length, rate = song.samples, song.rate
        run = lambda emit: separator.stream_song(song, emit, lambda f: progress("separating", f))  # noqa: E731
    else:
        mix, length, rate = load_song(separator, source, max_duration_s)
        run = lambda emit: separator.stream(mix, emit, lambda f: progress("separating", f))  # noqa: E731
    read = time.perf_counter()
    sink = StemSink(separator, out_dir, length, rate, fmt, bitrate, two_stems, encoder_threads)
    forward_s = getattr(separator, "forward_s", 0.0)
    try:
        run(sink.put)
        sink.finish()
    finally:
        separated = time.perf_counter()
        progress("encoding", 0.5)
        sink.close()
    if info is not None:
        info.update(
            samples=length,
            rate=rate,
            read_s=read - started,
            separate_s=separated - read,
            drain_s=time.perf_counter() - separated,
            forward_s=getattr(separator, "forward_s", 0.0) - forward_s,
            encode_cpu_s=sink.encoders.cpu_s,
        )
    return sink.paths
