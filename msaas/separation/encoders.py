"""The stems' encoders, fed block by block as the model emits them: each track's encoder in a thread of its own
(StemEncoders), behind the two-stem pick and the way back to the song's rate (StemSink)."""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .. import audio, lame, parallel_mp3, peaks
from .devices import cpu_budget, idle_priority
from .engine import Separator
from .song import StreamResampler

ENCODER_QUEUE = 12  # blocks (about 6 s of song each, 8 MB for 4 stems) an encoder may lag behind the model


def encoding_threads(separator: Separator, setting: int = 0) -> int:
    """Threads for the stems' encoders: `setting` when set; else one per stem beside a model on the CPU (torch has the
    CPUs, the encoders use what it leaves), every CPU this process may use beside a model on a GPU (where encoding is
    what a job waits for: each MP3 stem is then encoded on several threads, `parallel_mp3`)."""
    if setting > 0:
        return setting
    return cpu_budget() if separator.device.type != "cpu" else 0


class StemEncoders:
    """Each track's encoder in a thread of its own, fed through a bounded queue, at idle priority.

    The encoders use the CPU time the model leaves (torch's threads wait on each other within each layer), so encoding
    costs the separation next to nothing; when they fall `depth` blocks behind, the separator waits for them instead of
    piling up audio. At the end they drain in parallel (LAME and PyAV let go of the GIL). With `threads` of at least two per
    track, each MP3 track is itself encoded on several of them (`parallel_mp3`), from a pool of that many threads. Each
    track's peaks (its waveform, `peaks`) are taken from the same blocks and written beside its file at the end."""

    def __init__(self, paths: dict[str, Path], rate: int, fmt: str, bitrate: int, depth: int = ENCODER_QUEUE, threads: int = 0):
        per_track = threads // len(paths)
        self.pool = (
            ThreadPoolExecutor(threads, thread_name_prefix="mp3", initializer=idle_priority)
            if fmt == "mp3" and per_track > 1 and lame.available()
            else None
        )
        self.writers = [
            parallel_mp3.ParallelLameStemFile(path, rate, bitrate, self.pool, per_track)
            if self.pool
            else audio.open_stem_file(path, rate, fmt, bitrate)
            for path in paths.values()
        ]
        self.paths = list(paths.values())
        self.peaks = [peaks.Peaks(rate) for _ in self.writers]
        self.queues: list[queue.Queue] = [queue.Queue(maxsize=depth) for _ in self.writers]
        self.error: BaseException | None = None
        self.abandoned = False  # the separation stopped: what is still queued is dropped, not encoded
        self.cpu = [0.0] * len(self.writers)
        self.threads = [
            threading.Thread(target=self._run, args=(i,), name=f"encoder-{track}", daemon=True) for i, track in enumerate(paths)
        ]
        for thread in self.threads:
            thread.start()

    @property
    def cpu_s(self) -> float:
        """The CPU time encoding took (beside the model)."""
        return sum(self.cpu) + sum(writer.cpu_s for writer in self.writers)

    def _run(self, i: int) -> None:
        idle_priority()
        started = time.thread_time()
        while (block := self.queues[i].get()) is not None:
            if self.error is None and not self.abandoned:
                try:
                    data = block.numpy()
                    self.peaks[i].add(data)
                    self.writers[i].write(data)
                except BaseException as exc:  # handed to the separating thread at its next put or at close
                    self.error = exc
        self.cpu[i] = time.thread_time() - started

    def put(self, block: torch.Tensor) -> None:
        if self.error is not None:
            raise self.error
        if block.shape[-1]:
            for i, stems in enumerate(self.queues):
                stems.put(block[i])

    def close(self, abandon: bool = False) -> None:
        """Drain the encoders and close every file, raising an encoder's error. `abandon`: the separation stopped (an
        error, the worker stopping): what is still queued is dropped and no error is raised over the one on its way.
        Either way no encoder thread is left running, so the process may exit (one torn down inside LAME or PyAV as the
        interpreter ends aborts it) and the files' directory may go."""
        self.abandoned = self.abandoned or abandon
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
        if self.error is None and not self.abandoned:
            for path, waveform in zip(self.paths, self.peaks, strict=True):
                waveform.write(peaks.path_for(path))
        if self.error is not None and not abandon:
            raise self.error


class StemSink:
    """Where separated blocks go: the two-stem pick, back to the song's rate, each stem's encoder (in `out_dir`)."""

    def __init__(
        self,
        separator: Separator,
        out_dir: Path,
        length: int,
        rate: int,
        output: audio.OutputOptions,
        threads: int = 0,
    ):
        """`threads`: the ENCODER_THREADS setting (0: `encoding_threads` picks)."""
        tracks, pair = list(separator.tracks), output.two_stems
        self.pick = tracks.index(pair) if pair else None
        if pair:
            tracks = [pair, f"no_{pair}"]
        self.paths = {track: out_dir / f"{track}.{output.file_format.ext}" for track in tracks}
        threads = encoding_threads(separator, threads)
        self.encoders = StemEncoders(self.paths, rate, output.format, output.bitrate, threads=threads)
        self.back = StreamResampler(separator.samplerate, rate, length) if rate != separator.samplerate else None

    def put(self, block: torch.Tensor) -> None:
        if self.pick is not None:
            block = torch.stack([block[self.pick], block.sum(0) - block[self.pick]])
        self.encoders.put(self.back.push(block) if self.back else block)

    def finish(self) -> None:
        if self.back:
            self.encoders.put(self.back.flush())

    def close(self, abandon: bool = False) -> None:
        self.encoders.close(abandon)
