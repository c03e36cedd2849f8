"""The v1 API: upload a song, watch its job, download and remove its stems, list models."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

from flask import Blueprint, Response, g, jsonify, request

from .. import audio, links, mixing, models, storage
from ..jobs import Job, JobState, songhash_of_file
from . import auth, uploads
from .backends import backends
from .choices import BadChoice, Choices, parse_choices, song_name
from .errors import ApiError

log = logging.getLogger("msaas.rest")
bp = Blueprint("api", __name__, url_prefix="/apiv1")


@bp.before_request
def authenticate():
    """With API_KEYS set, every /apiv1 request needs `Authorization: Bearer <one of them>`; each key is a tenant."""
    g.tenant = None if request.endpoint in auth.UNAUTHENTICATED else auth.authenticate(backends().settings.api_keys)


SONGHASH = re.compile(r"^[0-9a-f]{56}$")
TRACK = re.compile(r"^([a-z][a-z_]{0,31})(?:\.(mp3|wav|flac))?$")
FIELDS = {"mp3", "url", "model", "two_stems", "format", "bitrate", "callback", "name"}
LISTED = (
    "hash",
    "name",
    "model",
    "state",
    "stage",
    "progress",
    "created",
    "finished",
    "duration_s",
    "tracks",
    "options",
    "error",
)
PAGE_MAX = 100  # songs in one page of GET /apiv1/songs


def _choices(b, fields: dict) -> Choices:
    try:
        return parse_choices(fields, b.settings.demucs_model, b.directory)
    except BadChoice as exc:
        raise ApiError(exc.status, str(exc)) from None


@contextlib.contextmanager
def _slot(b, what: str):
    """One of the MAX_UPLOADS slots (an upload, or a mix: each takes /tmp and CPU), or 503 when none is free."""
    if not b.uploads.acquire(blocking=False):
        raise ApiError(503, f"this server is taking as many {what} as it can; try again shortly", {"Retry-After": "5"})
    try:
        yield
    finally:
        b.uploads.release()


@bp.post("/separate")
def separate():
    b = backends()
    with _slot(b, "uploads"), tempfile.TemporaryDirectory(prefix="msaas-upload-") as tmp:
        return _enqueue(b, _receive(b, Path(tmp) / "song"))


def _receive(b, path: Path) -> uploads.Upload:
    """The song to a file as it arrives (bounded memory whatever its size), or fetched from its link; the other fields
    parsed."""
    limit = b.settings.max_upload_bytes
    try:
        if request.mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):  # the latter: a link
            upload = uploads.from_multipart(request.files, request.form, path, limit, FIELDS)
        else:
            upload = uploads.from_json(request.stream, path, limit)
            upload.fields = {k: v for k, v in upload.fields.items() if k in FIELDS}
    except uploads.UploadTooLarge as exc:
        raise ApiError(413, str(exc)) from None
    except uploads.BadUpload as exc:
        raise ApiError(400, str(exc)) from None
    return upload


def _fetch_link(b, upload: uploads.Upload) -> None:
    """A link sent instead of the song: fetched into the upload's file, within the upload's limit."""
    try:
        fetched = links.fetch(upload.fields["url"], upload.path, b.settings.max_upload_bytes, b.settings.callback_allow_private)
    except links.LinkError as exc:
        raise ApiError(exc.status, str(exc)) from None
    upload.size, upload.filename = fetched.size, fetched.filename


def _enqueue(b, upload: uploads.Upload):
    choices = _choices(b, upload.fields)  # first: a wrong choice costs no download of a link
    if "url" in upload.fields and not upload.size:
        _fetch_link(b, upload)
    if not upload.size:
        raise ApiError(400, "the song is empty")
    try:
        name = song_name(upload.fields.get("name"), upload.filename)
    except BadChoice as exc:
        raise ApiError(exc.status, str(exc)) from None
    model, options, callback = choices.model, choices.options, choices.callback
    songhash = songhash_of_file(model, options, upload.path, g.tenant)
    existing = b.jobs.status(songhash)
    if existing and existing["state"] != JobState.FAILED:
        return jsonify({"hash": songhash, "reason": f"Song already {existing['state']}; not separated again"})
    if g.tenant and len(b.jobs.queued(g.tenant)) >= b.settings.max_queued_songs:
        raise ApiError(
            429,
            f"this key already has {b.settings.max_queued_songs} songs waiting (MAX_QUEUED_SONGS); "
            "send more once some have started",
            {"Retry-After": "30"},
        )
    info = _probe(b, upload.path, choices)
    b.ensure_store()
    ext, content_type = info.file_type
    stored = storage.upload_name(songhash, ext)
    b.store.put_file(storage.QUEUE_BUCKET, stored, upload.path, content_type)
    try:
        about = {"duration_s": round(info.duration_s, 3), **({"name": name} if name else {})}
        state = b.jobs.submit(Job(songhash, model, callback, options, tenant=g.tenant, upload=ext), about)
    except Exception:
        b.store.remove(storage.QUEUE_BUCKET, stored)  # nothing half-done is left behind
        raise
    if state:
        return jsonify({"hash": songhash, "reason": f"Song already {state}; not separated again"})
    size = _size(upload.size)
    log.info("queued %s (%s, %.1f s of %s audio, model %s)", songhash, size, info.duration_s, info.codec, model)
    return jsonify({"hash": songhash, "reason": "Song enqueued for separation"})


def _probe(b, path: Path, choices: Choices) -> audio.AudioInfo:
    """Decode the song once: refuse what is not audio, too long, at a rate too high, or whose stems would be too large."""
    settings = b.settings
    try:
        info = audio.probe(path, settings.max_duration_s)
    except audio.Truncated as exc:
        raise ApiError(422, f"{exc}; upload the whole file") from None
    except audio.NotAudio as exc:
        raise ApiError(415, f"not a song MSaaS can read: {exc}") from None
    except audio.TooLong as exc:
        raise ApiError(413, str(exc)) from None
    if info.sample_rate > settings.max_sample_rate:
        raise ApiError(
            422, f"the song is at {info.sample_rate} Hz; MSaaS takes songs at up to {settings.max_sample_rate} Hz: resample it"
        )
    options = choices.options
    fmt = options.get("format", "mp3")
    if fmt == "mp3" and info.sample_rate not in audio.MP3_RATES:
        raise ApiError(
            422,
            f"the song is at {info.sample_rate} Hz and its stems would be too, but an MP3 is at 8 to 48 kHz "
            f"({', '.join(map(str, audio.MP3_RATES))} Hz): ask for format wav or flac",
        )
    stems = _stems_bytes(info, fmt, int(options.get("bitrate", audio.DEFAULT_BITRATE)), _track_count(choices))
    if stems > settings.max_stems_bytes:
        raise ApiError(
            413,
            f"the stems of this song would take about {stems / 1e6:.0f} MB, more than the "
            f"{settings.max_stems_bytes / 1e6:.0f} MB allowed: ask for mp3 stems, or send a shorter song",
        )
    return info


def _track_count(choices: Choices) -> int:
    return 2 if choices.options.get("two_stems") else len(choices.tracks or ()) or 4


def _stems_bytes(info: audio.AudioInfo, fmt: str, bitrate_kbps: int, tracks: int) -> float:
    """An upper bound of the stems' size: MP3 at its bitrate, WAV and FLAC as 16-bit stereo PCM (FLAC compresses that)."""
    per_second = bitrate_kbps * 1000 / 8 if fmt == "mp3" else info.sample_rate * 2 * 2
    return tracks * info.duration_s * per_second


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


