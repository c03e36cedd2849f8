"""The `msaas` command's own behaviour: clear messages and exit codes."""

import os
import subprocess

from conftest import BIN, free_port


def run(*args, **env):
    return subprocess.run([str(BIN / "msaas"), *args], capture_output=True, text=True, timeout=120, env={**os.environ, **env})


def test_a_server_that_is_not_there_is_one_clear_line():
    out = run("status", "0" * 56, "--server", f"127.0.0.1:{free_port()}")
    assert out.returncode == 1 and out.stderr.startswith("msaas:") and "Traceback" not in out.stderr


def test_a_missing_song_file_is_named(tmp_path):
    out = run("separate", str(tmp_path / "nope.mp3"), "--server", f"127.0.0.1:{free_port()}")
    assert out.returncode == 2 and "no such file" in out.stderr


def test_fetching_an_unknown_model_fails_clearly(tmp_path):
    out = run("fetch-model", "no_such_model", str(tmp_path / "models"), HF_HUB_OFFLINE="1")
    assert out.returncode == 1 and "could not fetch no_such_model" in out.stderr
    out = run("fetch-model", "--no-onnx", "no_such_model", str(tmp_path / "models"), HF_HUB_OFFLINE="1")
    assert out.returncode == 1 and "could not fetch no_such_model" in out.stderr  # the flag of GPU images is known


def test_bad_configuration_is_refused_before_anything_starts():
    out = run("worker", PORT="not-a-port")
    assert out.returncode == 2 and "PORT" in out.stderr


def test_the_progress_bar_shows_the_fraction_done():
    from msaas.cli import progress_line

    line = progress_line("song.mp3", {"state": "running", "stage": "separating", "progress": 0.5}, width=10)
    assert line.startswith("song.mp3 [#####-----]  50.0% running separating")
    running = {"state": "running", "stage": "separating", "progress": 0.5, "eta_s": 83.4}
    assert progress_line("s", running, width=2).startswith("s [#-]  50.0% running separating, about 1:23 left")
    queued = {"state": "queued", "progress": 0.0, "queue_position": 2}
    assert progress_line("s", queued, width=2).startswith("s [--]   0.0% queued (2 ahead)")


def test_the_cli_sends_its_key_and_says_clearly_when_one_is_missing(settings, processes):
    from conftest import start_rest

    start_rest(settings.with_(api_keys=("the-key",)), processes)
    server = f"127.0.0.1:{settings.port}"
    out = run("queue", "--server", server)
    assert out.returncode == 1 and "401" in out.stderr and "API key" in out.stderr
    assert run("queue", "--server", server, "--key", "the-key").returncode == 0
    assert run("queue", "--server", server, MSAAS_API_KEY="the-key").returncode == 0


def test_stems_a_server_names_like_paths_are_refused_and_nothing_is_written(tmp_path, song):
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Hostile(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.answer({"hash": "h", "reason": "ok"})

        def do_GET(self):
            status = {"state": "done", "progress": 1, "tracks": ["vocals", "../../escaped"], "options": {}}
            self.answer(status if "/status/" in self.path else {"error": "no"})

        def answer(self, body):
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Hostile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = run("separate", str(song), "--wait", "--out", str(tmp_path / "out"), "--server", f"127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
    assert out.returncode == 1 and "would not stay in" in out.stderr
    assert not list(tmp_path.rglob("*escaped*")) and not (tmp_path / "out").exists()
