"""`msaas up`: the whole stack on one machine (Redis, local-directory store, rest, one worker, logs tail)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import requests

from . import models, redisproc
from .config import Settings, is_loopback

log = logging.getLogger("msaas.up")
COMPONENTS = ("logs", "rest", "worker")
RESTARTS_PER_MINUTE = 5
MODEL_HOSTS = (("huggingface.co", 443), ("dl.fbaipublicfiles.com", 443))


def _online(timeout_s: float = 3.0) -> bool:
    for host, port in MODEL_HOSTS:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            return True
        except OSError:
            continue
    return False


def choose_default_model(settings: Settings) -> tuple[str, str | None]:
    """The model the stack will serve by default, and a line to say when it is not the one asked for."""
    wanted = settings.demucs_model
    if models.available(wanted, settings.demucs_repo, settings.torch_home):
        return wanted, None
    if settings.demucs_repo is None and wanted in models.CATALOG and _online():
        return wanted, f"model {wanted} is not cached: the worker downloads it on first use"
    if models.available(models.SPLEETER):
        return models.SPLEETER, (
            f"model {wanted} is not available offline, so the default model is {models.SPLEETER} (bundled, vocals + accompaniment); "
            f"for 4 stems run `msaas fetch-model {wanted} models/` and start again with DEMUCS_REPO=models"
        )
    return (
        wanted,
        f"model {wanted} is not available offline: jobs will fail until its weights are in DEMUCS_REPO (`msaas fetch-model`)",
    )


def stack_settings(settings: Settings, model: str) -> Settings:
    """Loopback unless HOST says otherwise: on a laptop in a café the stack is not an open service. Callbacks to private
    addresses are allowed only then (they are the user's own); once it listens beyond loopback the filter is on."""
    host = settings.host or "127.0.0.1"
    private = settings.callback_allow_private or is_loopback(host)
    return settings.with_(host=host, demucs_model=model, callback_allow_private=private, log_stdout=False)


def local_url(settings: Settings) -> str:
    """Where this machine reaches the stack's rest."""
    host = settings.host or "127.0.0.1"
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.port}"


class Stack:
    def __init__(self, settings: Settings, root: Path):
        self.settings = settings
        self.root = root
        self.children: dict[str, subprocess.Popen] = {}
        self.redis: subprocess.Popen | None = None
        self.stopping = threading.Event()
        self.env: dict[str, str] = {}
        self.restarts: list[float] = []

    def start(self) -> None:
        port = urlparse(self.settings.redis_url).port or 6379
        log.info("starting redis-server on port %d (data in %s)", port, self.root / "redis")
        self.redis = redisproc.start(
            port, self.root / "redis", maxmemory=self.settings.redis_maxmemory, password=self.settings.redis_password
        )
        self.env = {**os.environ, **self.settings.to_env(), "PYTHONUNBUFFERED": "1"}
        self.env.pop("MINIO_HOST", None)
        for name in COMPONENTS:
            self._spawn(name)

    def _spawn(self, name: str) -> None:
        # Own process groups: Ctrl-C reaches only `up`, which then stops the children in order.
        self.children[name] = subprocess.Popen([sys.executable, "-m", "msaas.cli", name], env=self.env, start_new_session=True)

    def revive_worker(self) -> None:
        """A worker that exits (its watchdog found its job stalled, or it crashed) starts again, as its pod would; five
        exits within a minute leave it down, and `failed` then stops the stack."""
        proc = self.children.get("worker")
        if proc is None or proc.poll() is None or self.stopping.is_set():
            return
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < 60]
        if len(self.restarts) < RESTARTS_PER_MINUTE:
            log.warning("the worker exited with status %d; starting it again", proc.returncode)
            self.restarts.append(now)
            self._spawn("worker")

    def wait_ready(self, timeout_s: float = 60) -> bool:
        url = f"{local_url(self.settings)}/readyz"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.stopping.is_set():
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    return True
            except requests.RequestException:
                pass
            if self.failed():
                return False
            time.sleep(0.2)
        return False

    def failed(self) -> str | None:
        for name, proc in self.children.items():
            if proc.poll() is not None:
                return f"{name} exited with status {proc.returncode}"
        if self.redis and self.redis.poll() is not None:
            return f"redis-server exited with status {self.redis.returncode}"
        return None

    def stop(self) -> None:
        self.stopping.set()
        order = [("worker", signal.SIGINT), ("rest", signal.SIGTERM), ("logs", signal.SIGINT)]
        for name, sig in order:
            proc = self.children.get(name)
            if proc and proc.poll() is None:
                proc.send_signal(sig)
        for name, _ in order:
            proc = self.children.get(name)
            if proc:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if self.redis and self.redis.poll() is None:
            self.redis.terminate()  # redis flushes its append-only file on SIGTERM
            try:
                self.redis.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.redis.kill()


def up(settings: Settings, root: Path, try_files: list[Path], out_dir: Path) -> int:
    model, note = choose_default_model(settings)
    settings = stack_settings(settings, model)
    if note:
        log.warning(note)
    stack = Stack(settings, root)
    # Explicit handlers: a shell's background job inherits SIGINT ignored, and Ctrl-C must still stop the stack.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stack.stopping.set())
    try:
        stack.start()
        if not stack.wait_ready():
            log.error("the stack did not come up: %s", stack.failed() or "rest never answered")
            return 1
        log.info("MSaaS is up: %s (model %s); Ctrl-C stops it", local_url(settings), model)
        for song in try_files:
            _try(settings, song, out_dir)
        while not stack.stopping.wait(0.5):
            stack.revive_worker()
            if problem := stack.failed():
                log.error("stopping: %s", problem)
                return 1
        return 0
    finally:
        log.info("stopping MSaaS")
        stack.stop()


def _try(settings: Settings, song: Path, out_dir: Path) -> None:
    from .client import Client

    shown = [""]

    def show(status: dict) -> None:
        line = f"{status['state']} {status.get('stage', '')} {status['progress'] * 100:.0f}%"
        if line != shown[0]:
            shown[0] = line
            log.info("%s: %s", song.name, line)

    try:
        key = settings.api_keys[0] if settings.api_keys else None
        stems = Client(local_url(settings), api_key=key).separate(song, out_dir, on_status=show)
    except Exception as exc:
        log.error("separating %s failed: %s", song, exc)
        return
    for track, path in stems.items():
        log.info("%s: %s -> %s", song.name, track, path)
