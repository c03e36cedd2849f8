"""An upload read as it arrives: the song goes to a file, so a rest process holds a bounded buffer, never the song itself.

Multipart bodies are parsed by werkzeug, its file parts written to a named file (UploadRequest) that becomes the upload's. JSON
bodies (`{"mp3": "<base64>", ...}`) go through a small streaming reader: the base64 of `mp3` is decoded block by block
as it is read; the other fields are small and parsed with `json`. Neither path depends on where `mp3` sits in the body."""

from __future__ import annotations

import binascii
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from flask import Request

BLOCK = 64 * 1024
FIELDS_BYTES = 64 * 1024  # all fields but the song together (a callback's data is at most 16 kB)
DATA_URL_PREFIX = 128  # a browser's `data:audio/mpeg;base64,` before the base64 itself


class BadUpload(ValueError):
    """The request is not an upload MSaaS can read; the message says why."""


class UploadTooLarge(BadUpload):
    """The song is larger than the upload limit."""


@dataclass
class Upload:
    fields: dict = field(default_factory=dict)
    path: Path | None = None
    size: int = 0
    filename: str | None = None


class _SongFile:
    """Bytes of the song, written to `path` with a running size check."""

    def __init__(self, path: Path, limit: int):
        self.path, self.limit, self.size = path, limit, 0
        self.out: BinaryIO = open(path, "wb")

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise UploadTooLarge(f"the song is larger than the {self.limit // (1024 * 1024)} MB allowed")
        self.out.write(data)

    def close(self) -> None:
        self.out.close()