@bp.get("/queue")
def queue():
    """The caller's songs waiting (with API keys, each key sees its own)."""
    return jsonify({"queue": backends().jobs.queued(g.tenant)})


def _song(songhash: str) -> dict:
    if not SONGHASH.match(songhash):
        raise ApiError(404, "unknown song: a song's hash is 56 hexadecimal characters")
    record = backends().jobs.status(songhash)
    if record is None or record.pop("tenant", None) != g.tenant:  # another key's song is no song at all to this one
        raise ApiError(404, f"unknown song {songhash}")
    return record


ETA_AFTER = 0.05  # of the progress: before that, the pace says too little to estimate the time left


@bp.get("/status/<songhash>")
def status(songhash: str):
    record = _song(songhash)
    record["urls"] = {t: f"/apiv1/track/{songhash}/{t}" for t in record["tracks"]}
    record["peaks"] = {t: f"/apiv1/peaks/{songhash}/{t}" for t in record["tracks"]}
    if record["state"] == "queued":
        record["queue_position"] = backends().jobs.position(songhash)
    elif record["state"] == "running" and record["progress"] >= ETA_AFTER and "started" in record:
        # the pace so far, carried on: progress is shared by the stages in proportion to their time (worker.STAGES)
        elapsed = max(0.0, time.time() - record["started"])
        record["eta_s"] = round(elapsed * (1 - record["progress"]) / record["progress"], 1)
    return jsonify(record)


