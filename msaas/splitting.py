"""Long songs across workers: a song's chunks cut into parts that several workers separate at once, then stitched.

A part holds the crossfade-weighted sum of its chunks' outputs (before the division by the weights' sum) as raw float32,
sample-major ([n, tracks, 2]), in the queue bucket. The stitch adds neighbouring parts where they overlap, divides, and
feeds the stems' encoders as a single worker would: every sum is taken in the same order as in the unsplit separation,
so the stems come out the same."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from . import storage
from .separation import SongStream, StemSink
from .separation.demucs import DemucsSeparator, Window

RAW = np.dtype("<f4")
READ_SAMPLES = 1 << 16


def part_name(songhash: str, index: int) -> str:
    return storage.check_name(f"{songhash}.part{index}.f32")


def parts_for(seconds: float, split_over_s: float, max_parts: int, workers: int) -> int:
    """How many parts a song of `seconds` becomes: one unless it is longer than `split_over_s` and several workers are
    alive; each part at least `split_over_s / 2` long."""
    if split_over_s <= 0 or seconds <= split_over_s or workers < 2:
        return 1
    return max(1, min(max_parts, workers, math.floor(seconds / (split_over_s / 2))))


def make_plan(separator: DemucsSeparator, song: SongStream, parts: int) -> dict:
    """What every part's worker and the stitch need: the chunk runs, the song's lengths and its normalization."""
    return {
        "parts": [[run.start, run.stop] for run in separator.chunk_plan(song.length).split(parts)],
        "length": song.length,  # at the model's rate
        "samples": song.samples,  # at the song's rate
        "rate": song.rate,
        "mean": song.mean,
        "std": song.std,
    }


def separate_part(
    separator: DemucsSeparator, source: Path, plan: dict, index: int, out: Path, progress: Callable[[float], None]
) -> None:
    """Part `index` of the plan: its chunks' weighted sums, written to `out` as they are final."""
    song = SongStream(source, separator.samplerate, stats=(plan["mean"], plan["std"]))
    if song.length != plan["length"]:
        raise ValueError(f"the song decodes to {song.length} samples, its plan says {plan['length']}")
    chunks = separator.chunk_plan(plan["length"])
    run = range(*plan["parts"][index])
    window = Window(song.blocks(), song.mean, song.std)
    with open(out, "wb") as raw:
        for _, block in chunks.overlap_add(run, separator.weighted_chunks(window, chunks, run, progress)):
            raw.write(block.permute(2, 0, 1).contiguous().numpy().astype(RAW, copy=False).tobytes())


def read_part(path: Path, tracks: int, samples: int) -> Iterator[torch.Tensor]:
    """A part file as [tracks, 2, k] blocks; refuses one of the wrong size (cut short, or another song's)."""
    frame = tracks * 2 * RAW.itemsize
    size = path.stat().st_size
    if size != samples * frame:
        raise ValueError(f"part {path.name} holds {size} bytes, {samples * frame} expected")
    with open(path, "rb") as raw:
        while data := raw.read(READ_SAMPLES * frame):
            yield torch.from_numpy(np.frombuffer(data, RAW).reshape(-1, tracks, 2).copy()).permute(1, 2, 0)


def stitch(
    separator: DemucsSeparator,
    plan: dict,
    fetch: Callable[[int], Path],
    sink: StemSink,
    progress: Callable[[float], None] = lambda f: None,
) -> None:
    """Add the parts (`fetch(k)` gives part k's file, in order) into the song's stems and feed them to `sink`."""
    chunks = separator.chunk_plan(plan["length"])
    spans = [chunks.span(range(*run)) for run in plan["parts"]]
    mean, std = plan["mean"], plan["std"]
    tracks = len(separator.tracks)
    carry = torch.zeros(tracks, 2, 0)  # the previous part's sums past this part's start
    for k, (start, stop) in enumerate(spans):
        until = spans[k + 1][0] if k + 1 < len(spans) else plan["length"]  # samples before this are final after part k
        ahead: list[torch.Tensor] = []
        at = start
        for block in read_part(fetch(k), tracks, stop - start):
            if carry.shape[-1]:
                m = min(carry.shape[-1], block.shape[-1])
                block[..., :m] += carry[..., :m]
                carry = carry[..., m:]
            cut = max(0, min(block.shape[-1], until - at))
            if cut:
                sink.put(chunks.stems(block[..., :cut], at, mean, std))
            if cut < block.shape[-1]:
                ahead.append(block[..., cut:])
            at += block.shape[-1]
        if carry.shape[-1]:
            raise ValueError(f"part {k} is shorter than its overlap with part {k - 1}")
        carry = torch.cat(ahead, dim=-1) if ahead else torch.zeros(tracks, 2, 0)
        progress((k + 1) / len(spans))
    sink.finish()
