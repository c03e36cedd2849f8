"""Demucs on ONNX Runtime (DEMUCS_ENGINE=onnx; `auto` takes it where it measures faster than torch): each HTDemucs of a
model is exported once, cut from its STFT and iSTFT as the published exports are (`compat.htdemucs_parts`: no complex
numbers in the graph), its attention layers as ONNX Runtime's fused MultiHeadAttention, cached by a digest of its weights,
and run by ONNX Runtime on the CPU; the STFT, mask and iSTFT stay in torch. The chunks, their batches and the crossfade
are the Demucs engine's (`demucs.py`)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import types
from pathlib import Path

import torch

from .. import compat, config

log = logging.getLogger("msaas.separation")

OPSET = 17
EXPORT = 2  # this module's way of exporting: 2, attention as com.microsoft::MultiHeadAttention (a new one re-exports)


class OnnxUnavailable(RuntimeError):
    """This model or machine cannot run on ONNX Runtime: the torch path is used."""


PREBUILT = "onnx"  # a model directory's (DEMUCS_REPO) folder of networks exported beforehand (`msaas fetch-model`)


def cache_dir() -> Path:
    """Exported networks, beside torch.hub's downloads (TORCH_HOME), else in the temporary folder."""
    return Path(torch.hub.get_dir()) / "checkpoints" / "msaas-onnx"


def file_name(member: torch.nn.Module) -> str:
    return f"htdemucs-{digest(member)}.onnx"


def digest(model: torch.nn.Module) -> str:
    """What an exported network depends on: the model's class, its weights and the exporter (torch's version)."""
    h = hashlib.sha256(
        f"{type(model).__module__}.{type(model).__name__} torch {torch.__version__} opset {OPSET} export {EXPORT}".encode()
    )
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


class _Attention(torch.autograd.Function):
    """Scaled dot-product attention over [batch, length, heads x head size] projections; exported as ONNX Runtime's
    MultiHeadAttention, which computes it in tiles (no [heads, length, length] matrix of scores and its separate softmax,
    a tenth of the network's time as plain MatMul and Softmax nodes)."""

    @staticmethod
    def forward(ctx, q, k, v, heads: int):
        b, n, d = q.shape

        def split(x):
            return x.reshape(b, x.shape[1], heads, d // heads).transpose(1, 2)

        return torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(b, n, d)

    @staticmethod
    def symbolic(g, q, k, v, heads: int):
        out = g.op("com.microsoft::MultiHeadAttention", q, k, v, num_heads_i=heads)
        out.setType(q.type())
        return out


def _fused_attention(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None, **_):
    """nn.MultiheadAttention.forward for the export: its projections, then `_Attention` (no masks, no weights returned)."""
    assert key_padding_mask is None and attn_mask is None, "masked attention is exported as torch writes it"
    wq, wk, wv = self.in_proj_weight.chunk(3)
    bq, bk, bv = self.in_proj_bias.chunk(3)
    f = torch.nn.functional.linear
    out = _Attention.apply(f(query, wq, bq), f(key, wk, bk), f(value, wv, bv), self.num_heads)
    return self.out_proj(out), None


def _fusable(m: torch.nn.Module) -> bool:
    """An nn.MultiheadAttention that `_fused_attention` computes exactly: batch first, one projection of three, biases, no
    extra key/value biases or zero attention, no dropout at inference."""
    return (
        isinstance(m, torch.nn.MultiheadAttention)
        and m.batch_first
        and m._qkv_same_embed_dim
        and m.in_proj_bias is not None
        and m.bias_k is None
        and not m.add_zero_attn
    )


@contextlib.contextmanager
def fused_attention(model: torch.nn.Module):
    """`model`'s attention layers exported as MultiHeadAttention nodes while this lasts."""
    patched = [m for m in model.modules() if _fusable(m)]
    for m in patched:
        m.forward = types.MethodType(_fused_attention, m)
    try:
        yield len(patched)
    finally:
        for m in patched:
            del m.forward


def _export(core: torch.nn.Module, before, segment_length: int, path: Path) -> None:
    import warnings

    mix = torch.zeros(1, 2, segment_length)
    _, magnitude = before(mix)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkstemp(dir=path.parent, suffix=".part")[1])
    try:
        # Grad off, so that the trace keeps no activations for a backward pass (full-size htdemucs: 1.1 GB at the peak
        # instead of 3.4 GB), where every attention layer is `fused_attention`'s; with grad off, the others would take
        # torch's fused fast path, which has no ONNX form.
        attention = [m for m in core.modules() if isinstance(m, torch.nn.MultiheadAttention)]
        grad = torch.no_grad() if all(map(_fusable, attention)) else torch.enable_grad()
        with warnings.catch_warnings(), torch.inference_mode(False), grad, fused_attention(core):
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(
                core,
                (mix, magnitude),
                str(partial),
                input_names=["mix", "magnitude"],
                output_names=["time", "spectrogram"],
                dynamic_axes={name: {0: "batch"} for name in ("mix", "magnitude", "time", "spectrogram")},
                opset_version=OPSET,
                custom_opsets={"com.microsoft": 1},
                dynamo=False,  # the TorchScript exporter: HTDemucs' forward traces as is (no onnxscript needed)
            )
        partial.replace(path)  # whole or not at all: a later worker never loads half a file
    finally:
        partial.unlink(missing_ok=True)


