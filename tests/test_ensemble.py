"""Ensembles: several models' stems averaged track by track, in one job, on the tiny Demucs and RoFormer checkpoints."""

import pytest
import requests
import torch

from conftest import TINY, make_song, msaas_process, start_rest, wait_until
from msaas import audio, models
from msaas.separation import ModelUnavailable, load_separator, separate_all

BS = "tiny-bs-roformer"


def as_vocals_pair(stems: torch.Tensor, tracks: list[str]) -> torch.Tensor:
    """A model's stems as (vocals, instrumental): the instrumental its stems summed less the vocals, if it has none."""
    vocals = stems[tracks.index("vocals")]
    rest = stems[tracks.index("instrumental")] if "instrumental" in tracks else stems.sum(0) - vocals
    return torch.stack([vocals, rest])


def test_an_ensemble_of_two_models_is_the_average_of_each_alone(tiny_repo, tmp_path):
    ensemble = load_separator(f"{BS}+{TINY}", tiny_repo, "cpu")
    bs, demucs = load_separator(BS, tiny_repo, "cpu"), load_separator(TINY, tiny_repo, "cpu")
    assert ensemble.tracks == ["vocals", "instrumental"] and not ensemble.can_split
    mix = torch.randn(2, 44100 * 2) * 0.1
    expected = (as_vocals_pair(separate_all(bs, mix), bs.tracks) + as_vocals_pair(separate_all(demucs, mix), demucs.tracks)) / 2
    assert torch.allclose(separate_all(ensemble, mix), expected, atol=1e-6)
    # from a file, block by block: the members stream it in turn, the sum so far waiting on disk
    path = make_song(tmp_path / "s.wav", seconds=3.2, seed=11, fmt="wav")
    blocks, fractions = [], []
    ensemble.read(path).separate(blocks.append, fractions.append)
    alone = []
    for member in (bs, demucs):
        got = []
        member.read(path).separate(got.append, lambda f: None)
        alone.append(as_vocals_pair(torch.cat(got, dim=-1), member.tracks))
    assert torch.allclose(torch.cat(blocks, dim=-1), (alone[0] + alone[1]) / 2, atol=1e-6)
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)  # one progress bar for both


def test_models_that_do_not_share_tracks_are_no_ensemble(tiny_repo):
    with pytest.raises(ModelUnavailable, match="do not all give 'bass'"):
        load_separator(f"tiny-mel-roformer+{BS}", tiny_repo, "cpu")
    assert models.ensemble_members("vocals-ensemble") == ["bs-roformer-vocals", "mel-roformer-vocals"]
    assert not models.available("vocals-ensemble", tiny_repo)


def test_an_ensemble_through_the_service_is_one_job_with_one_songhash(settings, processes, tmp_path):
    client = start_rest(settings, processes)
    processes.append(msaas_process("worker", settings))
    path = make_song(tmp_path / "s.mp3", seconds=2.5, seed=12)
    h = client.submit(path, model=[BS, TINY])["hash"]
    assert client.submit(path, model=f"{BS}+{TINY}")["hash"] == h  # the same ensemble, named either way
    seen = []
    assert wait_until(lambda: seen.append(client.status(h)) or seen[-1]["state"] in ("done", "failed"), 180, "the job")
    assert seen[-1]["state"] == "done", seen[-1]
    assert seen[-1]["model"] == f"{BS}+{TINY}" and seen[-1]["tracks"] == ["vocals", "instrumental"]
    progress = [s.get("progress", 0) for s in seen]
    assert progress == sorted(progress)
    n = audio.probe(path).samples
    for track in ("vocals", "instrumental"):
        assert audio.probe(client.download(h, track, tmp_path / f"{track}.mp3")).samples == n


@pytest.mark.parametrize(
    "model, status",
    [
        ([TINY], 400),  # one model is no ensemble
        ([TINY, TINY], 400),
        ([TINY, BS, "tiny-mel-roformer", "spleeter-2stems", "htdemucs"], 400),  # more than four
        ([TINY, "vocals-ensemble"], 400),  # not nested
        ([TINY, 3], 400),
        (["tiny-mel-roformer", BS], 422),  # the second gives no bass, drums or other
        ([TINY, "nope"], 422),
    ],
)
def test_bad_ensembles_are_refused_with_a_clear_error(live_app, song, model, status):
    import base64

    body = {"mp3": base64.b64encode(song.read_bytes()).decode(), "model": model}
    response = requests.post(f"{live_app.url}/apiv1/separate", json=body, timeout=30)
    assert response.status_code == status, response.text
    assert "error" in response.json()
