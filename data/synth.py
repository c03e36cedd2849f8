"""Synthesized songs with known sources: drums, bass, chords ('other') and an espeak-ng voice ('vocals')."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

SR = 44100
NOTES = {"A": 0, "B": 2, "C": 3, "D": 5, "E": 7, "F": 8, "G": 10}


def hz(note: str) -> float:
    """'A2' -> 110 Hz."""
    name, octave = note[:-1], int(note[-1])
    semis = NOTES[name[0]] + (1 if "#" in name else 0) + 12 * (octave - (1 if NOTES[name[0]] >= 3 else 0) - 4)
    return 440.0 * 2 ** (semis / 12)


def _env(n: int, decay_s: float) -> np.ndarray:
    return np.exp(-np.arange(n) / (decay_s * SR))


def drums(seconds: float, bpm: float, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(int(seconds * SR))
    beat = 60.0 / bpm
    hit = int(0.4 * SR)
    t = np.arange(hit) / SR
    kick = np.sin(2 * np.pi * (50 * t + 70 * 0.04 * (1 - np.exp(-t / 0.04)))) * _env(hit, 0.12)
    snare = rng.standard_normal(hit) * _env(hit, 0.08) * 0.5 + np.sin(2 * np.pi * 190 * t) * _env(hit, 0.05) * 0.4
    hat = np.diff(rng.standard_normal(hit + 1)) * _env(hit, 0.015) * 0.2
    for i in range(int(seconds / beat * 2)):
        start = int(i * beat / 2 * SR)
        parts = [hat] + ([kick] if i % 4 == 0 else []) + ([snare] if i % 4 == 2 else [])
        for part in parts:
            end = min(len(out), start + hit)
            out[start:end] += part[: end - start]
    return out


def _tone(freq: float, n: int, harmonics: int, rolloff: float) -> np.ndarray:
    t = np.arange(n) / SR
    return sum(np.sin(2 * np.pi * freq * k * t) / k**rolloff for k in range(1, harmonics + 1))


def bass(seconds: float, bpm: float, roots: list[str]) -> np.ndarray:
    out = np.zeros(int(seconds * SR))
    bar = int(4 * 60.0 / bpm * SR)
    for i, start in enumerate(range(0, len(out), bar // 2)):
        n = min(bar // 2, len(out) - start)
        note = _tone(hz(roots[(i // 2) % len(roots)]), n, 6, 1.2) * _env(n, 0.6)
        out[start : start + n] += note * 0.6
    return out


def chords(seconds: float, bpm: float, roots: list[str]) -> np.ndarray:
    out = np.zeros(int(seconds * SR))
    bar = int(4 * 60.0 / bpm * SR)
    for i, start in enumerate(range(0, len(out), bar)):
        n = min(bar, len(out) - start)
        root = hz(roots[i % len(roots)]) * 4
        pad = sum(_tone(root * ratio, n, 3, 2.0) for ratio in (1.0, 1.26, 1.5))
        attack = np.minimum(1.0, np.arange(n) / (0.05 * SR))
        out[start : start + n] += pad * attack * _env(n, 1.5) * 0.15
    return out


def voice(text: str, seconds: float, voice_name: str = "en", pitch: int = 50, speed: int = 150) -> np.ndarray:
    """espeak-ng speaking `text`, resampled to 44.1 kHz and placed from 0.5 s on."""
    import av

    if not shutil.which("espeak-ng"):
        raise RuntimeError("espeak-ng is needed for the voice (apt-get install espeak-ng)")
    out = np.zeros(int(seconds * SR))
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "voice.wav"
        subprocess.run(["espeak-ng", "-v", voice_name, "-p", str(pitch), "-s", str(speed), "-w", str(wav), text], check=True)
        with av.open(str(wav)) as container:
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SR)
            frames = [f.to_ndarray()[0] for fr in container.decode(audio=0) for f in resampler.resample(fr)]
            frames += [f.to_ndarray()[0] for f in resampler.resample(None)]
    speech = np.concatenate(frames)
    start = int(0.5 * SR)
    n = min(len(speech), len(out) - start)
    out[start : start + n] = speech[:n]
    return out


def song(
    seconds: float, text: str, seed: int = 0, bpm: float = 100, roots=("A2", "F2", "C3", "G2"), voice_name: str = "en"
) -> dict[str, np.ndarray]:
    """Known sources, each stereo float32 [2, n]; their sum is the song."""
    rng = np.random.default_rng(seed)
    roots = list(roots)
    sources = {
        "drums": drums(seconds, bpm, rng) * 0.5,
        "bass": bass(seconds, bpm, roots),
        "other": chords(seconds, bpm, roots),
        "vocals": voice(text, seconds, voice_name) * 0.9,
    }
    pans = {"drums": (1.0, 0.9), "bass": (1.0, 1.0), "other": (0.8, 1.0), "vocals": (1.0, 1.0)}
    return {name: (np.stack([x * pans[name][0], x * pans[name][1]]) * 0.5).astype(np.float32) for name, x in sources.items()}


def mix(sources: dict[str, np.ndarray]) -> np.ndarray:
    return sum(normalized(sources).values())


def normalized(sources: dict[str, np.ndarray], peak: float = 0.9) -> dict[str, np.ndarray]:
    """The sources scaled together so that their sum peaks at most at `peak`: the known truth of the mix."""
    loudest = float(np.abs(sum(sources.values())).max())
    scale = peak / loudest if loudest > peak else 1.0
    return {name: (x * scale).astype(np.float32) for name, x in sources.items()}
