#!/usr/bin/env python3
"""Each engine on the same song, in a fresh process each: seconds per minute of audio and peak RSS, beside htdemucs.

The models are full size with random weights (compute does not depend on the weights), saved the way their published
weights are and loaded through `load_separator` from a model directory, as a worker loads them:
- htdemucs: its architecture (demucs' classes, demucs' format), the anchor of the ratios
- bs-roformer-vocals: viperx's published config (dim 512, depth 12, 62 bands, 8 s chunks, overlap 2)
- mel-roformer-vocals: Kimberley Jensen's published config (dim 384, depth 6, 60 mel bands, 8 s chunks, overlap 2)
- spleeter-2stems: the bundled real weights
Each process runs `separate_file` (the worker's path: read block by block, stems encoded to MP3 as they come) once to warm
up on 10 s, then on the song; its ru_maxrss is the peak. Runs go A B C D D C B A over the engines (ROUNDS times), so a slow
spell of the shared machine lands on every side; the table gives medians, and each engine's ratio to htdemucs.

Usage: python bench/engines.py [--rounds N] [SECONDS]   (default: 1 round of 60 s; make bench-speed and bench-engines: 20 s)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from worker_memory import REPO, full_size_htdemucs, song  # noqa: E402

BS_BANDS = (2,) * 24 + (4,) * 12 + (12,) * 8 + (24,) * 8 + (48,) * 8 + (128, 129)
STFT = dict(stft_n_fft=2048, stft_hop_length=441, stft_win_length=2048, stft_normalized=False)
PUBLISHED = {  # the `model:` sections of the published configs (training-only keys left out)
    "bs-roformer-vocals": dict(
        dim=512, depth=12, stereo=True, num_stems=1, time_transformer_depth=1, freq_transformer_depth=1,
        linear_transformer_depth=0, freqs_per_bands=BS_BANDS, dim_head=64, heads=8, mask_estimator_depth=2, **STFT,
    ),
    "mel-roformer-vocals": dict(
        dim=384, depth=6, stereo=True, num_stems=1, time_transformer_depth=1, freq_transformer_depth=1, num_bands=60,
        dim_head=64, heads=8, sample_rate=44100, mask_estimator_depth=2, **STFT,
    ),
}  # fmt: skip
ENGINES = ["htdemucs", "bs-roformer-vocals", "mel-roformer-vocals", "spleeter-2stems"]


def full_size_roformers(repo: Path = REPO) -> Path:
    """The published configs with random weights, as `<name>.ckpt` + `<name>.yaml` beside full-size htdemucs."""
    import torch
    import yaml

    from msaas import models
    from msaas.separation.roformer_nets import build

    full_size_htdemucs(repo)
    for name, params in PUBLISHED.items():
        if not (repo / f"{name}.ckpt").exists():
            torch.manual_seed(0)
            torch.save(build(models.ROFORMERS[name]["kind"], dict(params)).state_dict(), repo / f"{name}.ckpt")
            config = {
                "audio": {"chunk_size": 352800, "sample_rate": 44100},
                "model": params,
                "training": {"instruments": ["vocals", "other"], "target_instrument": "vocals"},
                "inference": {"batch_size": 1, "num_overlap": 2},
            }
            (repo / f"{name}.yaml").write_text(yaml.dump(config))
    return repo


def one(name: str, seconds: int) -> None:
    """In this (fresh) process: warm up, separate, print a JSON line."""
    import resource

    import torch

    from msaas.separation import cpu_budget, load_separator, separate_file

    torch.set_num_threads(cpu_budget())
    sep = load_separator(name, REPO, "cpu")
    with tempfile.TemporaryDirectory() as out:
        separate_file(sep, song(10), Path(out))
        report = separate_file(sep, song(seconds), Path(out))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    total = report.read_s + report.separate_s + report.drain_s
    print(
        json.dumps({"engine": name, "seconds": total, "forward_s": report.forward_s, "peak_mb": peak, "audio_s": report.seconds})
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("seconds", nargs="?", type=int, default=60)
    args = parser.parse_args()
    if args.one:
        one(args.one, args.seconds)
        return
    full_size_roformers()
    song(10), song(args.seconds)
    results: dict[str, list[dict]] = {name: [] for name in ENGINES}
    order = (ENGINES + ENGINES[::-1]) * args.rounds
    for name in order:
        run = subprocess.run([sys.executable, __file__, "--one", name, str(args.seconds)], capture_output=True, text=True)
        if run.returncode:
            raise SystemExit(f"{name} failed:\n{run.stderr[-3000:]}")
        result = json.loads(run.stdout.strip().splitlines()[-1])
        results[name].append(result)
        print(f"  {name}: {result['seconds']:.1f} s, peak {result['peak_mb']:.0f} MB", flush=True)
    anchor = statistics.median(r["seconds"] for r in results["htdemucs"])
    print(f"\n{args.seconds} s song, {len(order) // len(ENGINES)} runs each (medians), CPU, random weights but Spleeter's:")
    print(f"{'engine':22} {'s per audio-min':>15} {'x htdemucs':>11} {'forward share':>14} {'peak RSS MB':>12}")
    for name in ENGINES:
        runs = results[name]
        seconds = statistics.median(r["seconds"] for r in runs)
        per_min = seconds / (runs[0]["audio_s"] / 60)
        share = statistics.median(r["forward_s"] / r["seconds"] for r in runs)
        peak = statistics.median(r["peak_mb"] for r in runs)
        print(f"{name:22} {per_min:15.1f} {seconds / anchor:11.2f} {share:14.0%} {peak:12.0f}")


if __name__ == "__main__":
    main()
