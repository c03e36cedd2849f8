"""The band-split and mel-band RoFormer networks, laid out parameter for parameter as the checkpoints the community
publishes were trained (Music-Source-Separation-Training's `bs_roformer.py` and `mel_band_roformer.py`, which
python-audio-separator and UVR load too): a `.ckpt` state dict loads into these modules with every key matched.

Why not the `bs-roformer` package: its current versions wrap each layer in hyper-connections and add value-residual
mixes, so the published checkpoints' keys no longer line up, and it pulls in five more packages. Only inference is
here (no losses, no dropout, no checkpointing), written against the same state-dict layout:

  layers.<depth>.<0: time, 1: freq>.layers.<j>.<0: attention, 1: feed-forward>   (+ .norm.gamma for mel-band)
  final_norm.gamma (band-split only), band_split.to_features.<band>, mask_estimators.<stem>.to_freqs.<band>.0.<linear>
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) * self.scale * self.gamma


class Rotary(nn.Module):
    """Rotary position embedding over the sequence axis (-2), in interleaved pairs, as `rotary_embedding_torch` computes
    it; `freqs` is a (frozen) parameter there, so it is in the checkpoints."""

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        self.freqs = nn.Parameter(freqs, requires_grad=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        n = t.shape[-2]
        angles = torch.arange(n, device=t.device, dtype=self.freqs.dtype)[:, None] * self.freqs  # [n, d/2]
        angles = angles.repeat_interleave(2, dim=-1)
        pairs = t.unflatten(-1, (-1, 2))
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return t * angles.cos().to(t.dtype) + rotated * angles.sin().to(t.dtype)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, rotary: Rotary):
        super().__init__()
        self.heads = heads
        self.rotary_embed = rotary
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Linear(dim, heads * dim_head * 3, bias=False)
        self.to_gates = nn.Linear(dim, heads)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        b, n, _ = x.shape
        q, k, v = self.to_qkv(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # each [b, heads, n, d]
        q, k = self.rotary_embed(q), self.rotary_embed(k)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out * self.to_gates(x).transpose(1, 2)[..., None].sigmoid()
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        # indices 0, 1, 4 hold parameters, as in the checkpoints (2: GELU, 3 and 5: dropouts there)
        self.net = nn.Sequential(
            RMSNorm(dim), nn.Linear(dim, dim * mult), nn.GELU(), nn.Identity(), nn.Linear(dim * mult, dim), nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Transformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, rotary: Rotary, norm_output: bool):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([Attention(dim, heads, dim_head, rotary), FeedForward(dim)]) for _ in range(depth)
        )
        self.norm = RMSNorm(dim) if norm_output else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attend, feed in self.layers:
            x = attend(x) + x
            x = feed(x) + x
        return self.norm(x)


class BandSplit(nn.Module):
    def __init__(self, dim: int, dim_inputs: tuple[int, ...]):
        super().__init__()
        self.dim_inputs = dim_inputs
        self.to_features = nn.ModuleList(nn.Sequential(RMSNorm(d), nn.Linear(d, dim)) for d in dim_inputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bands = x.split(self.dim_inputs, dim=-1)
        return torch.stack([net(band) for band, net in zip(bands, self.to_features, strict=True)], dim=-2)


def mlp(dim_in: int, dim_out: int, dim_hidden: int, hidden_layers: int) -> nn.Sequential:
    dims = (dim_in, *(dim_hidden,) * hidden_layers, dim_out)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class MaskEstimator(nn.Module):
    def __init__(self, dim: int, dim_inputs: tuple[int, ...], hidden_layers: int, expansion: int):
        super().__init__()
        self.to_freqs = nn.ModuleList(
            nn.Sequential(mlp(dim, d * 2, dim * expansion, hidden_layers), nn.GLU(dim=-1)) for d in dim_inputs
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([net(band) for band, net in zip(x.unbind(dim=-2), self.to_freqs, strict=True)], dim=-1)


class Roformer(nn.Module):
    """What both kinds share: STFT in, axial transformers over (time, band), a complex mask per stem, ISTFT out.
    `forward`: [batch, channels, n] -> [batch, stems, channels, n]."""

    final_norm: nn.Module

    def __init__(
        self,
        dim: int,
        depth: int,
        dim_inputs: tuple[int, ...],
        *,
        stereo: bool = False,
        num_stems: int = 1,
        time_transformer_depth: int = 2,
        freq_transformer_depth: int = 2,
        linear_transformer_depth: int = 0,
        dim_head: int = 64,
        heads: int = 8,
        stft_n_fft: int = 2048,
        stft_hop_length: int = 512,
        stft_win_length: int = 2048,
        stft_normalized: bool = False,
        mask_hidden_layers: int = 1,
        mlp_expansion_factor: int = 4,
        norm_output: bool = True,
        skip_connection: bool = False,
    ):
        super().__init__()
        if linear_transformer_depth:
            raise ValueError("linear_transformer_depth > 0 (linear attention) is not supported")
        if skip_connection:
            raise ValueError("skip_connection is not supported")
        self.channels = 2 if stereo else 1
        time_rotary, freq_rotary = Rotary(dim_head), Rotary(dim_head)
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    Transformer(dim, time_transformer_depth, heads, dim_head, time_rotary, norm_output),
                    Transformer(dim, freq_transformer_depth, heads, dim_head, freq_rotary, norm_output),
                ]
            )
            for _ in range(depth)
        )
        self.stft = dict(n_fft=stft_n_fft, hop_length=stft_hop_length, win_length=stft_win_length, normalized=stft_normalized)
        self.register_buffer("window", torch.hann_window(stft_win_length), persistent=False)
        self.band_split = BandSplit(dim, dim_inputs)
        self.mask_estimators = nn.ModuleList(
            MaskEstimator(dim, dim_inputs, mask_hidden_layers, mlp_expansion_factor) for _ in range(num_stems)
        )

    def bands_in(self, spec: torch.Tensor) -> torch.Tensor:
        """[b, (f s), t, 2] -> the band split's input, [b, t, features]."""
        return spec.permute(0, 2, 1, 3).flatten(2)

    def apply_masks(self, spec: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """[b, (f s), t] complex, [b, n, t, features] -> [b, n, (f s), t] complex."""
        return spec[:, None] * torch.view_as_complex(masks.unflatten(-1, (-1, 2)).transpose(2, 3).contiguous())

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        b, s, n = audio.shape
        spec = torch.stft(audio.reshape(b * s, n), **self.stft, window=self.window, return_complex=True)
        f, t = spec.shape[-2:]
        spec = spec.view(b, s, f, t).transpose(1, 2).reshape(b, f * s, t)  # frequencies leading, channels interleaved
        x = self.band_split(self.bands_in(torch.view_as_real(spec)))
        for time_transformer, freq_transformer in self.layers:
            bands = x.shape[2]
            x = time_transformer(x.transpose(1, 2).flatten(0, 1)).unflatten(0, (b, bands)).transpose(1, 2)
            x = freq_transformer(x.flatten(0, 1)).unflatten(0, (b, t))
        x = self.final_norm(x)
        masks = torch.stack([estimate(x) for estimate in self.mask_estimators], dim=1)
        out = self.apply_masks(spec, masks)  # [b, stems, (f s), t]
        stems = out.shape[1]
        out = out.view(b, stems, f, s, t).transpose(2, 3).reshape(b * stems * s, f, t)
        audio = torch.istft(out, **self.stft, window=self.window, length=n)
        return audio.view(b, stems, s, n)


class BSRoformer(Roformer):
    """Band-split RoFormer: bands of `freqs_per_bands` consecutive frequencies."""

    def __init__(self, dim: int, *, depth: int, freqs_per_bands: tuple[int, ...], stereo: bool = False, **kw):
        channels = 2 if stereo else 1
        dim_inputs = tuple(2 * f * channels for f in freqs_per_bands)
        hidden = kw.pop("mask_estimator_depth", 2) - 1  # MLP(depth) there has depth - 1 hidden layers
        super().__init__(dim, depth, dim_inputs, stereo=stereo, mask_hidden_layers=hidden, norm_output=False, **kw)
        if sum(freqs_per_bands) != self.stft["n_fft"] // 2 + 1:
            raise ValueError(f"freqs_per_bands add up to {sum(freqs_per_bands)}, not the STFT's {self.stft['n_fft'] // 2 + 1}")
        self.final_norm = RMSNorm(dim)


class MelBandRoformer(Roformer):
    """Mel-band RoFormer: overlapping bands from a mel filter bank; where bands overlap their masks are averaged."""

    def __init__(self, dim: int, *, depth: int, num_bands: int = 60, sample_rate: int = 44100, stereo: bool = False, **kw):
        channels = 2 if stereo else 1
        n_fft = kw.get("stft_n_fft", 2048)
        bands = torch.from_numpy(mel_bands(sample_rate, n_fft, num_bands))  # [bands, freqs] bool
        freq_indices = torch.arange(n_fft // 2 + 1).expand(num_bands, -1)[bands]
        if stereo:
            freq_indices = (freq_indices[:, None] * 2 + torch.arange(2)).flatten()
        dim_inputs = tuple(2 * int(f) * channels for f in bands.sum(1))
        hidden = kw.pop("mask_estimator_depth", 1)  # MLP(depth) there has depth hidden layers
        super().__init__(dim, depth, dim_inputs, stereo=stereo, mask_hidden_layers=hidden, norm_output=True, **kw)
        self.final_norm = nn.Identity()
        self.register_buffer("freq_indices", freq_indices, persistent=False)
        self.register_buffer("bands_per_freq", bands.sum(0).repeat_interleave(channels), persistent=False)

    def bands_in(self, spec: torch.Tensor) -> torch.Tensor:
        return super().bands_in(spec[:, self.freq_indices])

    def apply_masks(self, spec: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        masks = torch.view_as_complex(masks.unflatten(-1, (-1, 2)).transpose(2, 3).contiguous())  # [b, n, bands' f, t]
        summed = torch.zeros(*masks.shape[:2], *spec.shape[1:], dtype=masks.dtype, device=masks.device)
        summed.index_add_(2, self.freq_indices, masks)
        return spec[:, None] * (summed / self.bands_per_freq[:, None].clamp(min=1e-8))


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default): linear below 1 kHz, logarithmic above."""
    mels = hz / (200.0 / 3)
    log = hz >= 1000.0
    mels[log] = 1000.0 / (200.0 / 3) + np.log(hz[log] / 1000.0) / (math.log(6.4) / 27.0)
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    hz = (200.0 / 3) * mels
    log = mels >= 1000.0 / (200.0 / 3)
    hz[log] = 1000.0 * np.exp((math.log(6.4) / 27.0) * (mels[log] - 1000.0 / (200.0 / 3)))
    return hz


def mel_bands(sample_rate: int, n_fft: int, num_bands: int) -> np.ndarray:
    """Which STFT bins each mel band covers, [bands, n_fft // 2 + 1] bool: where `librosa.filters.mel(sr=sample_rate,
    n_fft=n_fft, n_mels=num_bands)` is positive, computed the way librosa computes it (float64 ramps cast to float32),
    with the first and last bins forced in as the reference model code does."""
    fft_hz = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([sample_rate / 2.0]))[0], num_bands + 2))
    widths = np.diff(edges)
    ramps = np.subtract.outer(edges, fft_hz)
    weights = np.zeros((num_bands, len(fft_hz)), dtype=np.float32)
    for i in range(num_bands):
        weights[i] = np.maximum(0, np.minimum(-ramps[i] / widths[i], ramps[i + 2] / widths[i + 1]))
    bands = weights > 0
    bands[0, 0] = bands[-1, -1] = True
    if not bands.any(axis=0).all():
        raise ValueError(f"{num_bands} mel bands leave STFT bins of n_fft={n_fft} uncovered")
    return bands


def build(kind: str, params: dict) -> Roformer:
    """The network a checkpoint's config describes: `kind` "bs_roformer" or "mel_band_roformer", `params` its `model:`
    section (training-only keys are ignored)."""
    unused = {"attn_dropout", "ff_dropout", "flash_attn", "dim_freqs_in", "use_torch_checkpoint", "sage_attention"}
    unused |= {k for k in params if k.startswith("multi_stft_")} | {"match_input_audio_length"}
    kw = {k: v for k, v in params.items() if k not in unused}
    if kind == "bs_roformer":
        kw["freqs_per_bands"] = tuple(kw["freqs_per_bands"])
        return BSRoformer(**kw)
    if kind == "mel_band_roformer":
        return MelBandRoformer(**kw)
    raise ValueError(f"unknown RoFormer kind {kind!r}")
