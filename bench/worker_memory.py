#!/usr/bin/env python3
"""Peak RSS and time of one worker separation with a full-size htdemucs (random weights: the same compute).

Usage: python bench/worker_memory.py SECONDS [SECONDS ...]   each length runs in a fresh process
The figures behind the worker's Kubernetes requests and limits (worker/README.md).
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from msaas import audio, compat  # noqa: E402

REPO = Path(tempfile.gettempdir()) / "msaas-bench-htdemucs-7.8"


def full_size_htdemucs(repo: Path = REPO) -> Path:
    """htdemucs' architecture with random weights, saved in demucs' format as the bag `htdemucs`: the released model's
    segment of 7.8 s (39/5, its transformer's length), so chunks are cut as with the real weights."""
    from fractions import Fraction

    import torch
    import yaml
    from demucs.htdemucs import HTDemucs
    from demucs.states import save_with_checksum

    repo.mkdir(parents=True, exist_ok=True)
    if not list(repo.glob("*.th")):
        torch.manual_seed(0)
        model = HTDemucs(sources=["drums", "bass", "other", "vocals"], segment=Fraction(39, 5))
        args, kwargs = compat.model_init_args(model)
        save_with_checksum({"klass": HTDemucs, "args": args, "kwargs": kwargs, "state": model.state_dict()}, repo / "955717e8.th")
        (repo / "htdemucs.yaml").write_text(yaml.safe_dump({"models": ["955717e8"]}))
    return repo


def song(seconds: int) -> Path:
    path = Path(tempfile.gettempdir()) / f"msaas-bench-song-{seconds}s.mp3"
    if not path.exists():
        rng = np.random.default_rng(0)
        t = np.arange(seconds * 44100) / 44100
        x = (0.2 * np.sin(2 * np.pi * 110 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
        audio.encode(path, np.stack([x, x]), 44100, "mp3", 192)
    return path


def one(seconds: int) -> None:
    import torch

    from msaas.separation import load_separator, separate_file

    torch.set_num_threads(2)
    separator = load_separator("htdemucs", full_size_htdemucs(), "cpu")
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as out:
        separate_file(separator, song(seconds), Path(out))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{seconds:5d} s song: {time.monotonic() - started:7.1f} s, peak RSS {peak:6.0f} MB (model loaded: {loaded:.0f} MB)",
        flush=True,
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        one(int(sys.argv[2]))
    else:
        for length in sys.argv[1:] or ["60"]:
            subprocess.run([sys.executable, __file__, "--one", length], check=True)
