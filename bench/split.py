#!/usr/bin/env python3
"""One long song separated by one worker, then split across several: wall time of each, and whether the stems agree.

Three runs on this machine's CPUs (C of them), the model htdemucs' full-size architecture with random weights:
- 1 worker with all C CPUs (the song is not split: one worker is alive);
- N workers with C/N CPUs each (pinned), the song split into N parts: the same machine shared out;
- 1 worker with C/N CPUs: what each of the N brings, so N workers against it is scaling out, each worker with its own CPUs.
Usage: python bench/split.py [SECONDS [WORKERS]]   (default 600 2)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from stack import Stack  # noqa: E402
from worker_memory import full_size_htdemucs, song  # noqa: E402

from msaas import audio  # noqa: E402

TRACKS = ("drums", "bass", "other", "vocals")


def run(repo: Path, path: Path, cpus: list[set[int]], split_over_s: float) -> tuple[float, dict[str, bytes], int]:
    with Stack(repo, len(cpus), cpus=cpus, SPLIT_OVER_S=repr(split_over_s)) as stack:
        seconds, songhash = stack.separate(path)
        parts = stack.client.status(songhash).get("parts", 1)
        return seconds, {t: stack.stem(songhash, t).read_bytes() for t in TRACKS}, parts


def difference_db(a: bytes, b: bytes, tmp: Path) -> float:
    waves = []
    for data in (a, b):
        tmp.write_bytes(data)
        waves.append(audio.decode(tmp)[0])
    tmp.unlink()
    return float(10 * np.log10(((waves[0] - waves[1]) ** 2).sum() / max((waves[1] ** 2).sum(), 1e-30) + 1e-30))


def main(seconds: int, workers: int) -> None:
    repo = full_size_htdemucs()
    path = song(seconds)
    machine = sorted(os.sched_getaffinity(0))
    shares = [set(machine[k::workers]) for k in range(workers)]  # each worker's own CPUs
    split_over_s = seconds / workers - 1  # so that a song of `seconds` becomes `workers` parts
    results = {}
    for name, cpus in [
        (f"1 worker x {len(machine)} CPUs", [set(machine)]),
        (f"{workers} workers x {len(shares[0])} CPUs", shares),
        (f"1 worker x {len(shares[0])} CPUs", shares[:1]),
    ]:
        results[name] = run(repo, path, cpus, split_over_s)
        print(f"{seconds} s song, {name}, {results[name][2]} part(s): {results[name][0]:.1f} s", flush=True)
    (whole_s, _, _), (split_s, split, _), (alone_s, alone, _) = results.values()
    print(
        f"the machine shared out: {whole_s / split_s:.2f}x; scaling out (each worker with its own CPUs): {alone_s / split_s:.2f}x"
    )
    # Against the unsplit run with as many torch threads (a different thread count changes the model's last bits, and
    # MP3 encoding turns any difference into one at its own noise level, about -50 dB).
    for track in TRACKS:
        same = "the same bytes" if alone[track] == split[track] else "different bytes"
        error = difference_db(split[track], alone[track], Path("/tmp/msaas-bench-split.mp3"))
        print(f"{track:>7}: split against unsplit, {same}, difference {error:.0f} dB")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 600, int(sys.argv[2]) if len(sys.argv) > 2 else 2)
