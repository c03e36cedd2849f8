"""Uploads are read as they arrive: `msaas rest` holds a bounded buffer, not the song several times over."""

import base64
import json
from pathlib import Path

import pytest
import requests

from conftest import make_song, msaas_process, wait_http, wait_until

pytestmark = pytest.mark.slow


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def peak_growth_mb(pid: int, send) -> float:
    """How far the process's resident memory rose above where it stood, while `send()` ran (Linux's peak RSS, reset first)."""
    before = status_kb(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM starts again from the current RSS
    send()
    return (status_kb(pid, "VmHWM") - before) / 1024


def test_rest_memory_grows_by_a_fraction_of_a_40_mb_upload_not_by_multiples_of_it(settings, redis_client, processes, tmp_path):
    settings = settings.with_(max_upload_bytes=64 << 20, max_duration_s=600)
    rest = msaas_process("rest", settings, "--workers", "1")
    processes.append(rest)
    url = f"http://127.0.0.1:{settings.port}/apiv1/separate"
    wait_http(f"http://127.0.0.1:{settings.port}/healthz", proc=rest)
    (server,) = wait_until(lambda: children(rest.pid), 30, "gunicorn's worker")

    def post_json(path: Path) -> requests.Response:
        body = json.dumps({"mp3": base64.b64encode(path.read_bytes()).decode()}).encode()
        return requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=300)

    def post_multipart(path: Path) -> requests.Response:
        with open(path, "rb") as song:
            return requests.post(url, files={"mp3": (path.name, song)}, timeout=300)

    small = make_song(tmp_path / "small.wav", seconds=2, fmt="wav")
    for post in (post_json, post_multipart):  # the first upload of each kind loads what it needs (PyAV, parsers)
        post(small).raise_for_status()
        small = make_song(tmp_path / "small.wav", seconds=2, seed=1, fmt="wav")
    # The bounds are 1.5x (JSON) and 0.5x (multipart); measured here: 0.07x and 0.05x. 0.25x catches a copy of the song.
    for seed, (post, bound) in enumerate(((post_json, 0.25), (post_multipart, 0.25))):
        song = make_song(tmp_path / f"big{seed}.wav", seconds=238, seed=seed, fmt="wav")
        size_mb = song.stat().st_size / 2**20
        assert 38 < size_mb < 42
        response = []
        growth = peak_growth_mb(server, lambda post=post, song=song, response=response: response.append(post(song)))
        assert response[0].status_code == 200, response[0].text
        print(f"{post.__name__}: {size_mb:.1f} MB song, rest's peak RSS rose {growth:.1f} MB ({growth / size_mb:.2f}x the song)")
        assert growth <= bound * size_mb
    assert len(requests.get(url.replace("separate", "queue"), timeout=10).json()["queue"]) == 4
