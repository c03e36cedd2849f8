"""The Demucs engine: a model or bag of models loaded through `demucs.pretrained.get_model` and run as
`apply_model(split=True, overlap=0.25, shifts=0)` runs it, chunk by chunk, with the song read block by block and each
stretch of stems emitted as soon as no later chunk touches it: memory flat in the song's length."""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch

from .. import compat
from .engine import Emit, Inference, ModelUnavailable, Reading
from .song import SongStream

log = logging.getLogger("msaas.separation")

# Chunks per forward pass when DEMUCS_BATCH is 0: on a CPU one (a batch saves little there and the numbers stay those of
# `apply_model`); on a GPU several, which is where one chunk at a time leaves the device idle between small kernels.
DEFAULT_BATCH = {"cpu": 1, "cuda": 8, "mps": 4}
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


class DemucsSeparator:
    """A Demucs model (or bag of models) loaded through `demucs.pretrained.get_model`."""

    can_split = True  # its chunks can be computed apart and added afterwards, exactly (ChunkPlan)

    def __init__(self, name: str, repo: Path | None, device: torch.device, inference: Inference = Inference()):
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
        self.only: tuple[list, torch.Tensor] | None = None  # for_track's members and their weights
        self.batch = inference.batch or DEFAULT_BATCH.get(device.type, 1)
        self.precision = inference.precision
        self.shared = None  # SharedBatches, once songs in flight together share this model (share_batches)
        self.engine = "torch"  # what runs the networks: torch, or onnx (ONNX Runtime)
        self.onnx = self._onnx(inference.engine, repo)
        if self.onnx is not None and inference.engine == "onnx":
            self.engine = "onnx"
        if PRECISIONS[self.precision] is not None:
            for member in self._members()[0]:
                if not compat.spectral_in_fp32(member, device.type):
                    log.warning(
                        "model %s: %s has no STFT of its own to keep in FP32; it runs wholly in %s",
                        name,
                        type(member).__name__,
                        self.precision,
                    )

    def _onnx(self, engine: str, repo: Path | None):
        """The networks on ONNX Runtime when `engine` asks for them (onnx, or auto to be measured) and they can run there;
        those `msaas fetch-model` exported into the model directory `repo`, where it did."""
        from .onnxrt import PREBUILT, OnnxNetworks, OnnxUnavailable

        if engine == "torch":
            return None
        if self.device.type != "cpu" or self.precision != "fp32":
            if engine == "onnx":
                log.warning(
                    "model %s: ONNX Runtime runs FP32 on the CPU here; torch runs it on %s in %s",
                    self.name,
                    self.device,
                    self.precision,
                )
            return None
        try:
            prebuilt = repo / PREBUILT if repo else None
            return OnnxNetworks(self._members()[0], self.chunk_plan(1).segment_length, torch.get_num_threads(), prebuilt=prebuilt)
        except Exception as exc:  # not installed, not an HTDemucs, an export that failed: the torch path still works
            level = logging.WARNING if engine == "onnx" or not isinstance(exc, OnnxUnavailable) else logging.INFO
            log.log(level, "model %s stays on torch: %s", self.name, exc)
            return None

    def _forward(self, member, chunks: list) -> list[torch.Tensor]:
        if self.shared is not None:  # songs in flight together: their chunks share batches
            return self.shared(member, chunks)
        return self._run(member, chunks)

    def _run(self, member, chunks: list) -> list[torch.Tensor]:
        size = self.batch if self.batch > 1 else 0  # batches of one size: numbers that do not depend on the batching
        if self.engine == "onnx":
            return self.onnx.forward(member, chunks, size)
        return forward(member, chunks, self.device, size)

    def share_batches(self, linger_s: float | None = None) -> None:
        """Let the songs separated at once in this process (worker lanes, JOBS_IN_FLIGHT) put their chunks in the same
        batches: a view for one track (`for_track`) made after this shares them too."""
        from .inflight import LINGER_S, SharedBatches

        if self.shared is None:
            self.shared = SharedBatches(self.batch, self._run, LINGER_S if linger_s is None else linger_s)

    def _autocast(self):
        """The layers in DEMUCS_PRECISION (autocast keeps normalizations in FP32; compat keeps the STFT there)."""
        dtype = PRECISIONS[self.precision]
        return torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def _members(self) -> tuple[list, torch.Tensor]:
        from demucs.apply import BagOfModels

        if self.only is not None:
            return self.only
        bag = self.model if isinstance(self.model, BagOfModels) else None
        members = list(bag.models) if bag else [self.model]
        weights = torch.tensor(bag.weights if bag else [[1.0] * len(self.tracks)], dtype=torch.float32)
        return members, (weights / weights.sum(0))[:, :, None, None]  # each member's part of each source, as apply_model weighs

    def for_track(self, track: str) -> DemucsSeparator | None:
        """This bag with only the members that weigh in `track` (htdemucs_ft: one specialist of four), when that is fewer:
        `track` comes out exactly as the whole bag gives it; the other tracks are those members' own, evenly weighed, so
        that their sum stands for the rest of the song (`two_stems`)."""
        members, share = self._members()
        t = self.tracks.index(track)
        needed = [m for m in range(len(members)) if share[m, t].item() > 0]
        if len(needed) == len(members):
            return None
        view = copy.copy(self)
        only = torch.full((len(needed), len(self.tracks), 1, 1), 1.0 / len(needed))
        only[:, t] = share[needed, t]
        view.only = ([members[m] for m in needed], only)
        return view

    def chunk_plan(self, length: int) -> ChunkPlan:
        segments = {float(m.segment) for m in self._members()[0]}
        if len(segments) != 1:
            raise ModelUnavailable(f"model {self.name!r} mixes segment lengths {sorted(segments)}, which MSaaS does not stream")
        return ChunkPlan(length, int(self.samplerate * segments.pop()))

    def weighted_chunks(
        self, source: ChunkSource, plan: ChunkPlan, chunks: range, progress: Callable[[float], None] = lambda f: None
    ) -> Iterator[torch.Tensor]:
        """Each chunk's estimate times its crossfade weight, [tracks, 2, n], for the chunks numbered `chunks`; `batch` of
        them at a time through the model (the runs of chunks whose numbers share `i // batch`, so that a split song's part
        batches its chunks as the whole song does)."""
        members, share = self._members()
        done = 0
        with torch.inference_mode(), self._autocast():
            for group in batches(chunks, self.batch):
                taken = [source(plan.offsets[i], plan.segment_length) for i in group]
                started = time.perf_counter()
                outputs = [self._forward(member, taken) for member in members]
                self.forward_s += time.perf_counter() - started
                for k in range(len(group)):
                    estimate = sum(outputs[m][k] * share[m] for m in range(len(members)))
                    yield plan.weight[: estimate.shape[-1]] * estimate
                    done += 1
                    progress(done / len(chunks))

    def warm_up(self) -> None:
        """One chunk of silence through the model: a fresh process's first forward pass costs a few times the next
        ones (kernels picked and memory laid out for these shapes), which would otherwise land on the first song.
        With DEMUCS_ENGINE=auto, a chunk through each engine, twice, and the faster one's second pass decides."""
        plan = self.chunk_plan(self.chunk_plan(1).segment_length)
        silence = whole(torch.zeros(2, plan.length))

        def chunk_s() -> float:
            started = self.forward_s
            for _ in self.weighted_chunks(silence, plan, range(1)):
                pass
            return self.forward_s - started

        if self.onnx is not None and self.engine == "torch":  # auto: measured here, on this machine, with these threads
            timed = {}
            for engine in ("torch", "onnx"):
                self.engine = engine
                chunk_s()
                timed[engine] = chunk_s()
            self.engine = min(timed, key=timed.get)
            if self.engine == "torch":
                self.onnx = None
            log.info(
                "model %s: a chunk takes %.2f s on torch, %.2f s on ONNX Runtime: %s runs it",
                self.name,
                timed["torch"],
                timed["onnx"],
                self.engine,
            )
        chunk_s()
        self.forward_s = 0.0

    def stream(self, mix: torch.Tensor, emit: Emit, progress: Callable[[float], None] = lambda f: None) -> None:
        """What `apply_model(split=True, overlap=0.25, shifts=0)` computes, chunk by chunk, each stretch of output emitted as
        soon as no later chunk touches it: memory holds one segment of output, whatever the song's length."""
        plan = self.chunk_plan(mix.shape[-1])
        mean, std = normalize_(mix)
        self._separate(whole(mix), plan, mean, std, emit, progress)

    def read(self, source: Path, max_duration_s: float | None = None, song: SongStream | None = None) -> Reading:
        """Block by block: a first pass for the length and demucs' normalization, the second as the model goes."""
        song = song or SongStream(source, self.samplerate, max_duration_s)
        return Reading(song.samples, song.rate, lambda emit, progress: self.stream_song(song, emit, progress))

    def stream_song(self, song: SongStream, emit: Emit, progress: Callable[[float], None] = lambda f: None) -> None:
        """`stream` for a song read from its file block by block: memory holds a few segments of it, never all of it."""
        plan = self.chunk_plan(song.length)
        self._separate(Window(song.blocks(), song.mean, song.std), plan, song.mean, song.std, emit, progress)

    def _separate(
        self, source: ChunkSource, plan: ChunkPlan, mean: float, std: float, emit: Emit, progress: Callable[[float], None]
    ) -> None:
        chunks = range(len(plan.offsets))
        for start, block in plan.overlap_add(chunks, self.weighted_chunks(source, plan, chunks, progress)):
            emit(plan.stems(block, start, mean, std))


