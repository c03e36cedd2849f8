#!/usr/bin/env python3
"""Writes the sample songs in data/: synthesized instruments and an espeak-ng voice (ours to redistribute)."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from msaas import audio  # noqa: E402
from synth import SR, mix, song  # noqa: E402

SONGS = {
    "short-mix.mp3": dict(seconds=12, text="Separate me into stems. Drums, bass, and the rest.", seed=1),
    "short-song.mp3": dict(
        seconds=16, text="Every song has its parts. Listen to them one by one.", seed=2, bpm=120, roots=("D2", "B2", "G2", "A2")
    ),
}

if __name__ == "__main__":
    for name, spec in SONGS.items():
        audio.encode(HERE / name, mix(song(**spec)), SR, "mp3", 192)
        print(f"wrote data/{name}")
