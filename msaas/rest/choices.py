"""An upload's choices (model, two_stems, format, bitrate, callback) checked against what the service has: no Flask here,
so the parser is tested on its own; api.py turns a BadChoice into the JSON error."""

from __future__ import annotations

from dataclasses import dataclass

from .. import audio, callbacks, models
from ..jobs import ModelDirectory


class BadChoice(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Choices:
    model: str
    options: dict  # the output options that differ from the defaults, as the job's message carries them
    callback: dict | None
    tracks: list[str] | None  # the model's tracks, where known


NAME_MAX = 120  # characters of a song's name kept for display


def song_name(value, filename: str | None = None) -> str | None:
    """The name a song is listed under: the `name` field, else the uploaded file's name; its last path part, printable
    characters only, at most NAME_MAX of them. None when there is none."""
    if value in (None, ""):
        value = filename or ""
    if not isinstance(value, str) or len(value) > 4 * NAME_MAX:
        raise BadChoice(400, f"name must be a string of at most {NAME_MAX} characters")
    value = value.replace("\\", "/").rsplit("/", 1)[-1]
    value = " ".join("".join(c if c.isprintable() else " " for c in value).split())
    return value[:NAME_MAX] or None


def ensemble_name(model: list | str) -> str:
    """`model` as a list (JSON) or `a+b` (a form field): 2 to ENSEMBLE_MAX different models, none an ensemble itself."""
    names = model if isinstance(model, list) else model.split(models.ENSEMBLE_JOIN)
    if (
        not 2 <= len(names) <= models.ENSEMBLE_MAX
        or len(set(map(str, names))) != len(names)
        or not all(isinstance(n, str) and n and models.ENSEMBLE_JOIN not in n and n not in models.PRESETS for n in names)
    ):
        raise BadChoice(400, f"an ensemble is 2 to {models.ENSEMBLE_MAX} different model names (not ensembles themselves)")
    return models.ENSEMBLE_JOIN.join(names)


def parse_choices(fields: dict, default_model: str, directory: ModelDirectory) -> Choices:
    model = fields.get("model") or default_model
    if isinstance(model, list) or isinstance(model, str) and models.ENSEMBLE_JOIN in model:
        model = ensemble_name(model)
    try:
        entry = directory.entry(model) if isinstance(model, str) else None
    except ValueError as exc:  # an ensemble whose models do not share tracks
        raise BadChoice(422, f"ensemble {model!r}: {exc}") from None
    if entry is None:
        raise BadChoice(422, f"unknown model {model!r}; GET /apiv1/models lists the models")
    if entry.published and not entry.available:  # the workers' word; a model none has spoken of may be downloaded
        raise BadChoice(
            422,
            f"the weights of model {model!r} are not available on the workers; "
            "put them in DEMUCS_REPO with `msaas fetch-model` or choose another model",
        )
    tracks = entry.tracks
    options: dict = {}
    two_stems = fields.get("two_stems")
    if two_stems not in (None, ""):
        if not isinstance(two_stems, str) or (tracks and two_stems not in tracks):
            raise BadChoice(400, f"two_stems must be one of the model's tracks: {', '.join(tracks or [])}")
        options["two_stems"] = two_stems
    fmt = fields.get("format") or "mp3"
    if fmt not in audio.FORMATS:
        raise BadChoice(400, f"format must be one of {', '.join(audio.FORMATS)}")
    if fmt != "mp3":
        options["format"] = fmt
    bitrate = fields.get("bitrate")
    if bitrate not in (None, ""):
        try:
            bitrate = int(bitrate)
        except (TypeError, ValueError):
            bitrate = -1
        if bitrate not in audio.BITRATES or fmt != "mp3":
            raise BadChoice(400, f"bitrate is for mp3 output and must be one of {', '.join(map(str, audio.BITRATES))} kbps")
        if bitrate != audio.DEFAULT_BITRATE:
            options["bitrate"] = bitrate
    try:
        callback = callbacks.validate(fields.get("callback"))
    except callbacks.BadCallback as exc:
        raise BadChoice(400, str(exc)) from None
    return Choices(model, options, callback, tracks)
