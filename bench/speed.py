#!/usr/bin/env python3
"""MSaaS against the `demucs` command line: time and peak RSS on the same model and inputs, in one run on one machine.

- anchor: `python -m demucs.separate --repo REPO -n htdemucs --mp3` (a fresh process per song, as users run it)
- MSaaS: rest + a warm worker (real processes, the bundled redis-server, local store); upload -> every stem stored
- model only: the forward passes alone, the lower bound for both (in this process, before and after MSaaS's run)
- on the device the worker picks (DEMUCS_DEVICE, default auto: CUDA when present), as the CLI does (its -d defaults to CUDA)
- in job: the worker's own account of the same job (its forward passes, the rest of its time: the song's first read, the
  encoders' drain after the last forward pass; and the CPU its encoders took beside the forward passes); overhead is
  everything but the forward passes, as a share of MSaaS's time
The model is htdemucs' full-size architecture with random weights (compute does not depend on the weights).
Usage: python bench/speed.py [--no-cli] [SECONDS ...]   (default 30 120 600; --no-cli: MSaaS and the model alone)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from stack import Stack  # noqa: E402
from worker_memory import full_size_htdemucs, song  # noqa: E402

from msaas import audio  # noqa: E402

PEAK_OF_CHILD = "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"


def cli(repo: Path, path: Path, out: Path) -> tuple[float, float]:
    command = [sys.executable, "-m", "demucs.separate", "--repo", str(repo), "-n", "htdemucs", "--mp3", "-o", str(out), str(path)]
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-c", PEAK_OF_CHILD, *command], capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if run.returncode:
        raise RuntimeError(run.stderr[-2000:])
    return elapsed, int(run.stdout.split()[-1]) / 1024


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


DEVICE = os.environ.get("DEMUCS_DEVICE", "auto")  # the worker's setting, which the Stack passes on


def device() -> str:
    import torch

    from msaas.separation import cpu_budget, pick_device, torch_threads

    picked = pick_device(DEVICE)
    name = torch.cuda.get_device_name(picked) if picked.type == "cuda" else "cpu"
    threads = torch_threads(int(os.environ.get("TORCH_THREADS", 0)), DEVICE)
    return f"{name}; {cpu_budget()} CPUs, the worker's torch takes {threads} threads"


def model_only(repo: Path, path: Path) -> float:
    """Seconds spent in the model's forward passes alone when separating `path` (nothing else running)."""
    import torch

    from msaas.separation import cpu_budget, load_separator, separate_all

    torch.set_num_threads(cpu_budget())
    separator = load_separator("htdemucs", repo, DEVICE)
    separator.warm_up()  # as a warm worker is
    wave, _ = audio.decode(path)
    separate_all(separator, torch.from_numpy(wave))
    return separator.forward_s


ACCOUNT = re.compile(
    r"in ([\d.]+) s: download ([\d.]+) s, read ([\d.]+) s, separation ([\d.]+) s \(forward passes ([\d.]+) s\), "
    r"encoders' drain ([\d.]+) s, upload ([\d.]+) s; encoding ([\d.]+) s of CPU"
)
FIELDS = ("job", "download", "read", "separation", "forward", "drain", "upload", "encoding")


def in_job(stack: Stack, songhash: str) -> tuple[dict[str, float], str]:
    """The worker's own account of a job (seconds: the job, its download, first read of the song, separation, of which
    forward passes, the encoders' drain, upload; CPU seconds of encoding beside them) and its log line."""
    for line in stack.log_lines(songhash):
        if m := ACCOUNT.search(line):
            return dict(zip(FIELDS, map(float, m.groups()), strict=True)), line
    return dict.fromkeys(FIELDS, float("nan")), ""


def main(lengths: list[int], with_cli: bool = True) -> None:
    repo = full_size_htdemucs()
    print(f"device: {device()}", flush=True)
    rows = []
    with Stack(repo) as stack, tempfile.TemporaryDirectory(prefix="msaas-bench-cli-") as work:
        worker = stack.workers[0]
        for seconds in lengths:
            path = song(seconds)
            before = model_only(repo, path)  # before and after: this machine's speed drifts, the pair shows by how much
            Path(f"/proc/{worker.pid}/clear_refs").write_text("5")  # reset the worker's peak RSS
            msaas_s, songhash = stack.separate(path)
            msaas_mb = vm_hwm_mb(worker.pid)
            after = model_only(repo, path)
            job, line = in_job(stack, songhash)
            print(
                f"{seconds} s song: MSaaS {msaas_s:.1f} s ({seconds / msaas_s:.1f}x real time), peak RSS {msaas_mb:.0f} MB; "
                f"model only {before:.1f} s before, {after:.1f} s after\n  the worker: {line}",
                flush=True,
            )
            if not with_cli:
                continue
            cli_s, cli_mb = cli(repo, path, Path(work) / f"cli-{seconds}")
            rows.append((seconds, cli_s, msaas_s, cli_mb, msaas_mb, before, after, job))
            print_rows(rows)


def print_rows(rows) -> None:
    print(
        "| song | demucs CLI | MSaaS | time ratio | real time | CLI peak RSS | MSaaS peak RSS | RSS ratio "
        "| model only (before / after) | share | in job: forward passes | share | overhead | read | drain | encoding CPU |"
    )
    print("|---" * 16 + "|")
    for seconds, cli_s, msaas_s, cli_mb, msaas_mb, before, after, job in rows:
        model = (before + after) / 2
        share = job["forward"] / msaas_s
        print(
            f"| {seconds} s | {cli_s:.1f} s | {msaas_s:.1f} s | {msaas_s / cli_s:.2f} | {seconds / msaas_s:.1f}x "
            f"| {cli_mb:,.0f} MB | {msaas_mb:,.0f} MB | {msaas_mb / cli_mb:.2f} "
            f"| {before:.1f} / {after:.1f} s | {model / msaas_s:.0%} | {job['forward']:.1f} s | {share:.1%} | {1 - share:.1%} "
            f"| {job['read']:.1f} s | {job['drain']:.1f} s | {job['encoding']:.1f} s |",
            flush=True,
        )


if __name__ == "__main__":
    args = sys.argv[1:]
    main([int(a) for a in args if a != "--no-cli"] or [30, 120, 600], with_cli="--no-cli" not in args)
