#!/usr/bin/env python3
"""MP3 encoding of one stem: LAME called directly (`msaas.lame`, what the worker uses) against FFmpeg's libmp3lame
through PyAV (what it used before, and its fallback), same settings (320 kbps CBR, -q 5), same stem, one run.

Prints CPU seconds per minute of stem for each, their ratio, the wall time of `parallel_mp3` on N threads, and the
error of each decoded file against the stem (the same LAME: the same quality).
Usage: python bench/encoders.py [SECONDS] [THREADS]   (default 60 s of stem, as many threads as this process has CPUs)
"""

from __future__ import annotations

import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from msaas import audio, lame, parallel_mp3  # noqa: E402
from msaas.separation import cpu_budget  # noqa: E402


def stem(seconds: float, rate: int = 44100) -> np.ndarray:
    """Music-like: two tones that come and go, a noise burst (a drum) every 0.4 s."""
    rng = np.random.default_rng(7)
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 331 * t) * np.sin(2 * np.pi * 0.7 * t) ** 2
    burst = 0.3 * rng.standard_normal(len(t)) * np.exp(-60 * (t % 0.4))
    return np.clip(np.stack([tone + burst, tone - 0.5 * burst]), -1, 1).astype(np.float32)


def run(writer, wave: np.ndarray) -> tuple[float, float]:
    """Wall and CPU seconds (this process's) to write `wave` in 6 s blocks, as the worker hands them over."""
    wall, cpu = time.perf_counter(), time.process_time()
    for at in range(0, wave.shape[1], 6 * 44100):
        writer.write(wave[:, at : at + 6 * 44100])
    writer.close()
    return time.perf_counter() - wall, time.process_time() - cpu


def error_db(wave: np.ndarray, path: Path) -> float:
    decoded, _ = audio.decode(path)
    return float(10 * np.log10(((decoded - wave) ** 2).sum() / (wave**2).sum()))


def main(seconds: float = 60.0, threads: int = 0) -> None:
    threads = threads or cpu_budget()
    wave = stem(seconds)
    minutes = seconds / 60
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        pyav_wall, pyav_cpu = run(audio.AvStemFile(out / "pyav.mp3", 44100, "mp3", 320), wave)
        lame_wall, lame_cpu = run(lame.LameStemFile(out / "lame.mp3", 44100, 320), wave)
        with ThreadPoolExecutor(threads) as pool:
            par_wall, par_cpu = run(parallel_mp3.ParallelLameStemFile(out / "parallel.mp3", 44100, 320, pool, threads), wave)
        rows = [
            ("FFmpeg's libmp3lame (PyAV)", pyav_wall, pyav_cpu, error_db(wave, out / "pyav.mp3")),
            ("LAME direct (msaas.lame)", lame_wall, lame_cpu, error_db(wave, out / "lame.mp3")),
            (f"LAME direct, {threads} threads (parallel_mp3)", par_wall, par_cpu, error_db(wave, out / "parallel.mp3")),
        ]
    print(f"one {seconds:.0f} s stereo stem, 320 kbps CBR, LAME -q {lame.QUALITY}, {Path(lame.library()._name).name}")
    print("| encoder | wall | CPU | CPU per stem-minute | CPU against PyAV | error against the stem |")
    print("|---|---|---|---|---|---|")
    for name, wall, cpu, error in rows:
        print(f"| {name} | {wall:.2f} s | {cpu:.2f} s | {cpu / minutes:.2f} s | {cpu / pyav_cpu:.2f} | {error:.2f} dB |")


if __name__ == "__main__":
    main(*(float(a) if i == 0 else int(a) for i, a in enumerate(sys.argv[1:])))
