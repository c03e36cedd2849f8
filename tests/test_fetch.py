"""`msaas fetch-model` against a real HTTP server that serves demucs-format files, as demucs' model host does."""

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
import yaml
from demucs.pretrained import get_model
from demucs.states import load_model
from safetensors.torch import save_file

from conftest import ROOT, TINY, build_tiny_model, free_port
from msaas import models
from msaas.fetch import fetch_model


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def model_host(tmp_path):
    """A directory served over HTTP as demucs' host lays it out: <root>/<folder>/<sig>-<checksum>.th, and the list of files
    and bags (`remote/`) that fetch-model reads, naming them."""
    built = build_tiny_model(tmp_path / "built")
    (weights,) = built.glob("*.th")
    served = tmp_path / "served" / "demucs" / "tiny_models"
    served.mkdir(parents=True)
    shutil.copy(weights, served / weights.name)
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "files.txt").write_text(f"# the test's models\nroot: tiny_models/\n{weights.name}\n")
    shutil.copy(built / f"{TINY}.yaml", remote / f"{TINY}.yaml")
    asked = []

    class Recording(Quiet):
        def do_GET(self):
            asked.append(self.path)
            super().do_GET()

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), functools.partial(Recording, directory=str(tmp_path / "served")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/demucs/", remote, asked, weights.name
    server.shutdown()


def test_fetch_model_downloads_a_bag_into_a_directory_that_loads_as_demucs_repo(model_host, tmp_path, onnx_cache):
    root_url, remote, asked, name = model_host
    dest = tmp_path / "models"
    fetch_model(TINY, dest, root_url=root_url, remote=remote)
    assert asked == [f"/demucs/tiny_models/{name}"]
    assert sorted(p.name for p in dest.iterdir()) == sorted([name, f"{TINY}.yaml", "onnx"])
    assert get_model(TINY, dest).sources == ["drums", "bass", "other", "vocals"]
    (network,) = (dest / "onnx").iterdir()  # its network exported for ONNX Runtime beside the weights
    made = network.stat().st_mtime_ns
    fetch_model(TINY, dest, root_url=root_url, remote=remote)  # already there: nothing downloaded or exported again
    assert len(asked) == 1 and network.stat().st_mtime_ns == made and len(list((dest / "onnx").iterdir())) == 1


def test_a_worker_with_a_fetched_model_directory_loads_its_onnx_networks_without_exporting(model_host, tmp_path, onnx_cache):
    """DEMUCS_REPO from `msaas fetch-model`: ONNX Runtime runs the network exported there (nothing exported at start-up,
    nothing written to TORCH_HOME), and its stems are those of a network the worker exports itself."""
    import torch

    from conftest import make_song
    from msaas.separation import Inference, SongStream, load_separator

    root_url, remote, _, _ = model_host
    fetched, bare = tmp_path / "models", tmp_path / "bare"
    fetch_model(TINY, fetched, root_url=root_url, remote=remote)
    fetch_model(TINY, bare, root_url=root_url, remote=remote, onnx=False)
    assert not (bare / "onnx").exists()
    song = make_song(tmp_path / "song.mp3", seconds=4, seed=3)

    def stems(repo):
        sep = load_separator(TINY, repo, "cpu", Inference(engine="onnx"))
        assert sep.engine == "onnx"
        out = []
        sep.stream_song(SongStream(song, sep.samplerate), lambda block: out.append(block.clone()))
        return torch.cat(out, dim=-1)

    prebuilt = stems(fetched)
    assert not onnx_cache.exists()  # loaded from the model directory, not exported
    assert torch.equal(prebuilt, stems(bare))  # the worker's own export (into TORCH_HOME) gives the same stems
    assert [p.name for p in onnx_cache.iterdir()] == [p.name for p in (fetched / "onnx").iterdir()]


def test_a_download_that_does_not_match_its_checksum_is_refused_and_not_kept(model_host, tmp_path):
    root_url, remote, _, name = model_host
    (tmp_path / "models").mkdir()
    (tmp_path / "served" / "demucs" / "tiny_models" / name).write_bytes(b"not the weights")
    with pytest.raises(RuntimeError, match="invalid hash value"):
        from msaas.fetch import _from_legacy_repo

        _from_legacy_repo(TINY, tmp_path / "models", root_url, remote)
    assert not (tmp_path / "models" / name).exists()  # nothing a later fetch would take for the model


FETCH_IN_A_FRESH_PROCESS = """
import sys
from pathlib import Path
from msaas import models
from msaas.fetch import fetch_model
fetch_model("htdemucs", Path(sys.argv[1]), root_url=sys.argv[2])
"""


def test_fetch_model_falls_back_to_the_hugging_face_hub_and_converts_to_demucs_format(tmp_path):
    """The legacy host answers 404; a stand-in for the hub (its `resolve` endpoint: HEAD with X-Repo-Commit and ETag, then
    GET) serves `htdemucs.yaml` and a model in demucs' safetensors layout. fetch-model writes demucs' own format."""
    built = build_tiny_model(tmp_path / "built")
    (weights,) = built.glob("*.th")
    package = torch.load(weights, weights_only=False)
    model = load_model(package)
    hub = tmp_path / "hub" / "adefossez" / "HTDemucs" / "resolve" / "main"
    hub.mkdir(parents=True)
    metadata = {
        "klass": "demucs.htdemucs.HTDemucs",
        "args": json.dumps(list(package["args"])),
        "kwargs": json.dumps(package["kwargs"]),
    }
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, hub / "abcd1234.safetensors", metadata=metadata)
    (hub / "htdemucs.yaml").write_text(yaml.safe_dump({"models": ["abcd1234"]}))
    asked = []

    class Hub(Quiet):
        def send_head(self):
            asked.append((self.command, self.path))
            path = tmp_path / "hub" / self.path.lstrip("/")
            if not path.is_file():
                self.send_error(404)
                return None
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("X-Repo-Commit", "0" * 40)
            self.end_headers()
            return open(path, "rb")

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    env = {**os.environ, "HF_ENDPOINT": base, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0", "PYTHONPATH": str(ROOT)}
    dest = tmp_path / "models"
    try:
        out = subprocess.run(
            [sys.executable, "-c", FETCH_IN_A_FRESH_PROCESS, str(dest), f"{base}/legacy/"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        server.shutdown()
    assert out.returncode == 0, out.stderr[-3000:]
    assert ("GET", "/adefossez/HTDemucs/resolve/main/abcd1234.safetensors") in asked
    assert sorted(p.suffix for p in dest.iterdir() if p.is_file()) == [".th", ".yaml"]  # demucs' format, not safetensors
    assert [p.suffix for p in (dest / "onnx").iterdir()] == [".onnx"]  # and its network for ONNX Runtime
    loaded = get_model("htdemucs", dest)
    assert loaded.sources == ["drums", "bass", "other", "vocals"]
    first = next(iter(loaded.models))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), model.state_dict().values(), strict=True))


