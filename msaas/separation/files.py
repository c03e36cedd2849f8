"""One song file into stem files: the engine reads it, its blocks go to the stems' encoders as they come, and a
report says how long the song is and where the time went."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .. import audio
from .encoders import StemSink
from .engine import Progress, Separator
from .song import SongStream


@dataclass(frozen=True)
class SeparationReport:
    """What `separate_file` made, and what it took."""

    stems: dict[str, Path]  # track -> its file in the output directory, in the engine's order (or the two-stem pair)
    samples: int  # the song's own length and rate, which every stem has
    rate: int
    read_s: float  # reading the song before separating: its first pass, or the whole decode for an engine taking it whole
    separate_s: float  # separating it (the encoders running beside)
    forward_s: float  # of which the model's forward passes
    drain_s: float  # then waiting for the encoders to finish
    encode_cpu_s: float  # the CPU time the encoders took

    @property
    def seconds(self) -> float:
        return self.samples / self.rate


def separate_file(
    separator: Separator,
    source: Path,
    out_dir: Path,
    output: audio.OutputOptions = audio.OutputOptions(),
    *,
    max_duration_s: float | None = None,
    progress: Progress = lambda stage, fraction: None,
    encoder_threads: int = 0,
    song: SongStream | None = None,
) -> SeparationReport:
    """Separate one song file into stem files in `out_dir`; every stem has the input's rate and length.
    `encoder_threads`: the ENCODER_THREADS setting (0: `encoding_threads` picks). `song`: `source` already read as a
    SongStream (its first pass done), for an engine that reads songs block by block.

    Stems are encoded as the engine emits them: no stem of the whole song is ever held in memory."""
    progress("decoding", 0.0)
    started = time.perf_counter()
    reading = separator.read(source, max_duration_s, song)
    read = time.perf_counter()
    sink = StemSink(separator, out_dir, reading.samples, reading.rate, output, encoder_threads)
    forward_s = separator.forward_s
    try:
        reading.separate(sink.put, lambda f: progress("separating", f))
        sink.finish()
        separated = time.perf_counter()
        progress("encoding", 0.5)  # the worker's stops (SIGTERM's grace over) are raised from here too
    except BaseException:
        sink.close(abandon=True)
        raise
    sink.close()
    return SeparationReport(
        stems=sink.paths,
        samples=reading.samples,
        rate=reading.rate,
        read_s=read - started,
        separate_s=separated - read,
        forward_s=separator.forward_s - forward_s,
        drain_s=time.perf_counter() - separated,
        encode_cpu_s=sink.encoders.cpu_s,
    )