def _stem(songhash: str, track: str) -> tuple[dict, str, audio.Format]:
    record = _song(songhash)
    match = TRACK.match(track)
    if not match:
        raise ApiError(404, f"unknown track {track!r}")
    name, ext = match.group(1), match.group(2)
    fmt = audio.OutputOptions.of(record["options"]).file_format
    if name not in record["tracks"] or (ext and ext != fmt.ext):
        have = ", ".join(record["tracks"]) or f"none yet (the job is {record['state']})"
        raise ApiError(404, f"song {songhash} has no track {track!r}; its tracks: {have}")
    return record, name, fmt


@bp.get("/track/<songhash>/<track>")
def track(songhash: str, track: str):
    _, name, fmt = _stem(songhash, track)
    ext = fmt.ext
    try:
        size, chunks = backends().store.stream(storage.OUTPUT_BUCKET, storage.stem_name(songhash, name, ext))
    except storage.ObjectNotFound:
        raise ApiError(404, f"track {name} of {songhash} is no longer stored") from None
    headers = {"Content-Length": str(size), "Content-Disposition": f'attachment; filename="{name}.{ext}"'}
    return Response(chunks, mimetype=fmt.content_type, headers=headers)


@bp.get("/peaks/<songhash>/<track>")
def track_peaks(songhash: str, track: str):
    """A stem's waveform for drawing (`msaas.peaks`), made by the worker as it encoded the stem."""
    _, name, _ = _stem(songhash, track)
    try:
        size, chunks = backends().store.stream(storage.OUTPUT_BUCKET, storage.peaks_name(songhash, name))
    except storage.ObjectNotFound:
        raise ApiError(
            404, f"track {name} of {songhash} has no stored peaks (separated before they were kept, or removed)"
        ) from None
    return Response(chunks, mimetype="application/json", headers={"Content-Length": str(size)})


