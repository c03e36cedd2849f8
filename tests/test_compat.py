"""The private APIs MSaaS leans on (compat.py): each private path is the one in use here, and each fallback gives what
the private path gives, so the day a package drops one the fallback is already known to be right."""

from pathlib import Path

import julius
import pytest
import torch

from msaas import compat, models
from msaas.separation import StreamResampler


@pytest.mark.parametrize("old,new", [(44100, 48000), (48000, 44100), (22050, 44100), (32000, 44100), (8000, 44100)])
def test_the_resamplers_reach_computed_is_julius_own(old, new):
    kernel = julius.ResampleFrac(old, new)
    assert compat.resampler_reach(kernel) == kernel._width == compat._reach_computed(kernel)


def test_the_streaming_resampler_still_equals_julius_with_the_computed_reach(monkeypatch):
    monkeypatch.setattr(compat, "resampler_reach", compat._reach_computed)  # as if julius had dropped _width
    x = torch.randn(2, 44100 * 2)
    stream = StreamResampler(44100, 48000, 96000)
    out = torch.cat([stream.push(x[:, i : i + 10000]) for i in range(0, x.shape[-1], 10000)] + [stream.flush()], dim=-1)
    assert torch.allclose(out, julius.resample_frac(x, 44100, 48000, output_length=96000), atol=1e-5)


def test_demucs_file_list_read_our_way_is_demucs_own():
    from demucs import pretrained

    remote = models.demucs_remote_dir()
    ours = compat._parse_files_txt(remote / "files.txt")
    assert ours == pretrained._parse_remote_files(remote / "files.txt") == compat.demucs_remote_files(remote)
    assert compat.demucs_root_url() == compat.DEMUCS_ROOT_URL == pretrained.ROOT_URL
    assert len(ours) > 10 and all(url.startswith(compat.DEMUCS_ROOT_URL) and url.endswith(".th") for url in ours.values())


def test_numpy_arrays_rebuild_through_the_current_module():
    import numpy as np

    assert compat.numpy_reconstruct().__module__ == (
        "numpy._core.multiarray" if np.__version__ >= "2" else "numpy.core.multiarray"
    )


def test_a_model_not_built_by_demucs_is_a_clear_error():
    with pytest.raises(TypeError, match="capture_init"):
        compat.model_init_args(torch.nn.Linear(1, 1))


def test_the_self_check_says_every_usual_path_is_in_use_here():
    lines = compat.describe()
    assert len(lines) == 3 and all(usual for usual, _ in lines), lines
    assert "ResampleFrac._width" in lines[0][1] and "_reconstruct" in lines[1][1] and "_parse_remote_files" in lines[2][1]


def test_no_other_module_touches_those_private_names():
    for path in Path(compat.__file__).parent.rglob("*.py"):
        if path.name in ("compat.py", "lame.py"):
            continue
        text = path.read_text()
        for name in ("_width", "_parse_remote_files", "ROOT_URL", "_init_args_kwargs", "_reconstruct"):
            assert name not in text, f"{path.name} uses {name}"
