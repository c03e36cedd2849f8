"""A bounded load test on loopback: concurrent uploads and status polls against `msaas rest` (gunicorn)."""

import base64
import statistics
import threading
import time

import pytest
import requests

from conftest import make_song, msaas_process, wait_http

pytestmark = pytest.mark.slow

CLIENTS = 16
UPLOADS_PER_CLIENT = 4
POLLS_PER_UPLOAD = 5


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def test_many_concurrent_uploads_and_polls_get_no_errors(settings, redis_client, processes, tmp_path):
    rest = msaas_process("rest", settings)
    processes.append(rest)
    url = f"http://127.0.0.1:{settings.port}"
    wait_http(f"{url}/readyz", proc=rest)
    songs = [make_song(tmp_path / f"s{i}.mp3", seconds=1, seed=100 + i) for i in range(CLIENTS * UPLOADS_PER_CLIENT // 2)]
    bodies = [{"mp3": base64.b64encode(s.read_bytes()).decode()} for s in songs]  # each song twice: the dedupe path too
    latencies = {"upload": [], "status": []}
    errors: list[str] = []
    busy: list[int] = []  # uploads told to come back (more at once than MAX_UPLOADS per rest process)
    lock = threading.Lock()

    def client(n: int) -> None:
        http = requests.Session()
        for i in range(UPLOADS_PER_CLIENT):
            body = bodies[(n * UPLOADS_PER_CLIENT + i) % len(bodies)]
            started = time.perf_counter()
            while (r := http.post(f"{url}/apiv1/separate", json=body, timeout=60)).status_code == 503:
                assert r.headers["Retry-After"] and "uploads" in r.json()["error"]  # backpressure, not a failure
                with lock:
                    busy.append(1)
                time.sleep(0.05)
            spent = time.perf_counter() - started
            with lock:
                latencies["upload"].append(spent)
                if r.status_code != 200:
                    errors.append(f"upload {r.status_code} {r.text[:100]}")
                    continue
            h = r.json()["hash"]
            for _ in range(POLLS_PER_UPLOAD):
                started = time.perf_counter()
                s = http.get(f"{url}/apiv1/status/{h}", timeout=60)
                with lock:
                    latencies["status"].append(time.perf_counter() - started)
                    if s.status_code != 200 or s.json()["state"] != "queued":
                        errors.append(f"status {s.status_code} {s.text[:100]}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    wall = time.perf_counter() - started
    for kind, values in latencies.items():
        print(
            f"{kind:6}: {len(values)} requests, p50 {percentile(values, 0.5) * 1000:.0f} ms, p95 {percentile(values, 0.95) * 1000:.0f} ms, "
            f"p99 {percentile(values, 0.99) * 1000:.0f} ms, mean {statistics.mean(values) * 1000:.0f} ms"
        )
    print(f"{sum(map(len, latencies.values()))} requests in {wall:.1f} s, {len(errors)} errors, {len(busy)} told to retry")
    assert errors == []
    assert len(latencies["upload"]) == CLIENTS * UPLOADS_PER_CLIENT
    # Measured on the 2-CPU build machine: p95 61 ms (uploads, retries for MAX_UPLOADS included) and 15 ms (status);
    # bounded at about ten times that, so a slow shared machine passes and a server that serializes requests does not.
    assert percentile(latencies["upload"], 0.95) < 1.0 and percentile(latencies["status"], 0.95) < 0.25
    assert len(requests.get(f"{url}/apiv1/queue", timeout=10).json()["queue"]) == len(songs)
