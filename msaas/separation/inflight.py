"""Several songs in flight in one worker (JOBS_IN_FLIGHT): their chunks share the model's batches, so that one GPU serves
many users from one process, full batches whatever each song has ready.

Each song's thread hands in the chunks it has ready (at most a batch) and waits. A thread that finds the model free runs
one batch of what is waiting, oldest chunks first, up to the batch size and from any songs (when less than a batch is
waiting, it first lingers LINGER_S for other songs' chunks), then hands every chunk's output to the thread that asked for
it. No thread of its own: the runner is always a thread that is waiting anyway. Batches are always of the full size
(filled with silence), so a chunk's numbers do not depend on how many share its batch: every song's stems are those it
gets alone, but for the last bits that a chunk's place in the batch may change (far below -120 dB)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

LINGER_S = 0.005  # how long a batch that is not full waits for other songs' chunks (a chunk takes 10 ms to seconds)


class _Request:
    def __init__(self, member, chunks: list):
        self.member, self.chunks = member, chunks
        self.out: list[torch.Tensor | None] = [None] * len(chunks)
        self.taken = 0  # chunks handed to a batch so far
        self.left = len(chunks)  # chunks whose output has not come back
        self.error: BaseException | None = None


class SharedBatches:
    """`run(member, chunks)` for the chunks of every song in flight, `size` chunks at a time."""

    def __init__(self, size: int, run: Callable[[object, list], list[torch.Tensor]], linger_s: float = LINGER_S):
        self.size, self.run, self.linger_s = max(1, size), run, linger_s
        self.cond = threading.Condition()
        self.waiting: list[_Request] = []
        self.busy = False
        self.batches = 0  # how many batches ran, and how many of them mixed songs (for tests and the curious)
        self.mixed = 0

    def __call__(self, member, chunks: list) -> list[torch.Tensor]:
        mine = _Request(member, chunks)
        lingered = False
        with self.cond:
            self.waiting.append(mine)
            self.cond.notify_all()  # a runner lingering for chunks: here are some
        while True:
            with self.cond:
                while (mine.left and mine.error is None) and self.busy:
                    self.cond.wait()
                if mine.error is not None:
                    raise mine.error
                if not mine.left:
                    return mine.out  # type: ignore[return-value]
                if not lingered and self._ready() < self.size:
                    lingered = True
                    self.cond.wait(self.linger_s)
                    continue
                batch = self._take()
                self.busy = True
            self._run(batch)

    def _ready(self) -> int:
        member = self.waiting[0].member if self.waiting else None
        return sum(len(r.chunks) - r.taken for r in self.waiting if r.member is member)

    def _take(self) -> list[tuple[_Request, int]]:
        """Up to `size` waiting chunks of one member, oldest first: (request, chunk index) each."""
        member = self.waiting[0].member
        batch: list[tuple[_Request, int]] = []
        for request in self.waiting:
            if request.member is not member:
                continue
            while request.taken < len(request.chunks) and len(batch) < self.size:
                batch.append((request, request.taken))
                request.taken += 1
        self.waiting = [r for r in self.waiting if r.taken < len(r.chunks)]
        return batch

    def _run(self, batch: list[tuple[_Request, int]]) -> None:
        try:
            outputs = self.run(batch[0][0].member, [request.chunks[k] for request, k in batch])
            error = None
        except BaseException as exc:  # every song in the batch has it (out of memory, say); each fails its attempt
            outputs, error = None, exc
        with self.cond:
            for j, (request, k) in enumerate(batch):
                if error is not None:
                    request.error = error
                    request.taken = len(request.chunks)
                else:
                    request.out[k] = outputs[j]
                request.left -= 1
            self.waiting = [r for r in self.waiting if r.error is None]
            self.batches += 1
            self.mixed += len({id(request) for request, _ in batch}) > 1
            self.busy = False
            self.cond.notify_all()
