"""End to end: `msaas rest`, `msaas worker` and `msaas logs` as real processes; `msaas up` as a user runs it."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

import redis
from conftest import BIN, ROOT, free_port, make_song, msaas_process, wait_http, wait_until
from msaas import audio
from msaas.client import Client

pytestmark = pytest.mark.slow


@pytest.fixture
def s3_stack(settings, redis_client, s3_endpoint, processes, tmp_path):
    """rest + worker + logs over MinIO's API (moto_server stands in for MinIO)."""
    env = dict(MINIO_HOST=s3_endpoint, MINIO_ACCESS_KEY="testing", MINIO_SECRET_KEY="testing")
    logs_out = open(tmp_path / "logs.txt", "w")
    processes.append(
        subprocess.Popen(
            [str(BIN / "msaas"), "logs"], env={**os.environ, **settings.to_env()}, stdout=logs_out, start_new_session=True
        )
    )
    processes.append(msaas_process("worker", settings, **env))
    rest = msaas_process("rest", settings, **env)
    processes.append(rest)
    wait_http(f"http://127.0.0.1:{settings.port}/readyz", proc=rest)
    return f"127.0.0.1:{settings.port}", tmp_path / "logs.txt"


def test_songs_uploaded_both_ways_come_back_as_full_length_stems(s3_stack, tmp_path):
    server, logs = s3_stack
    client = Client(server)
    songs = [
        make_song(tmp_path / "a.mp3", seconds=3, seed=1),
        make_song(tmp_path / "b.mp3", seconds=4.5, seed=2),
        make_song(tmp_path / "c.flac", seconds=2, seed=3, fmt="flac"),  # stored as c's hash + .flac, found by the worker
    ]
    hashes = [client.submit(songs[0])["hash"], client.submit(songs[1], multipart=True)["hash"], client.submit(songs[2])["hash"]]
    assert client.submit(songs[0], multipart=True)["hash"] == hashes[0]  # same song, same job
    for song, h in zip(songs, hashes, strict=True):
        status = client.wait(h, timeout_s=180)
        assert status["state"] == "done", status
        assert status["tracks"] == ["drums", "bass", "other", "vocals"]
        want = audio.probe(song).samples
        for track in status["tracks"]:
            stem = client.download(h, track, tmp_path / h / f"{track}.mp3")
            info = audio.probe(stem)
            assert info.samples == want and info.sample_rate == 44100
    assert client.queue() == []
    said = (".rest.info:queued", ".worker.info:job", "done in")
    assert wait_until(lambda: all(line in logs.read_text() for line in said), 30, "the logs tail to print every line")