def export_onnx(name: str, repo: Path) -> list[Path]:
    """Model `name` of the model directory `repo`, its networks exported for ONNX Runtime into `repo`'s folder of them,
    where a worker with DEMUCS_REPO=`repo` loads them instead of exporting them (`msaas fetch-model`)."""
    from .onnxrt import PREBUILT, export_members

    separator = DemucsSeparator(name, repo, torch.device("cpu"), Inference(engine="torch"))
    return export_members(separator._members()[0], separator.chunk_plan(1).segment_length, repo / PREBUILT)


def batches(chunks: range, size: int) -> Iterator[range]:
    """`chunks` cut where a chunk's number is a multiple of `size`."""
    start = chunks.start
    while start < chunks.stop:
        stop = min(chunks.stop, (start // size + 1) * size)
        yield range(start, stop)
        start = stop


def forward(model, chunks: list, device: torch.device, size: int = 0) -> list[torch.Tensor]:
    """What `apply_model(model, chunk, split=False, shifts=0)` gives for each chunk ([tracks, 2, chunk length], on the
    CPU, FP32), the chunks padded to the same length run as one batch, of `size` (filled with silence) when it is more:
    a batch of one size gives each chunk the same numbers whatever shares it, so a song's stems do not depend on how its
    chunks were batched (a split song's parts, songs in flight together)."""
    from demucs.utils import center_trim

    valid = [model.valid_length(c.length) if hasattr(model, "valid_length") else c.length for c in chunks]
    out: list[torch.Tensor] = [torch.empty(0)] * len(chunks)
    for length in dict.fromkeys(valid):
        which = [k for k, v in enumerate(valid) if v == length]
        mix = padded_batch([chunks[k].padded(length) for k in which], size)
        result = model(mix.to(device)).float().cpu()
        for j, k in enumerate(which):
            out[k] = center_trim(result[j], chunks[k].length)
    return out


def padded_batch(mixes: list[torch.Tensor], size: int) -> torch.Tensor:
    """[1, 2, n] mixes as one [max(size, count), 2, n] batch, silence after them."""
    missing = size - len(mixes)
    return torch.cat(mixes + ([torch.zeros(missing, *mixes[0].shape[1:])] if missing > 0 else []))


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

    def stems(self, sums: torch.Tensor, start: int, mean: float, std: float) -> torch.Tensor:
        """The chunks' weighted sums from sample `start` on, [tracks, 2, k] -> the stems there: divided by the weights'
        sum, then back from demucs' normalization of the song (`mean`, `std`)."""
        return sums / self.totals(start, start + sums.shape[-1]) * std + mean

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
