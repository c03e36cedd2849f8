"""The model directory: which models the service has, and for each its tracks and whether its weights can be loaded.
The one place that merges the install's model table (models.catalog: the built-in names and DEMUCS_REPO's) with what
the live workers say they can load (each publishes its view with its heartbeat; the view expires with the worker)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import redis

from .. import keys, models


@dataclass(frozen=True)
class ModelEntry:
    name: str
    tracks: list[str] | None
    available: bool  # its weights load on some live worker (or, when no worker has said, here)
    published: bool  # some live worker has said whether it can load it


class ModelDirectory:
    def __init__(self, client: redis.Redis, repo: Path | None = None, torch_home: Path | None = None, heartbeat_ttl_s: int = 30):
        self.r = client
        self.repo, self.torch_home = repo, torch_home
        self.ttl_s = max(4 * heartbeat_ttl_s, 60)

    # --- a worker's side
    def view(self, loaded: dict[str, list[str]]) -> dict[str, dict]:
        """What this process can load: every model of the table, with the tracks of those `loaded` (name -> tracks)."""
        return {
            name: {
                "tracks": loaded.get(name) or info["tracks"],
                "available": name in loaded or models.available(name, self.repo, self.torch_home),
            }
            for name, info in models.catalog(self.repo).items()
        }

    def publish(self, worker: str, view: dict[str, dict]) -> None:
        """One worker's view; it expires with the worker unless refreshed (with each heartbeat)."""
        self.r.set(keys.models_key(worker), json.dumps(view), ex=self.ttl_s)

    # --- everyone's
    def published(self) -> dict[str, dict]:
        """Every live worker's view merged: a model is available when any worker can load it."""
        merged: dict[str, dict] = {}
        for key in self.r.scan_iter(match=keys.models_key("*"), count=100):
            raw = self.r.get(key)
            for name, info in (json.loads(raw) if raw else {}).items():
                seen = merged.setdefault(name, {"tracks": None, "available": False})
                seen["tracks"] = info.get("tracks") or seen["tracks"]
                seen["available"] = seen["available"] or bool(info.get("available"))
        return merged

    def entries(self) -> dict[str, ModelEntry]:
        """Every model the table or a worker knows: the workers' word where one has spoken, else this process's own."""
        table, published = models.catalog(self.repo), self.published()
        return {name: self._entry(name, table, published) for name in {**table, **published}}

    def entry(self, name: str) -> ModelEntry | None:
        """One model's entry; an ensemble's (`a+b`) from its models' (a ValueError when they do not share tracks)."""
        table, published = models.catalog(self.repo), self.published()
        if name in table or name in published:
            return self._entry(name, table, published)
        members = models.ensemble_members(name)
        parts = [self._entry(m, table, published) for m in members or [] if m in table or m in published]
        if not members or len(parts) != len(members):
            return None
        known = [p.tracks for p in parts if p.tracks]
        tracks = models.ensemble_tracks(known) if len(known) == len(parts) else None
        return ModelEntry(name, tracks, all(p.available for p in parts), all(p.published for p in parts))

    def _entry(self, name: str, table: dict[str, dict], published: dict[str, dict]) -> ModelEntry:
        seen = published.get(name)
        tracks = (seen or {}).get("tracks") or table.get(name, {}).get("tracks")
        if seen is not None:
            return ModelEntry(name, tracks, bool(seen["available"]), True)
        return ModelEntry(name, tracks, models.available(name, self.repo, self.torch_home), False)
