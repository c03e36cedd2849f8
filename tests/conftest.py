"""Fixtures that start real components: redis-server, an S3 server (moto), the app over HTTP, msaas processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from msaas import audio, jobs, redisproc, storage
from msaas.client import Client
from msaas.config import Settings

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "data"))  # synth.py: songs with known sources
TINY = "tiny"


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
def build_tiny_model(repo: Path, name: str = TINY) -> Path:
    """A small HTDemucs from demucs' own classes, saved in demucs' own format as a bag `name`."""
    import torch
    import yaml
    from demucs.htdemucs import HTDemucs
    from demucs.states import save_with_checksum

    torch.manual_seed(0)
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
    args, kwargs = model._init_args_kwargs
    repo.mkdir(parents=True, exist_ok=True)
    save_with_checksum({"klass": HTDemucs, "args": args, "kwargs": kwargs, "state": model.state_dict()}, repo / "tiny0001.th")
    (repo / f"{name}.yaml").write_text(yaml.safe_dump({"models": ["tiny0001"]}))
    return repo


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models"))


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


def msaas_process(command: str, settings: Settings, **extra_env) -> subprocess.Popen:
    env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1", **extra_env}
    return subprocess.Popen([str(BIN / "msaas"), command], env=env, start_new_session=True)


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


def stems_stored(settings, songhash):
    return sorted(p.name for p in (settings.storage_dir / "output").glob(f"{songhash}-*"))
