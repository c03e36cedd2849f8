"""Songs sent as links (`url` instead of `mp3`): rest fetches them through the SSRF-safe client, within the upload's
limits; against a real rest process, a real worker and a file server on loopback (allowed here only because the test
settings allow private addresses; refused otherwise)."""

import http.server
import json
import subprocess
import threading

import pytest
import requests

from conftest import BIN, make_song, msaas_process, start_rest, wait_until
from msaas import keys
from msaas.client import ApiError, Client, song_folder


class Files(http.server.BaseHTTPRequestHandler):
    """/song.mp3, and each way a link can fail to be a song."""

    song = b""
    limit = 0

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/redirect":
            return self._send(302, b"", headers={"Location": "/song.mp3"})
        routes = {
            "/song.mp3": (200, self.song, "audio/mpeg", {}),
            "/download": (
                200,
                self.song,
                "application/octet-stream",
                {"Content-Disposition": 'attachment; filename="Live Set.mp3"'},
            ),
            "/page.html": (200, b"<html>a page about a song</html>", "text/html; charset=utf-8", {}),
            "/noise.bin": (200, bytes(range(256)) * 64, "application/octet-stream", {}),
            "/empty.mp3": (200, b"", "audio/mpeg", {}),
        }
        if path == "/big.mp3":  # says so up front
            return self._send(200, b"x" * 16, "audio/mpeg", {"Content-Length": str(self.limit + 1)}, body_length=False)
        if path == "/endless.mp3":  # says nothing, and goes on past the limit
            self.send_response(200)
            self.send_header("Content-Type", "audio/mpeg")
            self.end_headers()
            try:
                for _ in range(self.limit // 65536 + 4):
                    self.wfile.write(b"\xff" * 65536)
            except OSError:
                pass  # rest stopped reading: as it should
            return None
        if path not in routes:
            return self._send(404, b"no such file", "text/plain")
        status, body, kind, headers = routes[path]
        return self._send(status, body, kind, headers)

    def _send(self, status, body, kind="text/plain", headers=None, body_length=True):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if body_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def files(settings, tmp_path):
    song = make_song(tmp_path / "song.mp3", seconds=2, seed=70)
    handler = type("SongFiles", (Files,), {"song": song.read_bytes(), "limit": settings.max_upload_bytes})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", song
    server.shutdown()


def test_a_song_sent_as_a_link_is_separated_as_if_uploaded(settings, processes, files, tmp_path, redis_client):
    base, song = files
    client = start_rest(settings, processes)
    processes.append(msaas_process("worker", settings))
    h = client.submit(f"{base}/redirect")["hash"]  # a redirect to the file is followed (each hop filtered)
    assert wait_until(lambda: client.status(h)["state"] == "done", 120, "the job")
    assert client.status(h)["name"] == "song.mp3"  # the link's file name
    assert "not separated again" in client.submit(song)["reason"]  # the same bytes: the same song
    form = requests.post(f"{client.base}/apiv1/separate", data={"url": f"{base}/download", "format": "flac"}, timeout=30)
    assert form.status_code == 200, form.text  # a form field works too
    assert client.status(form.json()["hash"])["name"] == "Live Set.mp3"  # from Content-Disposition
    # a link's form takes a callback as an upload's form does (JSON in the field)
    callback = json.dumps({"url": "http://127.0.0.1:9/hook", "data": {"n": 1}})
    linked = requests.post(
        f"{client.base}/apiv1/separate", data={"url": f"{base}/song.mp3", "callback": callback, "two_stems": "vocals"}, timeout=30
    )
    assert linked.status_code == 200, linked.text
    due = lambda: [json.loads(m) for m in redis_client.hvals(keys.OUTBOX_MESSAGES) if linked.json()["hash"] in m]  # noqa: E731
    (delivery,) = wait_until(due, 120, "the link's callback to fall due")
    assert delivery["url"] == "http://127.0.0.1:9/hook" and json.loads(delivery["body"])["data"] == {"n": 1}

    # the command line takes links where it takes files
    run = subprocess.run(
        [
            str(BIN / "msaas"),
            "separate",
            f"{base}/song.mp3?x=1",
            "--wait",
            "--out",
            str(tmp_path / "out"),
            "--server",
            client.base,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in (tmp_path / "out" / "song").iterdir()) == ["bass.mp3", "drums.mp3", "other.mp3", "vocals.mp3"]


@pytest.mark.parametrize(
    "path, status, words",
    [
        ("/page.html", 415, "text/html, not audio"),
        ("/noise.bin", 415, "not a song"),  # the server said nothing useful; the probe says no
        ("/missing.mp3", 422, "HTTP 404"),
        ("/big.mp3", 413, "larger than"),
        ("/endless.mp3", 413, "larger than"),
        ("/empty.mp3", 422, "empty"),
    ],
)
def test_a_link_that_gives_no_song_is_a_clear_4xx_leaving_nothing(settings, processes, files, redis_client, path, status, words):
    base, _ = files
    client = start_rest(settings, processes)
    r = requests.post(f"{client.base}/apiv1/separate", json={"url": base + path}, timeout=60)
    assert r.status_code == status and words in r.json()["error"], r.text
    assert [k for k in redis_client.keys("*") if not k.startswith("models:")] == []
    assert not settings.storage_dir.exists() or not [p for p in settings.storage_dir.rglob("*") if p.is_file()]


@pytest.mark.parametrize(
    "body, words",
    [
        ({"url": "ftp://example.com/song.mp3"}, "http:// or https://"),
        ({"url": "song.mp3"}, "http:// or https://"),
        ({"url": 42}, "string"),
        ({"url": "http://x/" + "a" * 3000}, "at most"),
        ({"url": "http://127.0.0.1:9/song.mp3", "mp3": "AAAA"}, "not both"),
    ],
)
def test_a_malformed_link_is_a_400(settings, processes, body, words, redis_client):
    client = start_rest(settings, processes)
    r = requests.post(f"{client.base}/apiv1/separate", json=body, timeout=30)
    assert r.status_code == 400 and words in r.json()["error"], r.text


def test_links_to_private_addresses_are_refused_unless_allowed(settings, processes, files, redis_client):
    base, _ = files
    client = start_rest(settings.with_(callback_allow_private=False), processes)
    for url in (f"{base}/song.mp3", "http://169.254.169.254/latest/meta-data/", "http://10.1.2.3/song.mp3", "http://[::1]/a.mp3"):
        with pytest.raises(ApiError) as refused:
            client.submit(url)
        assert refused.value.status == 400 and "private" in str(refused.value), url
    assert redis_client.llen(keys.QUEUE) == 0


def test_a_links_folder_stays_inside_the_output_folder():
    assert song_folder("https://example.com/a/My%20Song.mp3?x=1") == "My_Song"
    assert song_folder("https://example.com/..") == "song" and song_folder("https://example.com/") == "song"
    assert song_folder("/music/take 1.mp3") == "take_1"
    assert Client("127.0.0.1:1").base == "http://127.0.0.1:1"
