"""The page in a real headless Chromium: upload a song, watch it separate, play and mix the stems."""

import json
import shutil

import pytest
import requests

from conftest import ROOT, make_song, msaas_process, needs, snr_db, wait_http
from msaas import audio

pytestmark = [
    pytest.mark.slow,
    needs("chromium", "Debian's chromium, which .ci/run installs"),
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


def serve(settings, processes) -> str:
    """A worker and rest as processes; the page's address."""
    processes.append(msaas_process("worker", settings))
    rest = msaas_process("rest", settings)
    processes.append(rest)
    url = f"http://127.0.0.1:{settings.port}"
    wait_http(f"{url}/readyz", proc=rest)
    return url


def test_a_song_is_separated_played_and_mixed_in_the_browser(settings, redis_client, processes, tmp_path):
    from playwright.sync_api import sync_playwright

    url = serve(settings, processes)
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
        # Sound comes out of the live graph (its analyser), not only a clock that advances.
        page.wait_for_function("msaasMixer.heard() > 0.001", timeout=10_000)

        def mixed(expected: dict) -> None:
            """The mixer's own graph, rendered offline, is the stems added at these gains, sample for sample: it is not
            silent, a muted stem is absent from it, and every stem starts at the same instant (any lag would show)."""
            check = f"""async () => {{
                const m = msaasMixer, out = await m.bounce(1.0), gains = {json.dumps(expected)};
                const start = Math.round(m.offset * m.stems[0].buffer.sampleRate);
                let worst = 0, energy = 0;
                for (let i = 0; i < out[0].length; i++) {{
                    let sum = 0;
                    for (const s of m.stems) sum += gains[s.track] * s.buffer.getChannelData(0)[start + i];
                    worst = Math.max(worst, Math.abs(out[0][i] - sum));
                    energy += out[0][i] * out[0][i];
                }}
                return [worst, Math.sqrt(energy / out[0].length)];
            }}"""
            worst, level = page.evaluate(check)
            assert worst < 1e-5 and level > 1e-3, (expected, worst, level)

        levels = "msaasMixer.levels()"
        stems_level = page.evaluate(
            "msaasMixer.stems.map(s => s.buffer.getChannelData(0).reduce((m, x) => Math.max(m, Math.abs(x)), 0))"
        )
        assert min(stems_level) > 0.01  # every stem holds sound: leaving one out must change the mix
        mixed({"drums": 1, "bass": 1, "other": 1, "vocals": 1})
        page.click("tr[data-track=vocals] button.muted")
        assert page.evaluate(levels) == {"drums": 1, "bass": 1, "other": 1, "vocals": 0}
        mixed({"drums": 1, "bass": 1, "other": 1, "vocals": 0})
        page.click("tr[data-track=drums] button.solo")
        mixed({"drums": 1, "bass": 0, "other": 0, "vocals": 0})
        page.fill("tr[data-track=drums] input.volume", "0.5")
        mixed({"drums": 0.5, "bass": 0, "other": 0, "vocals": 0})
        # What the live graph is set to follows (the audio thread applies gains asynchronously).
        gains = "JSON.stringify(Object.fromEntries(msaasMixer.stems.map(s => [s.track, s.gain.gain.value])))"
        page.wait_for_function(f'{gains} === \'{{"drums":0.5,"bass":0,"other":0,"vocals":0}}\'', timeout=5_000)
        assert page.get_attribute("#zip", "href").startswith("/apiv1/zip/")
        # What is heard, exported: the server's mix at the mixer's gains (only those that are not 1), the song's length.
        export = page.get_attribute("#export", "href")
        assert export.startswith("/apiv1/mix/") and export.endswith("?drums=0.5&bass=0&other=0&vocals=0")
        assert page.get_attribute("#karaoke-mix", "href").endswith("?vocals=0")
        base, songhash = url.rstrip("/"), export.split("?")[0].rsplit("/", 1)[1]
        (tmp_path / "export.mp3").write_bytes(requests.get(base + export, timeout=60).content)
        (tmp_path / "drums.mp3").write_bytes(requests.get(f"{base}/apiv1/track/{songhash}/drums", timeout=60).content)
        heard, drums = audio.decode(tmp_path / "export.mp3")[0], audio.decode(tmp_path / "drums.mp3")[0]
        assert heard.shape == drums.shape and heard.shape[1] == audio.probe(song).samples
        assert snr_db(0.5 * drums, heard) > 15  # through one more MP3 encoding
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

    url = serve(settings.with_(api_keys=("page-key",)), processes)
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
