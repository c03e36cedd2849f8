"""Long songs across workers: parts separated apart and stitched give the stems of the whole song."""

import numpy as np
import pytest
import torch

from conftest import TINY, make_song
from msaas import audio
from msaas.separation import StemSink, load_separator, separate_all, separate_file
from msaas.splitting import make_plan, parts_for, separate_part, stitch


@pytest.fixture(scope="module")
def tiny(tiny_repo):
    return load_separator(TINY, tiny_repo, "cpu")


class Collect:
    def __init__(self):
        self.blocks = []

    def put(self, block):
        self.blocks.append(block.clone())

    def finish(self):
        pass


def error_db(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * np.log10(float(((a - b) ** 2).sum()) / float((b**2).sum()) + 1e-30)


@pytest.mark.parametrize("parts", [2, 3, 5])
def test_parts_stitched_equal_the_whole_song(tiny, tmp_path, parts):
    song = make_song(tmp_path / "song.mp3", seconds=31.7, seed=3)
    plan = make_plan(tiny, song, parts)
    assert len(plan["parts"]) == parts
    files = []
    for k in range(parts):
        files.append(tmp_path / f"part{k}.f32")
        seen = []
        separate_part(tiny, song, plan, k, files[-1], seen.append)
        assert seen[-1] == 1.0
    got = Collect()
    stitch(tiny, plan, lambda k: files[k], got)
    stitched = torch.cat(got.blocks, dim=-1)
    whole = separate_all(tiny, torch.from_numpy(audio.decode(song)[0]))
    assert stitched.shape == whole.shape
    assert error_db(stitched, whole) < -60  # the bound; the sums are taken in the same order, so in fact:
    assert torch.equal(stitched, whole)


def test_stitched_stems_are_the_unsplit_files(tiny, tmp_path):
    song = make_song(tmp_path / "song.wav", seconds=20.3, rate=48000, seed=5, fmt="wav")  # through both resamplers
    (tmp_path / "whole").mkdir()
    (tmp_path / "split").mkdir()
    whole = separate_file(tiny, song, tmp_path / "whole", fmt="flac")
    plan = make_plan(tiny, song, 2)
    for k in range(2):
        separate_part(tiny, song, plan, k, tmp_path / f"p{k}", lambda f: None)
    sink = StemSink(tiny, tmp_path / "split", plan["samples"], plan["rate"], "flac", 320, None)
    try:
        stitch(tiny, plan, lambda k: tmp_path / f"p{k}", sink)
    finally:
        sink.close()
    for track, path in whole.items():
        a, b = audio.decode(sink.paths[track])[0], audio.decode(path)[0]
        assert a.shape == b.shape == (2, int(20.3 * 48000))
        assert error_db(torch.from_numpy(a), torch.from_numpy(b)) < -60


def test_a_cut_short_part_is_refused(tiny, tmp_path):
    song = make_song(tmp_path / "song.mp3", seconds=20, seed=1)
    plan = make_plan(tiny, song, 2)
    for k in range(2):
        separate_part(tiny, song, plan, k, tmp_path / f"p{k}", lambda f: None)
    data = (tmp_path / "p1").read_bytes()
    (tmp_path / "p1").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="expected"):
        stitch(tiny, plan, lambda k: tmp_path / f"p{k}", Collect())


@pytest.mark.parametrize(
    ("seconds", "over", "workers", "expected"),
    [(600, 240, 2, 2), (600, 240, 10, 5), (600, 240, 1, 1), (200, 240, 4, 1), (600, 0, 4, 1), (250, 240, 8, 2)],
)
def test_how_many_parts(seconds, over, workers, expected):
    assert parts_for(seconds, over, 8, workers) == expected
