"""Demucs on ONNX Runtime (DEMUCS_ENGINE=onnx; `auto` takes it where it measures faster than torch): each HTDemucs of a
model is exported once, cut from its STFT and iSTFT as the published exports are (`compat.htdemucs_parts`: no complex
numbers in the graph), cached by a digest of its weights, and run by ONNX Runtime on the CPU; the STFT, mask and iSTFT
stay in torch. The chunks, their batches and the crossfade are the Demucs engine's (`demucs.py`)."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import torch

from .. import compat

log = logging.getLogger("msaas.separation")

OPSET = 17


class OnnxUnavailable(RuntimeError):
    """This model or machine cannot run on ONNX Runtime: the torch path is used."""


def cache_dir() -> Path:
    """Exported networks, beside torch.hub's downloads (TORCH_HOME), else in the temporary folder."""
    return Path(torch.hub.get_dir()) / "checkpoints" / "msaas-onnx"


def digest(model: torch.nn.Module) -> str:
    """What an exported network depends on: the model's class, its weights and the exporter (torch's version)."""
    h = hashlib.sha256(f"{type(model).__module__}.{type(model).__name__} torch {torch.__version__} opset {OPSET}".encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def _export(core: torch.nn.Module, before, segment_length: int, path: Path) -> None:
    import warnings

    mix = torch.zeros(1, 2, segment_length)
    _, magnitude = before(mix)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkstemp(dir=path.parent, suffix=".part")[1])
    try:
        # grad on: with it off, nn.MultiheadAttention takes its fused fast path, which has no ONNX form
        with warnings.catch_warnings(), torch.inference_mode(False), torch.enable_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(
                core,
                (mix, magnitude),
                str(partial),
                input_names=["mix", "magnitude"],
                output_names=["time", "spectrogram"],
                dynamic_axes={name: {0: "batch"} for name in ("mix", "magnitude", "time", "spectrogram")},
                opset_version=OPSET,
                dynamo=False,  # the TorchScript exporter: HTDemucs' forward traces as is (no onnxscript needed)
            )
        partial.replace(path)  # whole or not at all: a later worker never loads half a file
    finally:
        partial.unlink(missing_ok=True)


class OnnxNetworks:
    """The networks of a Demucs model's members on ONNX Runtime, with torch's STFT and iSTFT around each."""

    def __init__(self, members: list, segment_length: int, threads: int, cache: Path | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise OnnxUnavailable("onnxruntime is not installed (pip install 'msaas[worker]')") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.segment_length = segment_length
        self.parts: dict[int, tuple] = {}  # by the member's identity (a bag's view for one track runs some of them)
        for member in members:
            parts = compat.htdemucs_parts(member)
            if parts is None:
                raise OnnxUnavailable(f"{type(member).__name__} is no HTDemucs: only HTDemucs models run on ONNX Runtime")
            before, core, after = parts
            path = (cache or cache_dir()) / f"htdemucs-{digest(member)}.onnx"
            if not path.exists():
                log.info("exporting %s to ONNX as %s (once per model)", type(member).__name__, path)
                try:
                    _export(core, before, segment_length, path)
                except OSError:  # a read-only cache: the temporary folder, for this process
                    path = Path(tempfile.gettempdir()) / f"msaas-onnx-{os.getpid()}" / path.name
                    _export(core, before, segment_length, path)
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
