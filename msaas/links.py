"""A song sent as a link (`url` instead of `mp3`): fetched by rest through the same SSRF-safe client as callbacks
(`safehttp`), into a file with a running size check, within a time limit, refused early when the server says it is not
audio. What it fetched then goes through the same checks as an upload (rest's probe: audio, duration, rate)."""

from __future__ import annotations

import email.message
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from . import safehttp

CONNECT_AND_READ_S = 20.0  # each connection and each read
WHOLE_S = 120.0  # the whole download
BLOCK = 1 << 16
# What a server may call a song: audio of any kind, or the types servers give files they do not know.
AUDIO_TYPES = ("audio/", "video/mp4", "video/ogg", "application/ogg", "application/octet-stream", "binary/octet-stream")


class LinkError(ValueError):
    """The link cannot give a song; `status` is the HTTP status rest answers with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Fetched:
    size: int
    filename: str | None  # from Content-Disposition, else the URL's last path part


def fetch(url: object, path: Path, limit: int, allow_private: bool, whole_s: float = WHOLE_S) -> Fetched:
    """The song at `url` into `path` (at most `limit` bytes); LinkError when it cannot be had."""
    import requests

    try:
        url = safehttp.check_url(url, "url")
    except ValueError as exc:
        raise LinkError(400, str(exc)) from None
    deadline = time.monotonic() + whole_s
    size = 0
    try:
        with (
            safehttp.session(allow_private, CONNECT_AND_READ_S, "msaas-fetch/1", redirects=True) as http,
            http.get(url, stream=True) as response,
        ):
            if response.status_code >= 400:
                raise LinkError(422, f"the link answered HTTP {response.status_code}, not a song")
            kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if kind and not kind.startswith(AUDIO_TYPES):
                raise LinkError(415, f"the link is {kind}, not audio: link to the song file itself")
            if int(response.headers.get("Content-Length") or 0) > limit:
                raise LinkError(413, f"the song at the link is larger than the {limit // (1024 * 1024)} MB allowed")
            with open(path, "wb") as out:
                for block in response.iter_content(BLOCK):
                    size += len(block)
                    if size > limit:
                        raise LinkError(413, f"the song at the link is larger than the {limit // (1024 * 1024)} MB allowed")
                    if time.monotonic() > deadline:
                        raise LinkError(422, f"the link took longer than {whole_s:.0f} s to download")
                    out.write(block)
            name = _filename(response.headers.get("Content-Disposition"), response.url)
    except LinkError:
        raise
    except Exception as exc:
        if safehttp.forbidden(exc):
            raise LinkError(
                400, "the link points at a private, local or metadata address, which this server does not fetch"
            ) from None
        if isinstance(exc, requests.TooManyRedirects):
            raise LinkError(422, "the link redirects too many times") from None
        if isinstance(exc, requests.RequestException):
            raise LinkError(422, f"could not fetch the link: {exc.__class__.__name__}") from None
        raise
    if not size:
        raise LinkError(422, "the link gave an empty file")
    return Fetched(size, name)


def _filename(disposition: str | None, url: str) -> str | None:
    if disposition:
        header = email.message.Message()
        header["Content-Disposition"] = disposition
        if name := header.get_filename():
            return name
    return unquote(urlparse(url).path.rsplit("/", 1)[-1]) or None
