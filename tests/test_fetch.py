"""`msaas fetch-model` against a real HTTP server that serves demucs-format files, as demucs' model host does."""

import functools
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import TINY, build_tiny_model, free_port
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


def test_fetch_model_downloads_a_bag_into_a_directory_that_loads_as_demucs_repo(model_host, tmp_path):
    from demucs.pretrained import get_model

    root_url, remote, asked, name = model_host
    dest = tmp_path / "models"
    fetch_model(TINY, dest, root_url=root_url, remote=remote)
    assert asked == [f"/demucs/tiny_models/{name}"]
    assert sorted(p.name for p in dest.iterdir()) == sorted([name, f"{TINY}.yaml"])
    assert get_model(TINY, dest).sources == ["drums", "bass", "other", "vocals"]
    fetch_model(TINY, dest, root_url=root_url, remote=remote)  # already there: nothing downloaded again
    assert len(asked) == 1


def test_a_download_that_does_not_match_its_checksum_is_refused_and_not_kept(model_host, tmp_path):
    root_url, remote, _, name = model_host
    (tmp_path / "models").mkdir()
    (tmp_path / "served" / "demucs" / "tiny_models" / name).write_bytes(b"not the weights")
    with pytest.raises(RuntimeError, match="invalid hash value"):
        from msaas.fetch import _from_legacy_repo

        _from_legacy_repo(TINY, tmp_path / "models", root_url, remote)
    assert not (tmp_path / "models" / name).exists()  # nothing a later fetch would take for the model
