"""Fixtures that start real components: redis-server, an S3 server (moto), the app over HTTP, msaas processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests

from msaas import audio, compat, jobs, redisproc, storage
from msaas.client import Client
from msaas.config import Settings

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "data"))  # synth.py: songs with known sources
TINY = "tiny"


def needs(tool: str, why: str):
    """Skip a test where `tool` is missing, but not in CI (CI=true): there a missing tool fails the run, never skips it."""
    in_ci = os.environ.get("CI", "").lower() in ("true", "1")
    return pytest.mark.skipif(shutil.which(tool) is None and not in_ci, reason=f"{tool} is missing ({why})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float = 30, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer in {timeout_s} s")


def stop(proc: subprocess.Popen, sig=signal.SIGTERM, timeout_s: float = 15) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


# --- servers -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    port = free_port()
    proc = redisproc.start(port, tmp_path_factory.mktemp("redis"), persist=False)
    yield f"redis://127.0.0.1:{port}/0"
    stop(proc)


@pytest.fixture
def redis_client(redis_server):
    client = jobs.connect(redis_server)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def s3_server():
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_http(f"http://127.0.0.1:{port}/moto-api/", proc=proc)
    yield f"127.0.0.1:{port}"
    stop(proc)


@pytest.fixture
def s3_endpoint(s3_server):
    requests.post(f"http://{s3_server}/moto-api/reset", timeout=10).raise_for_status()
    return s3_server


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        st = storage.LocalStore(tmp_path / "storage")
    else:
        st = storage.S3Store(request.getfixturevalue("s3_endpoint"), "testing", "testing")
    st.ensure_buckets()
    return st


# --- models and songs ----------------------------------------------------------------------
def build_tiny_model(repo: Path, name: str = TINY, seed: int = 0, sig: str = "tiny0001") -> Path:
    """A small HTDemucs from demucs' own classes, saved in demucs' own format (`sig`.th) as a bag `name`."""
    import torch
    import yaml
    from demucs.htdemucs import HTDemucs
    from demucs.states import save_with_checksum

    torch.manual_seed(seed)
    model = HTDemucs(
        sources=["drums", "bass", "other", "vocals"],
        channels=4,
        growth=2,
        depth=4,
        t_layers=1,
        t_heads=1,
        dconv_comp=2,
        segment=4,
    )
    args, kwargs = compat.model_init_args(model)
    repo.mkdir(parents=True, exist_ok=True)
    save_with_checksum({"klass": HTDemucs, "args": args, "kwargs": kwargs, "state": model.state_dict()}, repo / f"{sig}.th")
    (repo / f"{name}.yaml").write_text(yaml.safe_dump({"models": [sig]}))
    return repo


_TINY_NET = dict(  # what both tiny RoFormers' configs share (the published ones share these keys too)
    dim=16, depth=1, stereo=True, time_transformer_depth=1, freq_transformer_depth=1, dim_head=8, heads=2, flash_attn=True,
    dim_freqs_in=129, stft_n_fft=256, stft_hop_length=64, stft_win_length=256, stft_normalized=False, mask_estimator_depth=2,
)  # fmt: skip
TINY_ROFORMERS = {  # (kind, the config's `model:` section, its `training:` section), small enough for the tests
    "tiny-bs-roformer": (
        "bs_roformer",
        dict(
            _TINY_NET, num_stems=1, linear_transformer_depth=0, freqs_per_bands=(4,) * 8 + (8,) * 8 + (33,),
            attn_dropout=0.1, ff_dropout=0.1, multi_stft_resolution_loss_weight=1.0,
            multi_stft_resolutions_window_sizes=(4096, 2048, 1024, 512, 256), multi_stft_hop_size=147,
        ),
        dict(instruments=["vocals", "other"], target_instrument="vocals"),
    ),
    "tiny-mel-roformer": (
        "mel_band_roformer",
        dict(_TINY_NET, num_stems=4, num_bands=8, attn_dropout=0, ff_dropout=0, sample_rate=44100),
        dict(instruments=["bass", "drums", "vocals", "other"], target_instrument=None),
    ),
}  # fmt: skip
TINY_CHUNK = 64 * 160  # samples (0.23 s), a multiple of the hop as the published chunk sizes are


def build_tiny_roformers(repo: Path) -> Path:
    """Small random-weight RoFormers saved as the published checkpoints are: the network's state dict (`.ckpt`) beside the
    yaml config it was built from, `!!python/tuple` tags and training keys included."""
    import torch
    import yaml

    from msaas.separation.roformer_nets import build

    for seed, (name, (kind, params, training)) in enumerate(TINY_ROFORMERS.items()):
        torch.manual_seed(seed)
        net = build(kind, dict(params))
        torch.save(net.state_dict(), repo / f"{name}.ckpt")
        config = {
            "audio": {"chunk_size": TINY_CHUNK, "n_fft": 256, "num_channels": 2, "sample_rate": 44100, "min_mean_abs": 0.0},
            "model": params,
            "training": {"batch_size": 2, "lr": 1.0e-05, **training},
            "inference": {"batch_size": 1, "num_overlap": 2},
        }
        (repo / f"{name}.yaml").write_text(yaml.dump(config))  # tuples as `!!python/tuple`, as in the published configs
    return repo


TINY_FT = "tiny_ft"  # a bag of specialists, as htdemucs_ft is: each member weighs in only its own tracks


def build_tiny_specialists(repo: Path) -> Path:
    """tiny0001 (already in `repo`) for drums and bass, a second tiny model for other and vocals, as one bag."""
    import yaml

    build_tiny_model(repo, "second", seed=1, sig="tiny0002")
    (repo / "second.yaml").unlink()
    (repo / f"{TINY_FT}.yaml").write_text(
        yaml.safe_dump({"models": ["tiny0001", "tiny0002"], "weights": [[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]})
    )
    return repo


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory) -> Path:
    return build_tiny_specialists(build_tiny_roformers(build_tiny_model(tmp_path_factory.mktemp("models"))))


def music(seconds: float, rate: int, channels: int = 2, seed: int = 3) -> np.ndarray:
    """Tones that come and go, a drum-like noise burst every 0.4 s: long and short blocks, onsets near the cuts."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 331 * t) * np.sin(2 * np.pi * 0.7 * t) ** 2
    burst = 0.3 * rng.standard_normal(len(t)) * np.exp(-60 * (t % 0.4))
    return np.stack([tone + burst, tone - 0.5 * burst])[:channels].astype(np.float32)