@bp.get("/mix/<songhash>")
def mix_of_stems(songhash: str):
    """The stems mixed back into one file, a gain per track in the query (`?vocals=0` is karaoke; a track not named
    keeps 1), in the stems' format, exact in length: made in a temporary folder, streamed, then removed."""
    record = _song(songhash)
    if record["state"] != "done" or not record["tracks"]:
        raise ApiError(404, f"song {songhash} has no stems yet (the job is {record['state']})")
    try:
        gains = mixing.parse_gains(request.args.to_dict(), record["tracks"])
    except mixing.BadGains as exc:
        raise ApiError(400, str(exc)) from None
    output = audio.OutputOptions.of(record["options"])
    b = backends()
    ext, store = output.file_format.ext, b.store
    folder = Path(tempfile.mkdtemp(prefix="msaas-mix-"))
    try:
        with _slot(b, "mixes"):
            stems = {}
            for i, track in enumerate(record["tracks"]):
                if gains[track] > 0 or i == 0:  # the first is read for the song's length even when muted
                    stems[track] = folder / f"{track}.{ext}"
                    store.get_file(storage.OUTPUT_BUCKET, storage.stem_name(songhash, track, ext), stems[track])
            out = folder / f"mix.{ext}"
            mixing.mix(stems, gains, out, output.format, output.bitrate)
    except storage.ObjectNotFound:
        shutil.rmtree(folder, ignore_errors=True)
        raise ApiError(404, f"the stems of {songhash} are no longer stored") from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise

    def body():
        try:
            with open(out, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    yield chunk
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    headers = {
        "Content-Length": str(out.stat().st_size),
        "Content-Disposition": f'attachment; filename="{songhash[:12]}-mix.{ext}"',
    }
    return Response(body(), mimetype=output.file_format.content_type, headers=headers)


class _Sink(io.RawIOBase):
    """A write-only stream whose bytes a generator hands on: zipfile writes, the response reads."""

    def __init__(self):
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


@bp.get("/zip/<songhash>")
def zip_of_stems(songhash: str):
    """Every stem of a song in one zip, streamed from the store as it is read (stems are stored, not recompressed)."""
    record = _song(songhash)
    if record["state"] != "done" or not record["tracks"]:
        raise ApiError(404, f"song {songhash} has no stems yet (the job is {record['state']})")
    ext = audio.OutputOptions.of(record["options"]).file_format.ext
    store = backends().store
    opened = [
        (track, store.stream(storage.OUTPUT_BUCKET, storage.stem_name(songhash, track, ext))[1]) for track in record["tracks"]
    ]

    def body():
        sink = _Sink()
        with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as archive:
            for track, chunks in opened:
                with archive.open(f"{track}.{ext}", "w", force_zip64=True) as entry:
                    for chunk in chunks:
                        entry.write(chunk)
                        yield sink.drain()
        yield sink.drain()

    headers = {"Content-Disposition": f'attachment; filename="{songhash[:12]}-stems.zip"'}
    return Response(body(), mimetype="application/zip", headers=headers)


@bp.route("/remove/<songhash>/<track>", methods=["GET", "DELETE"])
@bp.delete("/track/<songhash>/<track>")
def remove(songhash: str, track: str):
    b = backends()
    _, name, fmt = _stem(songhash, track)
    for obj in (storage.stem_name(songhash, name, fmt.ext), storage.peaks_name(songhash, name)):
        try:
            b.store.remove(storage.OUTPUT_BUCKET, obj)
        except storage.ObjectNotFound:
            pass  # already gone from the store: forgetting it is all that is left to do
    b.jobs.forget_track(songhash, name)
    return jsonify({"hash": songhash, "track": name, "removed": True})


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be a whole number from {low} to {high}, not {raw!r}")
    return value


@bp.get("/songs")
def songs():
    """The caller's songs (with API keys, each key's own), newest first: `limit` of them (1-100, default 20) from
    `offset`; `next` is the offset of the page after, or null."""
    limit, offset = _int_arg("limit", 20, 1, PAGE_MAX), _int_arg("offset", 0, 0, 1 << 31)
    total, records = backends().jobs.songs(g.tenant, offset, limit)
    listed = [{k: r[k] for k in LISTED if k in r} for r in records if r.get("tenant") == g.tenant]
    after = offset + limit
    return jsonify({"songs": listed, "total": total, "offset": offset, "next": after if after < total else None})


@bp.delete("/song/<songhash>")
def delete_song(songhash: str):
    """A whole song gone: its stems, their peaks, what is left of its upload, and its record (it is unknown again)."""
    record = _song(songhash)
    busy = f"song {songhash} is {{}}: delete it once its job has ended (done or failed)"
    if record["state"] in (JobState.QUEUED, JobState.RUNNING):
        raise ApiError(409, busy.format(record["state"]))
    b = backends()
    removed = storage.remove_song(b.store, songhash, (storage.OUTPUT_BUCKET,))  # a store error: 503, the record stays
    state = b.jobs.delete(songhash, g.tenant)
    if state:  # sent again meanwhile (a failed song may be): its new job's stems are its own
        raise ApiError(409, busy.format(state))
    try:
        removed += storage.remove_song(b.store, songhash, (storage.QUEUE_BUCKET,))
    except storage.StorageError as exc:  # an upload left over: S3's lifecycle rule (RETENTION_S) removes it
        log.warning("song %s deleted, but not its upload: %s", songhash, exc)
    log.info("song %s deleted: %d object(s) removed", songhash, removed)
    return jsonify({"hash": songhash, "removed": True, "objects": removed})


@bp.get("/openapi.json")
def openapi():
    from .openapi import spec

    return jsonify(spec())


@bp.get("/models")
def list_models():
    b = backends()
    table = models.catalog(b.settings.demucs_repo)  # read once for every model's details
    listed = [
        {
            "name": e.name,
            "tracks": e.tracks,
            "available": e.available,
            "default": e.name == b.settings.demucs_model,
            **models.details(e.name, b.settings.demucs_repo, table),
        }
        for e in b.directory.entries().values()
    ]
    return jsonify({"default": b.settings.demucs_model, "models": listed})
