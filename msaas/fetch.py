"""`msaas fetch-model`: put a model's weights (Demucs, or a RoFormer's checkpoint and config) in a local directory that
`DEMUCS_REPO` can point at."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import yaml

from . import compat, models

log = logging.getLogger("msaas.fetch")


def _from_legacy_repo(name: str, dest: Path, root_url: str | None, remote: Path | None = None) -> None:
    """demucs' own list of files (`remote/files.txt`, its package's by default) downloaded from `root_url` (its host)."""
    from torch.hub import download_url_to_file

    remote = remote or models.demucs_remote_dir()
    urls = compat.demucs_remote_files(remote)
    if root_url:
        urls = {sig: root_url.rstrip("/") + "/" + url[len(compat.demucs_root_url()) :] for sig, url in urls.items()}
    bag = remote / f"{name}.yaml"
    sigs = yaml.safe_load(bag.read_text())["models"] if bag.is_file() else [name]
    for sig in sigs:
        if sig not in urls:
            raise ValueError(f"{name!r} is neither a known model nor a known signature")
        target = dest / urls[sig].rsplit("/", 1)[-1]
        if not target.exists():
            log.info("downloading %s", urls[sig])
            # `<sig>-<sha256 prefix>.th`: a file that does not match is refused, never left where a later fetch would keep it
            checksum = target.stem.split("-", 1)[1] if "-" in target.stem else None
            download_url_to_file(urls[sig], str(target), hash_prefix=checksum, progress=True)
    if bag.is_file():
        shutil.copyfile(bag, dest / bag.name)


def _from_hf_hub(name: str, dest: Path) -> None:
    from demucs.hf import load_safetensors_model
    from demucs.states import save_with_checksum
    from huggingface_hub import hf_hub_download

    repo_id = "adefossez/" + models.hf_repo_name(name)
    bag_file = hf_hub_download(repo_id, f"{name}.yaml")
    bag = yaml.safe_load(Path(bag_file).read_text())
    for sig in bag["models"]:
        model = load_safetensors_model(hf_hub_download(repo_id, f"{sig}.safetensors"))
        args, kwargs = compat.model_init_args(model)
        package = {"klass": model.__class__, "args": args, "kwargs": kwargs, "state": model.state_dict()}
        save_with_checksum(package, dest / f"{sig}.th")
    shutil.copyfile(bag_file, dest / f"{name}.yaml")


CONNECT_TIMEOUT_S = 10  # a host that does not answer (a cluster without egress) fails the download, never hangs it
READ_TIMEOUT_S = 60


def download(url: str, target: Path) -> None:
    """`url` into `target`, which appears only once whole (a partial download is removed, never loaded later)."""
    import requests

    partial = target.with_name(target.name + ".part")
    try:
        with requests.get(url, stream=True, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S)) as response:
            response.raise_for_status()
            with open(partial, "wb") as out:
                for block in response.iter_content(1 << 20):
                    out.write(block)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def roformer_files(name: str, dest: Path, sources: dict[str, str]) -> None:
    """A RoFormer's config and checkpoint as `<name>.yaml` and `<name>.ckpt` in `dest` (what is there already is kept)."""
    dest.mkdir(parents=True, exist_ok=True)
    for key, suffix in (("config", ".yaml"), ("checkpoint", ".ckpt")):
        target = dest / f"{name}{suffix}"
        if not target.exists():
            log.info("downloading %s", sources[key])
            download(sources[key], target)


def _roformer(name: str, dest: Path, sources: dict[str, str]) -> None:
    """The files, then loaded from there to prove they belong together."""
    from .separation import load_separator

    roformer_files(name, dest, sources)
    load_separator(name, dest, "cpu")


def _onnx_networks(name: str, dest: Path) -> None:
    """A Demucs model's networks exported for ONNX Runtime beside its weights, where ONNX Runtime can run them (its
    HTDemucs, with onnxruntime installed): a worker then loads them instead of exporting them at start-up."""
    from .separation import ModelUnavailable
    from .separation.demucs import export_onnx
    from .separation.onnxrt import OnnxUnavailable

    try:
        for path in export_onnx(name, dest):
            log.info("exported for ONNX Runtime: %s", path)
    except ModelUnavailable:  # the model itself does not load from `dest`: the fetch failed
        raise
    except (OnnxUnavailable, ImportError) as exc:  # another architecture, or no onnx/onnxruntime: torch runs it
        log.info("model %s is not exported for ONNX Runtime: %s", name, exc)
    except Exception as exc:  # an export that failed: workers export it themselves, or run torch
        log.warning("model %s could not be exported for ONNX Runtime: %s", name, exc)


def fetch_model(
    name: str,
    dest: Path,
    root_url: str | None = None,
    remote: Path | None = None,
    sources: dict[str, str] | None = None,
    onnx: bool = True,
) -> None:
    """Download `name` into `dest` in the format its engine loads from a model directory, then load it from there to
    prove it works. `sources`: a RoFormer's {"checkpoint": url, "config": url} instead of the model table's. `onnx`: a
    Demucs model's networks exported for ONNX Runtime too (`dest/onnx/`; a CPU worker's DEMUCS_ENGINE auto or onnx)."""
    dest.mkdir(parents=True, exist_ok=True)
    if sources or name in models.ROFORMERS:
        _roformer(name, dest, sources or models.ROFORMERS[name])
        log.info("model %s is ready in %s: set DEMUCS_REPO=%s", name, dest, dest)
        return
    try:
        _from_legacy_repo(name, dest, root_url, remote)
    except Exception as exc:  # the legacy host may be gone; the Hugging Face hub is the other source
        log.warning("legacy model repository failed (%s); trying the Hugging Face hub", exc)
        _from_hf_hub(name, dest)
    if onnx:
        _onnx_networks(name, dest)  # loads the model from `dest`: the proof that it works
    else:
        from demucs.pretrained import get_model

        get_model(name, dest)
    log.info("model %s is ready in %s: set DEMUCS_REPO=%s", name, dest, dest)