def write_blocks(writer, wave: np.ndarray, block: int = 100_003) -> None:
    """`wave` through a stem writer in blocks that straddle MP3 frames (and parallel_mp3's segments), then closed."""
    for at in range(0, wave.shape[1], block):
        writer.write(wave[:, at : at + block])
    writer.close()


def snr_db(reference: np.ndarray, decoded: np.ndarray) -> float:
    noise = ((decoded - reference) ** 2).sum()
    return float(10 * np.log10((reference**2).sum() / noise)) if noise else float("inf")


def make_song(path: Path, seconds: float = 4.0, rate: int = 44100, channels: int = 2, seed: int = 0, fmt: str = "mp3") -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 55 * t) * (t % 0.5 < 0.25)
    noise = 0.05 * rng.standard_normal(len(t)) * (t % 0.25 < 0.03)
    wave = np.stack([tone + noise, tone - noise])[:channels].astype(np.float32)
    audio.encode(path, wave, rate, fmt, 128)
    return path


@pytest.fixture(scope="session")
def song(tmp_path_factory) -> Path:
    return make_song(tmp_path_factory.mktemp("songs") / "song.mp3")


# --- the app and the processes -------------------------------------------------------------
@pytest.fixture
def settings(redis_server, tiny_repo, tmp_path) -> Settings:
    return Settings(
        redis_url=redis_server,
        storage_dir=tmp_path / "storage",
        demucs_model=TINY,
        demucs_repo=tiny_repo,
        callback_allow_private=True,
        heartbeat_ttl_s=3,
        max_upload_bytes=2 * 1024 * 1024,
        max_duration_s=60,
        port=free_port(),
        torch_threads=1,
        demucs_engine="torch",  # the default (auto) measures both engines at each worker's start: tests/test_inference.py
    )


