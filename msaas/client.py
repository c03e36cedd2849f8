"""A client of the REST API: upload a song, wait for its stems, download them."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests

SAFE_TRACK = re.compile(r"^[a-z][a-z0-9_]{0,31}$")  # what a track may be called: never a path
SAFE_EXT = ("mp3", "wav", "flac")


class ApiError(RuntimeError):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def is_link(song: Path | str) -> bool:
    """A song given as an http(s) link (the server fetches it), not a file here."""
    return isinstance(song, str) and song.startswith(("http://", "https://"))


def song_folder(song: Path | str) -> str:
    """The folder a song's stems are downloaded into: its file's (or link's last part's) name without the extension,
    kept to letters, digits, `-`, `_` and `.` so that it stays inside the output folder."""
    name = Path(unquote(urlparse(song).path)).stem if is_link(song) else Path(song).stem
    return re.sub(r"[^\w.-]", "_", name).strip(".") or "song"


def base_url(server: str) -> str:
    return server.rstrip("/") if "://" in server else f"http://{server.rstrip('/')}"


class Client:
    def __init__(self, server: str = "localhost:5000", timeout_s: float = 300, api_key: str | None = None):
        self.base = base_url(server)
        self.http = requests.Session()
        if api_key:
            self.http.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = timeout_s

    def _check(self, response: requests.Response) -> dict:
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text[:200]}
        if response.status_code >= 400:
            raise ApiError(response.status_code, body.get("error", response.reason))
        return body

    def submit(self, path: Path | str, model: str | None = None, multipart: bool = False, **choices) -> dict:
        """Upload the song at `path`, or send its link (`https://...`: the server fetches it)."""
        fields = {k: v for k, v in {"model": model, **choices}.items() if v is not None}
        url = f"{self.base}/apiv1/separate"
        if is_link(path):
            return self._check(self.http.post(url, json={"url": path, **fields}, timeout=self.timeout))
        if multipart:
            with open(path, "rb") as song:
                return self._check(self.http.post(url, files={"mp3": (Path(path).name, song)}, data=fields, timeout=self.timeout))
        fields["mp3"] = base64.b64encode(Path(path).read_bytes()).decode()
        return self._check(self.http.post(url, json=fields, timeout=self.timeout))

    def status(self, songhash: str) -> dict:
        return self._check(self.http.get(f"{self.base}/apiv1/status/{songhash}", timeout=30))

    def queue(self) -> list[str]:
        return self._check(self.http.get(f"{self.base}/apiv1/queue", timeout=30))["queue"]

    def songs(self, offset: int = 0, limit: int = 20) -> dict:
        """A page of this caller's songs, newest first: {songs, total, offset, next}."""
        params = {"offset": offset, "limit": limit}
        return self._check(self.http.get(f"{self.base}/apiv1/songs", params=params, timeout=30))

    def delete(self, songhash: str) -> dict:
        """Remove a whole song (its stems, their peaks, its record)."""
        return self._check(self.http.delete(f"{self.base}/apiv1/song/{songhash}", timeout=60))

    def models(self) -> dict:
        return self._check(self.http.get(f"{self.base}/apiv1/models", timeout=30))

    def wait(self, songhash: str, timeout_s: float = 3600, on_status: Callable[[dict], None] = lambda s: None) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.status(songhash)
            on_status(status)
            if status["state"] in ("done", "failed"):
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"{songhash} still {status['state']} after {timeout_s:.0f} s")
            time.sleep(0.5)

    def download(self, songhash: str, track: str, dest: Path) -> Path:
        return self._fetch(f"{self.base}/apiv1/track/{songhash}/{track}", dest)

    def mix(self, songhash: str, gains: dict[str, float], dest: Path) -> Path:
        """The stems mixed into one file, `gains` per track (a track not named keeps 1)."""
        return self._fetch(f"{self.base}/apiv1/mix/{songhash}", dest, params=gains)

    def peaks(self, songhash: str, track: str) -> dict:
        """A stem's waveform (`msaas.peaks`): {rate, samples, span, scale, peaks}."""
        return self._check(self.http.get(f"{self.base}/apiv1/peaks/{songhash}/{track}", timeout=30))

    def _fetch(self, url: str, dest: Path, params: dict | None = None) -> Path:
        with self.http.get(url, params=params, stream=True, timeout=self.timeout) as response:
            if response.status_code >= 400:
                self._check(response)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(dest, "wb") as out:
                for block in response.iter_content(1 << 20):
                    out.write(block)
        return dest

    def separate(
        self, path: Path | str, out_dir: Path, model: str | None = None, on_status=lambda s: None, **choices
    ) -> dict[str, Path]:
        """Upload (or send the link), wait, download every stem into out_dir/<song name>/<track>.<ext>."""
        songhash = self.submit(path, model, **choices)["hash"]
        status = self.wait(songhash, on_status=on_status)
        if status["state"] != "done":
            raise ApiError(422, f"separation of {path} failed: {status.get('error')}")
        ext = status["options"].get("format", "mp3")
        unsafe = [t for t in status["tracks"] if not isinstance(t, str) or not SAFE_TRACK.match(t)]
        if unsafe or ext not in SAFE_EXT:
            raise ApiError(502, f"the server named stems that would not stay in {out_dir}: {unsafe or ext!r}; nothing written")
        return {t: self.download(songhash, t, out_dir / song_folder(path) / f"{t}.{ext}") for t in status["tracks"]}
