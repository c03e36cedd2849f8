"""The page in a real headless Chromium: upload a song, watch it separate, play and mix the stems."""

import json
import shutil

import numpy as np
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
        page = browser.new_page(viewport={"width": 1000, "height": 800}, accept_downloads=True)
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        page.wait_for_selector("#model option[value=tiny]", state="attached")
        assert page.input_value("#model") == "tiny"  # the default, offered with its weights present
        page.set_input_files("#file", str(song))
        page.select_option("#format", "flac")  # lossless stems: the exported mix can be held to -60 dB
        page.click("#send")
        page.wait_for_selector("#mixer:not([hidden])", timeout=180_000)
        assert page.text_content("#stage").startswith("done")
        durations = page.evaluate("msaasMixer.stems.map(s => [s.track, s.buffer.duration])")
        assert [t for t, _ in durations] == ["drums", "bass", "other", "vocals"]
        assert all(abs(d - seconds) < 0.01 for _, d in durations)

        # Waveforms: one canvas per stem, drawn from the server's peaks, not blank.
        drawn = page.evaluate(
            """msaasMixer.stems.map(s => {
                const c = s.canvas, data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
                let inked = 0;
                for (let i = 3; i < data.length; i += 4) if (data[i] > 0) inked++;
                return [s.track, s.peaksFrom, c.width, inked / (c.width * c.height)];
            })"""
        )
        assert page.locator("#stems canvas").count() == 4
        for track, source, width, inked in drawn:
            assert source == "server" and width > 300 and inked > 0.05, (track, source, width, inked)
        assert page.text_content("#time") == f"0:00 / 0:0{int(seconds)}"

        # Seeking by clicking a waveform: the position and the clock move there.
        box = page.locator("[data-track=bass] .wave").bounding_box()
        page.mouse.click(box["x"] + 0.5 * box["width"], box["y"] + box["height"] / 2)
        at = page.evaluate("msaasMixer.position()")
        assert abs(at - seconds / 2) < 0.05 * seconds, at
        page.wait_for_function("document.getElementById('time').textContent.startsWith('0:01 /')", timeout=5_000)
        page.mouse.click(box["x"] + 2, box["y"] + 5)  # back to the start
        assert page.evaluate("msaasMixer.position()") < 0.05 * seconds

        page.click("#play")
        page.wait_for_function("msaasMixer.position() > 0.3", timeout=10_000)
        assert page.evaluate("msaasMixer.ctx.state") == "running"
        # Sound comes out of the live graph (its analyser), not only a clock that advances.
        page.wait_for_function("msaasMixer.heard() > 0.001", timeout=10_000)
        page.keyboard.press("Escape")
        page.evaluate("document.activeElement.blur()")
        page.keyboard.press(" ")  # Space pauses
        assert page.evaluate("msaasMixer.playing") is False
        page.click("#stop")

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
        page.click("[data-track=vocals] button.muted")
        assert page.get_attribute("[data-track=vocals] button.muted", "aria-pressed") == "true"
        assert page.evaluate(levels) == {"drums": 1, "bass": 1, "other": 1, "vocals": 0}
        mixed({"drums": 1, "bass": 1, "other": 1, "vocals": 0})

        # Mute, then export: the file is what is heard, the sum of the unmuted stems (lossless here: within -60 dB).
        export = page.get_attribute("#export", "href")
        assert export.startswith("/apiv1/mix/") and export.endswith("?vocals=0")
        with page.expect_download() as download:
            page.click("#export")
        download.value.save_as(tmp_path / "export.flac")
        base, songhash = url.rstrip("/"), export.split("?")[0].rsplit("/", 1)[1]
        stems = {}
        for track in ("drums", "bass", "other", "vocals"):
            (tmp_path / f"{track}.flac").write_bytes(requests.get(f"{base}/apiv1/track/{songhash}/{track}", timeout=60).content)
            stems[track] = audio.decode(tmp_path / f"{track}.flac")[0]
        heard = audio.decode(tmp_path / "export.flac")[0]
        expected = stems["drums"] + stems["bass"] + stems["other"]
        assert heard.shape == expected.shape and heard.shape[1] == audio.probe(song).samples  # exact length
        assert 10 * np.log10(((heard - expected) ** 2).sum() / (expected**2).sum()) < -60
        assert snr_db(expected + stems["vocals"], heard) < 20  # the vocals are out of it, not merely quieter

        page.click("[data-track=drums] button.solo")
        mixed({"drums": 1, "bass": 0, "other": 0, "vocals": 0})
        page.fill("[data-track=drums] input.volume", "0.5")
        mixed({"drums": 0.5, "bass": 0, "other": 0, "vocals": 0})
        # What the live graph is set to follows (the audio thread applies gains asynchronously).
        gains = "JSON.stringify(Object.fromEntries(msaasMixer.stems.map(s => [s.track, s.gain.gain.value])))"
        page.wait_for_function(f'{gains} === \'{{"drums":0.5,"bass":0,"other":0,"vocals":0}}\'', timeout=5_000)
        assert page.get_attribute("#zip", "href").startswith("/apiv1/zip/")
        assert page.get_attribute("#export", "href").endswith("?drums=0.5&bass=0&other=0&vocals=0")
        assert page.get_attribute("#karaoke-mix", "href").endswith("?vocals=0")

        # The library, from the server: the song under its file name; deleted from there, it is gone.
        page.wait_for_selector(f"#songs li[data-hash='{songhash}']")
        assert page.text_content(f"#songs li[data-hash='{songhash}'] .open") == "my song.mp3"
        assert "tiny · 0:03 · done" in page.text_content(f"#songs li[data-hash='{songhash}'] .meta")

        shot = tmp_path / "mixer.png"
        page.screenshot(path=str(shot), full_page=True)
        keep_screenshot(shot, "mixer.png")

        page.once("dialog", lambda dialog: dialog.accept())
        page.click(f"#songs li[data-hash='{songhash}'] .delete")
        page.wait_for_selector(f"#songs li[data-hash='{songhash}']", state="detached")
        assert page.is_hidden("#job") and page.is_visible("#songs-empty")
        assert requests.get(f"{base}/apiv1/status/{songhash}", timeout=10).status_code == 404
        browser.close()
    assert errors == []