class LiveApp:
    """The real Flask app served over HTTP by werkzeug in a thread."""

    def __init__(self, app, port: int):
        from werkzeug.serving import make_server

        self.app = app
        self.url = f"http://127.0.0.1:{port}"
        self.server = make_server("127.0.0.1", port, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def backends(self):
        return self.app.extensions["msaas"]

    def close(self):
        self.server.shutdown()


@pytest.fixture
def live_app(settings, redis_client):
    from msaas.rest import create_app

    store = storage.LocalStore(settings.storage_dir)
    live = LiveApp(create_app(settings, redis_client, store), settings.port)
    yield live
    live.close()


def msaas_process(command: str, settings: Settings, *args: str, log: Path | None = None, **extra_env) -> subprocess.Popen:
    """`msaas <command>` with these settings; `log`: its output goes to that file (to read what it said)."""
    env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1", **extra_env}
    out = open(log, "ab") if log else None  # noqa: SIM115 (the child holds it)
    try:
        return subprocess.Popen(
            [str(BIN / "msaas"), command, *args],
            env=env,
            start_new_session=True,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
        )
    finally:
        if out:
            out.close()


@pytest.fixture
def onnx_cache(tmp_path):
    """torch.hub's folder (TORCH_HOME/hub) in a temporary directory, where the exported networks are cached."""
    import torch.hub

    before = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torch" / "hub"))
    yield tmp_path / "torch" / "hub" / "checkpoints" / "msaas-onnx"
    torch.hub.set_dir(before)


@pytest.fixture
def processes():
    started: list[subprocess.Popen] = []
    yield started
    for proc in reversed(started):
        stop(proc, signal.SIGINT)


def wait_until(predicate, timeout_s=120, what="condition"):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def start_rest(settings, processes, **env):
    rest = msaas_process("rest", settings, **env)
    processes.append(rest)
    wait_http(f"http://127.0.0.1:{settings.port}/healthz", proc=rest)
    return Client(f"127.0.0.1:{settings.port}")


def objects_stored(settings, songhash):
    """Every object of the song in the output bucket: its stems and their peaks."""
    return sorted(p.name for p in (settings.storage_dir / "output").glob(f"{songhash}-*"))


def stems_stored(settings, songhash):
    return [name for name in objects_stored(settings, songhash) if not name.endswith(".peaks.json")]


class Receiver:
    """An HTTP server that records callbacks. Each call gets the next of `answers` ((status, delay_s) pairs), then
    `status` after `delay_s`."""

    def __init__(self, status=200, delay_s=0.0, answers=()):
        self.calls, self.status, self.delay_s, self.answers = [], status, delay_s, list(answers)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append((dict(self.headers), json.loads(body)))
                status, delay_s = receiver.answers.pop(0) if receiver.answers else (receiver.status, receiver.delay_s)
                time.sleep(delay_s)
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


FULL_XML = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>XMinioStorageFull</Code><Message>Storage backend has reached its '
    b"minimum free drive threshold. Please delete a few objects to proceed.</Message></Error>"
)


class FaultyS3:
    """A real S3 server (moto) behind a proxy that fails as real ones do: `full` refuses object writes the way a full
    MinIO does (507 XMinioStorageFull); `hang` holds object reads until `released` is set."""

    def __init__(self, upstream: str):
        self.full = False
        self.hang = False
        self.released = threading.Event()
        proxy = self
        target = f"http://{upstream}"

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                is_object = len(urlsplit(self.path).path.strip("/").split("/")) >= 2
                if proxy.full and is_object and self.command in ("PUT", "POST"):
                    return self.reply(507, {"Content-Type": "application/xml"}, FULL_XML)
                if proxy.hang and is_object and self.command == "GET":
                    proxy.released.wait(120)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                r = requests.request(self.command, target + self.path, headers=headers, data=body, timeout=60)
                skip = ("content-length", "transfer-encoding", "content-encoding", "connection")
                kept = {k: v for k, v in r.headers.items() if k.lower() not in skip}
                if self.command == "HEAD":
                    kept["Content-Length"] = r.headers.get("Content-Length", "0")
                self.reply(r.status_code, kept, b"" if self.command == "HEAD" else r.content)

            def reply(self, status, headers, content):
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if content:
                    self.wfile.write(content)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def faulty_s3(s3_endpoint):
    proxy = FaultyS3(s3_endpoint)
    yield proxy
    proxy.close()