def _parts(member: torch.nn.Module) -> tuple:
    parts = compat.htdemucs_parts(member)
    if parts is None:
        raise OnnxUnavailable(f"{type(member).__name__} is no HTDemucs: only HTDemucs models run on ONNX Runtime")
    return parts


def _exported(parts: tuple, segment_length: int, path: Path) -> Path:
    """The network of an HTDemucs cut into `parts` at `path`, exported there unless it is there already."""
    if not path.exists():
        log.info("exporting HTDemucs to ONNX as %s (once per model)", path)
        before, core, _ = parts
        _export(core, before, segment_length, path)
    return path


def export_members(members: list, segment_length: int, folder: Path) -> list[Path]:
    """Each HTDemucs of `members` exported into `folder` (what is there already is kept): what `msaas fetch-model` puts
    beside a model's weights, so that a worker with that model directory loads the networks instead of exporting them."""
    return [_exported(_parts(member), segment_length, folder / file_name(member)) for member in members]


def _onnxruntime():
    """ONNX Runtime, its telemetry off unless the environment turns it on (`config.LIBRARY_DEFAULTS`)."""
    telemetry_off = config.library_defaults()["ORT_DISABLE_TELEMETRY"] == "1"  # read when ONNX Runtime starts
    try:
        import onnxruntime as ort
    except ImportError:
        raise OnnxUnavailable("onnxruntime is not installed (pip install 'msaas[worker]')") from None
    if telemetry_off:
        ort.disable_telemetry_events()  # and if something else imported it first, no more events from here on
    return ort


class OnnxNetworks:
    """The networks of a Demucs model's members on ONNX Runtime, with torch's STFT and iSTFT around each."""

    def __init__(self, members: list, segment_length: int, threads: int, cache: Path | None = None, prebuilt: Path | None = None):
        ort = _onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.segment_length = segment_length
        self.parts: dict[int, tuple] = {}  # by the member's identity (a bag's view for one track runs some of them)
        for member in members:
            parts = _parts(member)
            name = file_name(member)  # a digest of its weights: taken once
            path = prebuilt / name if prebuilt is not None else None
            if path is None or not path.exists():  # not exported with the model's weights: exported here, once
                try:
                    path = _exported(parts, segment_length, (cache or cache_dir()) / name)
                except OSError:  # a read-only cache: the temporary folder, for this process
                    path = _exported(parts, segment_length, Path(tempfile.gettempdir()) / f"msaas-onnx-{os.getpid()}" / name)
            before, _, after = parts
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self.parts[id(member)] = (before, session, after)

    def forward(self, member: torch.nn.Module, chunks: list, size: int = 0) -> list[torch.Tensor]:
        """`member` on these chunks, as `demucs.forward` gives them: [tracks, 2, chunk length] each, FP32 on the CPU, in a
        batch of `size` when that is more (padded with silence)."""
        from demucs.utils import center_trim

        from .demucs import padded_batch

        before, session, after = self.parts[id(member)]
        mix = padded_batch([c.padded(self.segment_length) for c in chunks], size)
        z, magnitude = before(mix)
        time_branch, spectrogram = session.run(None, {"mix": mix.numpy(), "magnitude": magnitude.numpy()})
        out = after(z, torch.from_numpy(spectrogram), torch.from_numpy(time_branch), self.segment_length)
        return [center_trim(out[j], c.length) for j, c in enumerate(chunks)]
