"""A job as it travels through the queue (Job, its JSON message), its states (JobState, shared with the Lua scripts),
and its songhash (the same song with the same choices is the same job)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from enum import StrEnum
from string import Template
from typing import Any


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


# The states as the Lua scripts below spell them ($failed and so on): one source for Python and Lua.
LUA_STATES = {state.name.lower(): f"'{state.value}'" for state in JobState}


def lua(script: str) -> str:
    return Template(script).substitute(LUA_STATES)


class BadMessage(ValueError):
    """A queue message MSaaS cannot read: it is dead-lettered, never run."""


@dataclass(frozen=True)
class Job:
    """One job message as it travels through the queue; `raw` is the exact list element.

    A long song split across workers travels as one message per part (`part`: its index), then one `stitch`."""

    songhash: str
    model: str
    callback: dict | None = None
    options: dict = field(default_factory=dict)
    raw: str = ""
    part: int | None = None
    stitch: bool = False
    tenant: str | None = None  # the API key's id when keys are on: whose song it is
    upload: str = "mp3"  # the uploaded file's extension in the queue bucket (its format: mp3, wav, flac, ogg, m4a)

    @property
    def whole(self) -> bool:
        return self.part is None and not self.stitch

    @property
    def attempts_field(self) -> str:
        """Each part and the stitch count their own attempts."""
        return "attempts" if self.whole else f"attempts.{'stitch' if self.stitch else f'part{self.part}'}"

    def to_message(self) -> str:
        body: dict[str, Any] = {"songhash": self.songhash, "model": self.model, "callback": self.callback}
        if self.options:  # under their own key: an option can never be taken for one of the message's own fields
            body["options"] = self.options
        if self.part is not None:
            body["part"] = self.part
        if self.stitch:
            body["stitch"] = True
        if self.tenant:
            body["tenant"] = self.tenant
        if self.upload != "mp3":  # an MP3 upload's message stays the course's three fields
            body["upload"] = self.upload
        return json.dumps(body, sort_keys=True)

    def task(self, **which) -> Job:
        """The message for one part (`part=k`) or the stitch (`stitch=True`) of this job."""
        return replace(self, **{"raw": "", "part": None, "stitch": False, **which})

    @classmethod
    def from_message(cls, raw: str) -> Job:
        try:
            body = json.loads(raw)
        except ValueError:
            raise BadMessage("not JSON") from None
        if not isinstance(body, dict):
            raise BadMessage("not a JSON object")
        songhash, model, callback = body.pop("songhash", None), body.pop("model", None), body.pop("callback", None)
        part, stitch, tenant = body.pop("part", None), body.pop("stitch", False), body.pop("tenant", None)
        upload = body.pop("upload", "mp3")
        # Older workers' messages (before 2026-12) carried the output options at the top level: still read the same.
        options = body.pop("options") if "options" in body else body
        if not isinstance(options, dict):
            raise BadMessage("options that are not an object")
        if not isinstance(songhash, str) or not _SONGHASH.match(songhash):
            raise BadMessage("no songhash")
        if not isinstance(model, str) or not model:
            raise BadMessage("no model")
        if callback is not None and not (isinstance(callback, dict) and isinstance(callback.get("url"), str)):
            raise BadMessage("a callback without a url")
        if part is not None and (type(part) is not int or part < 0):
            raise BadMessage("a part that is not a number")
        if tenant is not None and not isinstance(tenant, str):
            raise BadMessage("a tenant that is not a string")
        if not isinstance(upload, str) or not _EXT.match(upload):
            raise BadMessage("an upload extension that is not one")
        return cls(songhash, model, callback, options, raw, part, bool(stitch), tenant, upload)


_SONGHASH = re.compile(r"^[0-9A-Za-z_-]{1,128}$")
_EXT = re.compile(r"^[a-z0-9]{1,5}$")


def songhash(model: str, options: dict, data: bytes, tenant: str | None = None) -> str:
    """SHA-224 of the model name, the other choices and the song's bytes: the same request is the same job. With API
    keys on, the key's tenant id is hashed too: the same song sent with two keys is two songs, one per tenant."""
    digest = _choices_digest(model, options, tenant)
    digest.update(data)
    return digest.hexdigest()


def songhash_of_file(model: str, options: dict, path, tenant: str | None = None, block: int = 1 << 20) -> str:
    """`songhash` of a song on disk, read block by block."""
    digest = _choices_digest(model, options, tenant)
    with open(path, "rb") as song:
        while chunk := song.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _choices_digest(model: str, options: dict, tenant: str | None):
    digest = hashlib.sha224(model.encode())
    for name in sorted(options):
        digest.update(f"\0{name}={options[name]}".encode())
    if tenant:
        digest.update(f"\0\0tenant={tenant}".encode())
    digest.update(b"\0")
    return digest
