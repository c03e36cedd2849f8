"""An MSaaS stack for benchmarks: the bundled redis-server, `msaas rest` and warm `msaas worker`s, as real processes."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from msaas import keys, redisproc
from msaas.client import Client
from msaas.jobs import connect


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    def __init__(self, repo: Path, workers: int = 1, model: str = "htdemucs", cpus: list[set[int]] | None = None, **env: str):
        """`cpus`: the CPUs each worker may use (its affinity, from which it sizes its torch threads); default all."""
        self.work = Path(tempfile.mkdtemp(prefix="msaas-bench-"))
        self.workers_wanted = workers
        self.cpus = cpus or [None] * workers
        redis_port, port = free_port(), free_port()
        self.server = redisproc.start(redis_port, self.work / "redis", persist=False)
        self.env = {
            **os.environ,
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "STORAGE_DIR": str(self.work / "storage"),
            "PORT": str(port),
            "DEMUCS_REPO": str(repo),
            "DEMUCS_MODEL": model,
            "MAX_UPLOAD_MB": "200",
            "LOG_STDOUT": "0",
            "METRICS_PORT": "0",
            **env,
        }
        self.model = model
        self.client = Client(f"127.0.0.1:{port}")
        self.redis = connect(self.env["REDIS_URL"])
        self.procs: list[subprocess.Popen] = []

    def _start(self, command: str, quiet: bool = False, cpus: set[int] | None = None) -> subprocess.Popen:
        out = subprocess.DEVNULL if quiet else None
        proc = subprocess.Popen(
            [sys.executable, "-m", "msaas.cli", command],
            env=self.env,
            start_new_session=True,
            stdout=out,
            stderr=out,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
        self.procs.append(proc)
        return proc

    def __enter__(self) -> Stack:
        self.workers = [self._start("worker", cpus=self.cpus[i]) for i in range(self.workers_wanted)]
        self._start("rest", quiet=True)
        deadline = time.monotonic() + 300
        while True:  # warm: every worker has loaded the model
            loaded = sum(f"model {self.model} loaded" in line for line in self.redis.lrange(keys.LOGGING, 0, -1))
            if loaded >= self.workers_wanted:
                try:
                    self.client.models()
                    break
                except OSError:
                    pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise RuntimeError("the stack did not come up")
            time.sleep(0.5)
        time.sleep(3)
        return self

    def separate(self, path: Path) -> tuple[float, str]:
        """Seconds from the upload request to every stem stored (the job's `finished` time, which the worker sets once
        the last stem is stored: the client's polling adds nothing); the song's hash."""
        started = time.time()
        songhash = self.client.submit(path)["hash"]
        status = self.client.wait(songhash, timeout_s=7200)
        if status["state"] != "done":
            raise RuntimeError(f"the job failed: {status}")
        return status["finished"] - started, songhash

    def forget(self, songhash: str) -> None:
        """Remove a song's job and stems, so that sending it again separates it again (a benchmark's next round)."""
        self.redis.delete(keys.job_key(songhash), keys.parts_key(songhash))
        for stem in (Path(self.env["STORAGE_DIR"]) / "output").glob(f"{songhash}-*"):
            stem.unlink()

    def torch_threads(self) -> int:
        """The first worker's torch threads, as it logged them when it started."""
        for line in self.redis.lrange(keys.LOGGING, 0, -1):
            if m := re.search(r"ready: model \S+, (\d+) torch threads", line):
                return int(m[1])
        return 0

    def log_lines(self, songhash: str) -> list[str]:
        return [line for line in reversed(self.redis.lrange(keys.LOGGING, 0, -1)) if songhash in line]

    def stem(self, songhash: str, track: str) -> Path:
        return Path(self.env["STORAGE_DIR"]) / "output" / f"{songhash}-{track}.mp3"

    def __exit__(self, *exc) -> None:
        for proc in reversed(self.procs):
            proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            proc.wait(60)
        self.server.terminate()
        shutil.rmtree(self.work, ignore_errors=True)