def test_fetch_model_puts_a_roformers_checkpoint_and_config_where_demucs_repo_finds_them(tiny_repo, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(tiny_repo / "tiny-bs-roformer.ckpt", served / "model_bs_roformer_ep_1.ckpt")
    shutil.copy(tiny_repo / "tiny-bs-roformer.yaml", served / "config_bs_roformer.yaml")
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), functools.partial(Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        dest = tmp_path / "models"
        sources = {"checkpoint": f"{base}/model_bs_roformer_ep_1.ckpt", "config": f"{base}/config_bs_roformer.yaml"}
        fetch_model("bs-roformer-vocals", dest, sources=sources)
        assert sorted(p.name for p in dest.iterdir()) == ["bs-roformer-vocals.ckpt", "bs-roformer-vocals.yaml"]
        assert models.available("bs-roformer-vocals", dest)
        assert models.details("bs-roformer-vocals", dest)["size_bytes"] > 10_000
        (dest / "bs-roformer-vocals.ckpt").unlink()
        sources["checkpoint"] = f"{base}/gone.ckpt"
        with pytest.raises(Exception, match="404"):
            fetch_model("bs-roformer-vocals", dest, sources=sources)
        assert not models.available("bs-roformer-vocals", dest)  # nothing half-downloaded left to load
    finally:
        server.shutdown()