def test_the_course_sample_client_works_unchanged(s3_stack, tmp_path):
    server, _ = s3_stack
    data = tmp_path / "data"
    data.mkdir()
    make_song(data / "short-one.mp3", seconds=2)
    out = subprocess.run(
        [sys.executable, str(ROOT / "short-sample-requests.py")],
        cwd=tmp_path,
        env={**os.environ, "REST": server},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert '"hash"' in out.stdout and "Cache from server is" in out.stdout


def test_the_cli_separates_and_downloads_with_wait(s3_stack, tmp_path):
    server, _ = s3_stack
    song = make_song(tmp_path / "tune.mp3", seconds=2.5, seed=5)
    out = subprocess.run(
        [str(BIN / "msaas"), "separate", str(song), "--wait", "--out", str(tmp_path / "stems"), "--server", server],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    assert f"tune.mp3 [{'#' * 30}] 100.0% done" in out.stderr  # the progress bar, full
    for track in ("drums", "bass", "other", "vocals"):
        assert audio.probe(tmp_path / "stems" / "tune" / f"{track}.mp3").samples == audio.probe(song).samples


def test_msaas_up_runs_the_whole_stack_and_stops_cleanly_on_ctrl_c(tiny_repo, tmp_path):
    song = make_song(tmp_path / "mine.mp3", seconds=3)
    port, redis_port = free_port(), free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "REDIS_PORT": str(redis_port),
        "DEMUCS_REPO": str(tiny_repo),
        "DEMUCS_MODEL": "tiny",
        "TORCH_THREADS": "1",
    }
    env.pop("STORAGE_DIR", None)
    up = subprocess.Popen(
        [str(BIN / "msaas"), "up", "--dir", str(tmp_path / "var"), "--try", str(song), "--out", str(tmp_path / "out")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not (tmp_path / "out" / "mine" / "vocals.mp3").exists():
            assert up.poll() is None, up.stdout.read()
            assert time.monotonic() < deadline
            time.sleep(0.5)
        time.sleep(0.5)
        for track in ("drums", "bass", "other", "vocals"):
            assert audio.probe(tmp_path / "out" / "mine" / f"{track}.mp3").samples == audio.probe(song).samples
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
        assert (tmp_path / "var" / "redis" / "appendonly.aof").exists() or (tmp_path / "var" / "redis" / "appendonlydir").exists()
        assert listening_on(port) == {"127.0.0.1"}  # loopback only: HOST opens it up
        bounded = redis.Redis(port=redis_port).config_get("maxmemory*")
        assert bounded == {"maxmemory": str(256 << 20), "maxmemory-policy": "noeviction", **bounded}
        (worker,) = children_running(up.pid, b"worker")
        os.kill(worker, signal.SIGKILL)  # a worker that dies (or whose watchdog ends it) is started again
        assert wait_until(lambda: [p for p in children_running(up.pid, b"worker") if p != worker], 30, "a new worker")
    finally:
        os.killpg(up.pid, signal.SIGINT)  # what Ctrl-C does
        code = up.wait(60)
    output = up.stdout.read()
    assert code == 0, output
    assert "stopping MSaaS" in output and "vocals ->" in output and "starting it again" in output
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/", timeout=2)


def children_running(pid: int, command: bytes) -> list[int]:
    """The live child processes of `pid` whose command line names `command`."""
    found = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            continue
        if command in argv and state != "Z":
            found.append(int(child))
    return found


def listening_on(port: int) -> set[str]:
    """The IPv4 addresses with a socket listening on `port` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


LOOPBACK_UP_THEN_EXEC = """
import fcntl, os, socket, struct, sys
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
with socket.socket() as s:
    flags = struct.unpack("16sH22x", fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH22x", b"lo", 0)))[1]
    fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))
os.execv(sys.argv[1], sys.argv[1:])
"""


def test_make_run_with_no_network_no_model_directory_and_no_cache_separates_with_the_bundled_model(tmp_path):
    """`msaas up --try`, as `make run` starts it, in a network namespace with loopback only: the model hosts cannot
    answer, DEMUCS_REPO is unset and the weights cache is empty; the stack says so and separates with Spleeter."""
    if subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode != 0:
        pytest.skip("this machine does not allow user and network namespaces (unshare -rn)")
    env = {k: v for k, v in os.environ.items() if k not in ("DEMUCS_REPO", "DEMUCS_MODEL", "STORAGE_DIR", "TORCH_HOME")}
    env.update(PORT=str(free_port()), REDIS_PORT=str(free_port()), TORCH_HOME=str(tmp_path / "cache"), HOME=str(tmp_path))
    out = tmp_path / "out"
    up = subprocess.Popen(
        ["unshare", "-rn", sys.executable, "-c", LOOPBACK_UP_THEN_EXEC, str(BIN / "msaas"), "up", "--dir", str(tmp_path / "var"),
         "--try", str(ROOT / "data" / "short-mix.mp3"), "--out", str(out)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until(lambda: (out / "short-mix" / "accompaniment.mp3").exists() or up.poll() is not None, 180, "the stems")
    finally:
        os.killpg(up.pid, signal.SIGINT)
        up.wait(60)
    output = up.stdout.read()
    assert "not available offline, so the default model is spleeter-2stems" in output, output
    song = audio.probe(ROOT / "data" / "short-mix.mp3").samples
    for track in ("vocals", "accompaniment"):
        assert audio.probe(out / "short-mix" / f"{track}.mp3").samples == song