class UploadRequest(Request):
    """Flask's request, but a multipart body's file parts go to named files on disk as werkzeug parses them (werkzeug's
    default keeps small ones in memory and larger ones in unnamed files, which would have to be copied)."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return tempfile.NamedTemporaryFile("wb+", prefix="msaas-part-")  # removed when werkzeug closes it


def from_multipart(files, form, path: Path, limit: int, names: set[str]) -> Upload:
    """A werkzeug-parsed multipart body (or a plain form carrying a link): the file part `mp3` linked (or copied) to
    `path`, the named fields as strings (the callback parsed from its JSON)."""
    fields = _form_fields(form, names)
    upload = files.get("mp3")
    if upload is None and form.get("url"):  # a link instead of the song: rest fetches it
        return Upload(fields, path)
    if upload is None:
        raise BadUpload("multipart upload needs a file field named mp3 (curl -F mp3=@song.mp3), or a url field")
    if form.get("url"):
        raise BadUpload("send the song (mp3) or a link to it (url), not both")
    stream = upload.stream
    stream.flush()
    size = os.fstat(stream.fileno()).st_size
    if size > limit:
        raise UploadTooLarge(f"the song is larger than the {limit // (1024 * 1024)} MB allowed")
    try:
        os.link(stream.name, path)  # the same bytes under the upload's name: no copy
    except (OSError, AttributeError, TypeError):
        stream.seek(0)
        with open(path, "wb") as out:
            shutil.copyfileobj(stream, out, BLOCK)
    return Upload(fields, path, size, upload.filename or None)


def _form_fields(form, names: set[str]) -> dict:
    fields: dict = {k: v for k, v in form.items() if k in names}
    if "callback" in fields:
        try:
            fields["callback"] = json.loads(fields["callback"])
        except ValueError:
            raise BadUpload('the callback form field must be JSON: {"url": ..., "data": ...}') from None
    elif "callback_url" in form:
        fields["callback"] = {"url": form["callback_url"], "data": form.get("callback_data")}
    return fields


def from_json(stream: BinaryIO, path: Path, limit: int) -> Upload:
    """A JSON object whose `mp3` field holds the song as base64 (optionally a `data:` URL), read from `stream` as it comes."""
    reader = _Reader(stream)
    song = _SongFile(path, limit)
    fields: dict = {}
    try:
        reader.skip_ws()
        if reader.take() != b"{":
            raise BadUpload('the body must be a JSON object like {"mp3": "<base64>"}, or a multipart upload')
        reader.skip_ws()
        if reader.peek() == b"}":
            reader.take()
        else:
            _members(reader, song, fields)
        reader.skip_ws()
        if reader.peek() != b"":
            raise BadUpload("the body holds more than one JSON object")
    finally:
        song.close()
    if "url" in fields and song.size:
        raise BadUpload("send the song (mp3) or a link to it (url), not both")
    if "url" in fields and "mp3" not in fields:  # a link instead of the song: rest fetches it
        return Upload(fields, path)
    if "mp3" in fields or not song.size:
        raise BadUpload("the JSON body needs a field mp3 holding the song as base64 (or url: a link to it)")
    return Upload(fields, path, song.size)


def _members(reader: _Reader, song: _SongFile, fields: dict) -> None:
    budget = [FIELDS_BYTES]
    seen_song = False
    while True:
        reader.skip_ws()
        if reader.take() != b'"':
            raise BadUpload("the JSON body is malformed: expected a field name")
        name = _loads(b'"' + reader.raw_string(budget) + b'"')
        reader.skip_ws()
        if reader.take() != b":":
            raise BadUpload("the JSON body is malformed: expected ':' after a field name")
        reader.skip_ws()
        if name == "mp3" and reader.peek() == b'"' and not seen_song:
            reader.take()
            decoder = _Base64(song)
            for piece in reader.string_pieces():
                decoder.feed(piece)
            decoder.finish()
            seen_song = True
        elif name == "mp3" and seen_song:
            raise BadUpload("the JSON body has two mp3 fields")
        else:
            fields[name] = _loads(reader.raw_value(budget))
        reader.skip_ws()
        end = reader.take()
        if end == b"}":
            return
        if end != b",":
            raise BadUpload("the JSON body is malformed: expected ',' or '}' between fields")


def _loads(raw: bytes):
    try:
        return json.loads(raw)
    except ValueError:
        raise BadUpload("the JSON body is malformed") from None


class _Reader:
    """Bytes of a stream with one block of look-ahead."""

    def __init__(self, stream: BinaryIO):
        self.stream = stream
        self.buf = b""
        self.pos = 0

    def _fill(self) -> bool:
        block = self.stream.read(BLOCK)
        if not block:
            return False
        self.buf = self.buf[self.pos :] + block
        self.pos = 0
        return True

    def peek(self) -> bytes:
        if self.pos >= len(self.buf) and not self._fill():
            return b""
        return self.buf[self.pos : self.pos + 1]

    def take(self) -> bytes:
        byte = self.peek()
        self.pos += len(byte)
        return byte

    def skip_ws(self) -> None:
        while True:
            rest = self.buf[self.pos :].lstrip(b" \t\r\n")
            self.pos = len(self.buf) - len(rest)
            if rest or not self._fill():
                return

    def string_pieces(self) -> Iterator[bytes]:
        """The rest of a JSON string (its opening quote taken) in pieces, escapes decoded, up to its closing quote."""
        while True:
            quote, slash = self.buf.find(b'"', self.pos), self.buf.find(b"\\", self.pos)
            stop = min(i for i in (quote, slash) if i >= 0) if quote >= 0 or slash >= 0 else -1
            if stop < 0:
                yield self.buf[self.pos :]
                self.pos = len(self.buf)
                if not self._fill():
                    raise BadUpload("the JSON body ends inside a string")
                continue
            yield self.buf[self.pos : stop]
            self.pos = stop + 1
            if stop == quote:
                return
            yield self._escape()

    def _escape(self) -> bytes:
        kind = self.take()
        simple = {b'"': b'"', b"\\": b"\\", b"/": b"/", b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t"}
        if kind in simple:
            return simple[kind]
        if kind == b"u":
            digits = b"".join(self.take() for _ in range(4))
            try:
                return chr(int(digits, 16)).encode("utf-8", "surrogatepass")
            except ValueError:
                pass
        raise BadUpload("the JSON body has a bad escape in a string")

    def raw_string(self, budget: list[int]) -> bytes:
        """The raw text of the rest of a string (escapes kept), its closing quote taken but not returned."""
        out = bytearray()
        escaped = False
        while True:
            byte = self.take()
            if not byte:
                raise BadUpload("the JSON body ends inside a string")
            if byte == b'"' and not escaped:
                return bytes(out)
            escaped = byte == b"\\" and not escaped
            out += byte
            _spend(budget, 1)

    def raw_value(self, budget: list[int]) -> bytes:
        """The raw text of one small JSON value (object, array, string, number, literal), for `json.loads`."""
        first = self.take()
        if first == b'"':
            return b'"' + self.raw_string(budget) + b'"'
        out = bytearray(first)
        if first in (b"{", b"["):
            depth = 1
            while depth:
                byte = self.take()
                if not byte:
                    raise BadUpload("the JSON body ends inside a value")
                if byte == b'"':
                    out += b'"' + self.raw_string(budget) + b'"'
                    continue
                depth += {b"{": 1, b"[": 1, b"}": -1, b"]": -1}.get(byte, 0)
                out += byte
                _spend(budget, 1)
            return bytes(out)
        while self.peek() not in (b"", b",", b"}", b"]", b" ", b"\t", b"\r", b"\n"):
            out += self.take()
            _spend(budget, 1)
        return bytes(out)


def _spend(budget: list[int], n: int) -> None:
    budget[0] -= n
    if budget[0] < 0:
        raise BadUpload(f"the fields besides mp3 are larger than the {FIELDS_BYTES // 1024} kB allowed")


class _Base64:
    """Base64 decoded as it arrives (whitespace ignored, a `data:...;base64,` prefix skipped), strict about the alphabet."""

    def __init__(self, song: _SongFile):
        self.song = song
        self.head = b""  # the first bytes, until a data: URL prefix can be told apart
        self.pending = b""
        self.padded = False

    def feed(self, piece: bytes) -> None:
        if self.head is not None:
            self.head += piece
            if len(self.head) < DATA_URL_PREFIX:
                return
            piece, self.head = self._without_prefix(self.head), None
        data = self.pending + piece.translate(None, b" \t\r\n")
        whole = len(data) // 4 * 4
        self.pending = data[whole:]
        if whole:
            self._decode(data[:whole])

    def finish(self) -> None:
        if self.head is not None:
            head, self.head = self._without_prefix(self.head), None
            self.feed(head)
        if self.pending:
            self._decode(self.pending)  # not a multiple of 4: refused, as base64.b64decode(validate=True) does

    @staticmethod
    def _without_prefix(head: bytes) -> bytes:
        comma = head.find(b",", 0, DATA_URL_PREFIX)
        return head[comma + 1 :] if head.startswith(b"data:") and comma > 0 else head

    def _decode(self, data: bytes) -> None:
        if self.padded:
            raise BadUpload("the mp3 field is not valid base64")
        try:
            self.song.write(binascii.a2b_base64(data, strict_mode=True))
        except binascii.Error:
            raise BadUpload("the mp3 field is not valid base64") from None
        self.padded = data.endswith(b"=")
