#!/usr/bin/env python3
"""Separation quality: SDR of each model's stems against the known sources of synthesized songs, through MP3 as a user's.

Prints a table; a model whose weights are not here is listed as unavailable. Run by `make bench`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "data"), str(ROOT)]

from msaas import audio, models  # noqa: E402
from msaas.separation import ModelUnavailable, load_separator, separate_file  # noqa: E402
from synth import SR, normalized, song  # noqa: E402

SONGS = [
    dict(seconds=20, text="Separation as a service: send the song, get the stems back.", seed=21),
    dict(
        seconds=20,
        text="Une voix française au-dessus des instruments.",
        seed=22,
        voice_name="fr",
        bpm=90,
        roots=("D2", "B2", "G2", "A2"),
    ),
    dict(
        seconds=20, text="Every song has its parts. Listen to them one by one.", seed=23, bpm=128, roots=("E2", "C3", "G2", "D2")
    ),
]


def sdr(estimate: np.ndarray, reference: np.ndarray) -> float:
    return float(10 * np.log10((reference**2).sum() / max(((reference - estimate) ** 2).sum(), 1e-12)))


def truth_for(track: str, sources: dict[str, np.ndarray], mix: np.ndarray) -> np.ndarray | None:
    if track in sources:
        return sources[track]
    if track in ("accompaniment", "no_vocals", "instrumental"):
        return mix - sources["vocals"]
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    every = [models.SPLEETER, "htdemucs", "htdemucs_ft", *models.ROFORMERS, *models.PRESETS]
    parser.add_argument("--models", nargs="*", default=every, help="default: every model of the table that scores here")
    parser.add_argument("--repo", type=Path, help="DEMUCS_REPO for the Demucs and RoFormer models")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.models:
            if not models.available(name, args.repo):
                rows.append((name, "-", "-", "-", "weights not on this machine (msaas fetch-model, --repo)"))
                continue
            try:
                separator = load_separator(name, args.repo, "auto")
            except ModelUnavailable as exc:
                rows.append((name, "-", "-", "-", f"unavailable: {str(exc)[:60]}"))
                continue
            for i, spec in enumerate(SONGS):
                sources = normalized(song(**spec))
                mix = sum(sources.values())
                path = tmp / f"song{i}.mp3"
                audio.encode(path, mix, SR, "mp3", 320)
                heard, _ = audio.decode(path)
                out = tmp / f"{name}-{i}"
                out.mkdir()
                stems = separate_file(separator, path, out).stems
                for track, stem_path in stems.items():
                    truth = truth_for(track, sources, heard)
                    if truth is None:
                        continue
                    stem, _ = audio.decode(stem_path)
                    before, after = sdr(heard, truth), sdr(stem, truth)
                    rows.append((name, f"song{i}", track, f"{before:6.1f} -> {after:6.1f}", f"{after - before:+.1f} dB"))
    print(f"{'model':16} {'song':6} {'track':14} {'SDR mixture -> stem':22} improvement")
    for row in rows:
        print(f"{row[0]:16} {row[1]:6} {row[2]:14} {row[3]:22} {row[4]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
