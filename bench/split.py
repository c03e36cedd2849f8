#!/usr/bin/env python3
"""One long song separated by one worker, then split across several: wall time of each, and whether the stems agree.

The workers share this machine's CPUs: one worker with every core, against N workers with 1/N of the cores each
(TORCH_THREADS), the song cut into N parts. The model is htdemucs' full-size architecture with random weights.
Usage: python bench/split.py [SECONDS [WORKERS]]   (default 600 2)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from stack import Stack  # noqa: E402
from worker_memory import full_size_htdemucs, song  # noqa: E402

from msaas import audio  # noqa: E402
from msaas.separation import cpu_budget  # noqa: E402

TRACKS = ("drums", "bass", "other", "vocals")


def run(repo: Path, path: Path, workers: int, split_over_s: float) -> tuple[float, dict[str, bytes], int]:
    threads = max(1, cpu_budget() // workers)
    with Stack(repo, workers, TORCH_THREADS=str(threads), SPLIT_OVER_S=repr(split_over_s)) as stack:
        seconds, songhash = stack.separate(path)
        parts = stack.client.status(songhash).get("parts", 1)
        return seconds, {t: stack.stem(songhash, t).read_bytes() for t in TRACKS}, parts


def decoded(data: bytes, tmp: Path) -> np.ndarray:
    tmp.write_bytes(data)
    return audio.decode(tmp)[0]


def main(seconds: int, workers: int) -> None:
    repo = full_size_htdemucs()
    path = song(seconds)
    split_over_s = seconds / workers - 1  # so that a song of `seconds` becomes `workers` parts
    one_s, one, _ = run(repo, path, 1, split_over_s)
    print(f"{seconds} s song, 1 worker x {cpu_budget()} threads: {one_s:.1f} s", flush=True)
    many_s, many, parts = run(repo, path, workers, split_over_s)
    print(
        f"{seconds} s song, {workers} workers x {max(1, cpu_budget() // workers)} threads, {parts} parts: {many_s:.1f} s",
        flush=True,
    )
    print(f"speed-up {one_s / many_s:.2f}x")
    tmp = Path(f"/tmp/msaas-bench-split-{seconds}.mp3")
    for track in TRACKS:
        a, b = decoded(one[track], tmp), decoded(many[track], tmp)
        error = 10 * np.log10(((a - b) ** 2).sum() / max((b**2).sum(), 1e-30) + 1e-30)
        print(f"{track:>7}: {'the same bytes' if one[track] == many[track] else 'different bytes'}, difference {error:.0f} dB")
    tmp.unlink(missing_ok=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 600, int(sys.argv[2]) if len(sys.argv) > 2 else 2)
