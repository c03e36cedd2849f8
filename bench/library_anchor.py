#!/usr/bin/env python3
"""demucs used as a library in a warm process: what a service built on demucs without MSaaS would do.

The model is loaded once (`demucs.api.Separator`, which runs `apply_model` with demucs' defaults: split into 7.8 s
chunks, overlap 0.25, one random shift); each song is read with demucs' own reader and its stems written with demucs'
`save_audio` as MP3 at its defaults (320 kbps, LAME preset 2, through `lameenc`), one after another.
Reads lines `SONG OUTDIR` on stdin; answers each with `SECONDS` once the stems are written. Prints `threads N` first.
Usage: python bench/library_anchor.py REPO
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def main(repo: Path) -> None:
    import torch
    from demucs.api import Separator, save_audio

    separator = Separator(model="htdemucs", repo=repo, device="cpu", progress=False)
    print(f"threads {torch.get_num_threads()}", flush=True)
    for line in sys.stdin:
        song, out = line.split()
        started = time.monotonic()
        _, stems = separator.separate_audio_file(Path(song))
        Path(out).mkdir(parents=True, exist_ok=True)
        for track, wave in stems.items():
            save_audio(wave, Path(out) / f"{track}.mp3", samplerate=separator.samplerate)
        print(f"{time.monotonic() - started:.3f}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