def keep_screenshot(shot, name: str) -> None:
    """For a person to look at: var/screenshots/ (not in git), and its path in the test log (CI prints it)."""
    folder = ROOT / "var" / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, folder / name)
    print(f"screenshot: {folder / name} ({(folder / name).stat().st_size} bytes)")


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


def test_on_a_phone_by_keyboard_a_song_from_a_link_is_separated_and_mixed(settings, redis_client, processes, tmp_path):
    """A narrow touch screen, no mouse: a link typed and sent with Enter, controls reached by Tab, each with a name a
    screen reader can say, nothing wider than the screen."""
    import http.server
    import threading

    from playwright.sync_api import sync_playwright

    url = serve(settings, processes)
    make_song(tmp_path / "linked.mp3", seconds=2, seed=3)
    files = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))
    )
    threading.Thread(target=files.serve_forever, daemon=True).start()
    link = f"http://127.0.0.1:{files.server_address[1]}/linked.mp3"  # loopback: allowed by the test settings only

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        page.wait_for_selector("#model option[value=tiny]", state="attached")
        focused = []
        for _ in range(4):  # skip link, file picker, link field...
            page.keyboard.press("Tab")
            focused.append(page.evaluate("document.activeElement.id || document.activeElement.className"))
        assert "file" in focused and "link" in focused, focused
        page.focus("#link")
        page.keyboard.type(link)
        page.keyboard.press("Enter")
        page.wait_for_selector("#mixer:not([hidden])", timeout=180_000)
        assert page.text_content("#title") == "linked.mp3"
        assert page.evaluate("msaasMixer.stems.every(s => s.peaksFrom === 'server')")

        unnamed = page.evaluate(
            """[...document.querySelectorAll('input, select, button, a[href], canvas, [role=status]')]
                .filter(el => el.offsetParent !== null || el.getAttribute('role') === 'status')
                .filter(el => !(el.getAttribute('aria-label') || el.textContent.trim() || (el.labels && el.labels.length)))
                .filter(el => el.getAttribute('role') !== 'status')
                .map(el => el.outerHTML.slice(0, 80))"""
        )
        assert unnamed == []
        assert page.get_attribute("#stage", "aria-live") == "polite"  # progress is read out as it changes
        # nothing wider than the phone; each waveform as wide as the screen allows
        wide = page.evaluate(
            "[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > 390).map(e => e.outerHTML.slice(0, 60))"
        )
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, wide
        widths = page.evaluate("msaasMixer.stems.map(s => s.canvas.getBoundingClientRect().width)")
        assert all(w > 300 for w in widths), widths
        # a tap on a waveform seeks; the mute button is reached and pressed from the keyboard
        box = page.locator("[data-track=drums] .wave").bounding_box()
        page.touchscreen.tap(box["x"] + 0.75 * box["width"], box["y"] + box["height"] / 2)
        assert abs(page.evaluate("msaasMixer.position() / msaasMixer.duration") - 0.75) < 0.05
        page.focus("[data-track=vocals] button.muted")
        page.keyboard.press("Enter")
        assert page.evaluate("msaasMixer.levels().vocals") == 0
        shot = tmp_path / "phone.png"
        page.screenshot(path=str(shot), full_page=True)
        keep_screenshot(shot, "mixer-phone.png")
        browser.close()
    files.shutdown()
    assert errors == []
