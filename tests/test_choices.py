"""An upload's choices parsed without Flask (rest/choices.py), against a real Redis's model directory."""

import subprocess
import sys

import pytest

from conftest import ROOT
from msaas.jobs import ModelDirectory
from msaas.rest.choices import BadChoice, Choices, parse_choices, song_name


@pytest.fixture
def directory(redis_client, tiny_repo):
    return ModelDirectory(redis_client, repo=tiny_repo)


def test_defaults_leave_the_options_empty(directory):
    assert parse_choices({}, "tiny", directory) == Choices("tiny", {}, None, None)
    chosen = parse_choices({"format": "mp3", "bitrate": "320", "two_stems": ""}, "tiny", directory)
    assert chosen.options == {}  # the defaults spelled out are the same job as the defaults left out


def test_choices_that_differ_from_the_defaults_travel(directory):
    directory.publish("w1", {"tiny": {"tracks": ["drums", "bass", "other", "vocals"], "available": True}})
    chosen = parse_choices(
        {"two_stems": "vocals", "bitrate": 192, "callback": {"url": "https://example.com/done", "data": 1}}, "tiny", directory
    )
    assert chosen.options == {"two_stems": "vocals", "bitrate": 192} and chosen.tracks[-1] == "vocals"
    assert chosen.callback == {"url": "https://example.com/done", "data": 1}
    assert parse_choices({"format": "flac"}, "tiny", directory).options == {"format": "flac"}


@pytest.mark.parametrize(
    "fields,status,words",
    [
        ({"model": "nope"}, 422, "unknown model"),
        ({"model": ["tiny"]}, 400, "an ensemble is 2 to 4"),  # a list is an ensemble
        ({"model": {"a": 1}}, 422, "unknown model"),
        ({"format": "ogg"}, 400, "format must be one of"),
        ({"bitrate": "999"}, 400, "bitrate"),
        ({"bitrate": "192", "format": "wav"}, 400, "bitrate is for mp3"),
        ({"two_stems": "kazoo"}, 400, "two_stems"),
        ({"callback": {"data": 1}}, 400, "url"),
    ],
)
def test_bad_choices_say_what_is_wrong(directory, fields, status, words):
    directory.publish("w1", {"tiny": {"tracks": ["drums", "bass", "other", "vocals"], "available": True}})
    with pytest.raises(BadChoice) as refused:
        parse_choices(fields, "tiny", directory)
    assert refused.value.status == status and words in str(refused.value)


def test_a_model_the_workers_cannot_load_is_refused(directory):
    directory.publish("w1", {"tiny": {"tracks": None, "available": False}})
    with pytest.raises(BadChoice, match="fetch-model"):
        parse_choices({}, "tiny", directory)


def test_the_parser_loads_no_flask():
    code = "import sys, msaas.rest.choices; print('flask' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize(
    "value, filename, expected",
    [
        (None, "my song.mp3", "my song.mp3"),
        ("", "/home/me/a.mp3", "a.mp3"),
        ("Live\r\n at\x00 home ", None, "Live at home"),
        ("..\\..\\etc\\passwd", None, "passwd"),
        ("x" * 300, None, "x" * 120),
        (None, None, None),
        ("\x01\x02", None, None),
    ],
)
def test_a_song_name_is_kept_printable_short_and_without_its_folders(value, filename, expected):
    assert song_name(value, filename) == expected


@pytest.mark.parametrize("value", [42, ["a"], {"a": 1}, "y" * 481])
def test_a_song_name_that_is_no_short_string_is_a_400(value):
    with pytest.raises(BadChoice) as bad:
        song_name(value)
    assert bad.value.status == 400
