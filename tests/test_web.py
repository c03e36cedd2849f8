"""The page in a real headless Chromium: upload a song, watch it separate, play and mix the stems."""

import json
import shutil

import pytest

from conftest import ROOT, make_song, msaas_process, wait_http
from msaas import audio

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is installed by .ci/run"),
]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]


def test_a_song_is_separated_played_and_mixed_in_the_browser(settings, redis_client, processes, tmp_path):
    from playwright.sync_api import sync_playwright

    processes.append(msaas_process("worker", settings))
    rest = msaas_process("rest", settings)
    processes.append(rest)
    url = f"http://127.0.0.1:{settings.port}"
    wait_http(f"{url}/readyz", proc=rest)
    song = make_song(tmp_path / "my song.mp3", seconds=3)
    seconds = audio.probe(song).duration_s

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1000, "height": 800})
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        page.wait_for_selector("#model option[value=tiny]", state="attached")
        assert page.input_value("#model") == "tiny"  # the default, offered with its weights present
        page.set_input_files("#file", str(song))
        page.click("#send")
        page.wait_for_selector("#mixer:not([hidden])", timeout=180_000)
        assert page.text_content("#stage") == "done"
        durations = page.evaluate("msaasMixer.stems.map(s => [s.track, s.buffer.duration])")
        assert [t for t, _ in durations] == ["drums", "bass", "other", "vocals"]
        assert all(abs(d - seconds) < 0.01 for _, d in durations)

        page.click("#play")
        page.wait_for_function("msaasMixer.position() > 0.3", timeout=10_000)
        assert page.evaluate("msaasMixer.ctx.state") == "running"
        gains = "Object.fromEntries(msaasMixer.stems.map(s => [s.track, s.gain.gain.value]))"

        def heard(expected: dict) -> None:
            """Wait until the audio graph's gains are as expected (the audio thread applies changes asynchronously)."""
            page.wait_for_function(
                f"JSON.stringify({gains}) === {json.dumps(json.dumps(expected, separators=(',', ':')))}", timeout=5_000
            )

        heard({"drums": 1, "bass": 1, "other": 1, "vocals": 1})
        page.click("tr[data-track=vocals] button.muted")
        heard({"drums": 1, "bass": 1, "other": 1, "vocals": 0})
        page.click("tr[data-track=drums] button.solo")
        heard({"drums": 1, "bass": 0, "other": 0, "vocals": 0})
        page.fill("tr[data-track=drums] input.volume", "0.5")
        heard({"drums": 0.5, "bass": 0, "other": 0, "vocals": 0})
        assert page.get_attribute("#zip", "href").startswith("/apiv1/zip/")
        assert page.text_content("#recent-list") == "my song.mp3"

        shot = tmp_path / "mixer.png"
        page.screenshot(path=str(shot), full_page=True)
        (ROOT / "var").mkdir(exist_ok=True)
        shutil.copy(shot, ROOT / "var" / "mixer.png")  # for a person to look at (var/ is not in git)
        browser.close()
    assert errors == []


def test_the_page_asks_for_a_key_when_the_server_wants_one_and_then_works(settings, redis_client, processes, tmp_path):
    import zipfile

    from playwright.sync_api import sync_playwright

    settings = settings.with_(api_keys=("page-key",))
    processes.append(msaas_process("worker", settings))
    rest = msaas_process("rest", settings)
    processes.append(rest)
    url = f"http://127.0.0.1:{settings.port}"
    wait_http(f"{url}/readyz", proc=rest)
    song = make_song(tmp_path / "keyed.mp3", seconds=2)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#keybox:not([hidden])")  # the models call was refused: the page asks
        assert page.locator("#model option").count() == 0
        page.fill("#key", "page-key")
        page.click("#usekey")
        page.wait_for_selector("#model option[value=tiny]", state="attached")
        assert page.is_hidden("#keybox") and page.evaluate("localStorage.getItem('msaas.key')") == "page-key"
        page.set_input_files("#file", str(song))
        page.click("#send")
        page.wait_for_selector("#mixer:not([hidden])", timeout=180_000)
        assert page.evaluate("msaasMixer.stems.length") == 4  # the stems were fetched with the key
        with page.expect_download() as download:
            page.click("#zip")
        path = tmp_path / "stems.zip"
        download.value.save_as(path)
        assert sorted(zipfile.ZipFile(path).namelist()) == ["bass.mp3", "drums.mp3", "other.mp3", "vocals.mp3"]
        page.reload()  # the key is remembered
        page.wait_for_selector("#model option[value=tiny]", state="attached")
        assert page.is_hidden("#keybox")
        browser.close()
