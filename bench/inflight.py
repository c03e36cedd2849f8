#!/usr/bin/env python3
"""Many songs at once on one worker (JOBS_IN_FLIGHT): N songs submitted together, from the first upload to the last stem
stored, against the same N songs through a worker that takes one at a time; the aggregate real-time factor (N songs'
audio over the wall time) of each. Real processes (bench/stack.py): the bundled redis-server, rest, one warm worker, the
local store; full-size htdemucs with random weights on the device the worker picks (DEMUCS_DEVICE, default auto).

Usage: python bench/inflight.py [--songs N] [--batch B] [SECONDS]   (default: 8 songs of 600 s, DEMUCS_BATCH 8: the GPU
figures of #20; on a CPU try --songs 2 20)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from stack import Stack  # noqa: E402
from worker_memory import full_size_htdemucs  # noqa: E402


def songs(n: int, seconds: int) -> list[Path]:
    """N different songs (the same one N times would be one job)."""
    from msaas import audio

    paths = []
    for k in range(n):
        path = Path(tempfile.gettempdir()) / f"msaas-bench-song-{seconds}s-{k}.mp3"
        if not path.exists():
            rng = np.random.default_rng(k)
            t = np.arange(seconds * 44100) / 44100
            x = (0.2 * np.sin(2 * np.pi * (110 + 10 * k) * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
            audio.encode(path, np.stack([x, x]), 44100, "mp3", 192)
        paths.append(path)
    return paths


def run(paths: list[Path], in_flight: int, batch: int) -> tuple[float, int]:
    """Seconds from the first upload to the last stem stored; the worker's lanes as it logged them."""
    env = {"JOBS_IN_FLIGHT": str(in_flight), "DEMUCS_BATCH": str(batch)}
    with Stack(full_size_htdemucs(), **env) as stack:
        started = time.time()
        with ThreadPoolExecutor(len(paths)) as pool:
            hashes = list(pool.map(lambda p: stack.client.submit(p)["hash"], paths))
        finished = []
        for h in hashes:
            status = stack.client.wait(h, timeout_s=7200)
            if status["state"] != "done":
                raise RuntimeError(f"the job failed: {status}")
            finished.append(status["finished"])
        return max(finished) - started, in_flight


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--songs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("seconds", nargs="?", type=int, default=600)
    args = parser.parse_args()
    paths = songs(args.songs, args.seconds)
    audio_s = args.songs * args.seconds
    print(f"{args.songs} songs of {args.seconds} s submitted at once, DEMUCS_BATCH={args.batch}:", flush=True)
    for in_flight in (args.songs, 1):
        wall, _ = run(paths, in_flight, args.batch)
        print(f"  JOBS_IN_FLIGHT={in_flight}: {wall:.1f} s for all, aggregate {audio_s / wall:.1f}x real time", flush=True)


if __name__ == "__main__":
    main()
