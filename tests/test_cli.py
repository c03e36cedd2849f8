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


def test_bad_configuration_is_refused_before_anything_starts():
    out = run("worker", PORT="not-a-port")
    assert out.returncode == 2 and "PORT" in out.stderr


def test_the_progress_bar_shows_the_fraction_done():
    from msaas.cli import progress_line

    line = progress_line("song.mp3", {"state": "running", "stage": "separating", "progress": 0.5}, width=10)
    assert line.startswith("song.mp3 [#####-----]  50.0% running separating")
