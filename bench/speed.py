#!/usr/bin/env python3
"""MSaaS against two anchors on the same model and songs, in one run, in an order that cancels the machine's drift.

- cli: `python -m demucs.separate --repo REPO -n htdemucs --mp3` (a fresh process per song, as users run it; LAME preset 2
  through lameenc, 320 kbps); peak RSS of its process tree's largest process
- library: demucs as a library in a warm process (`bench/library_anchor.py`: model loaded once, `demucs.api.Separator`,
  i.e. `apply_model`, stems written with demucs' `save_audio`, LAME preset 2 through lameenc, 320 kbps); what a service
  built on demucs without MSaaS would do; peak RSS of that process, reset before each song
- msaas: rest + a warm worker (real processes, the bundled redis-server, local store), upload -> every stem stored (LAME
  called directly, -q 5, 320 kbps); peak RSS of the worker, reset before each song
Each song runs ROUNDS times per side in the order cli, library, msaas, msaas, library, cli (A B C C B A), so a slow spell
of the shared machine lands on every side; the table gives medians and ranges. Every process's torch threads are printed.
in job: the worker's own account of its last job (forward passes; overhead, everything else, as a share of its time).
The model is htdemucs' full-size architecture with random weights (compute does not depend on the weights), on the CPU
(or the device DEMUCS_DEVICE picks for the worker).
Usage: python bench/speed.py [--no-cli] [--rounds N] [SECONDS ...]   (default: 2 rounds of 30 120 600)
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from stack import Stack  # noqa: E402
from worker_memory import full_size_htdemucs, song  # noqa: E402

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


ACCOUNT = re.compile(
    r"in ([\d.]+) s: download ([\d.]+) s, read ([\d.]+) s, separation ([\d.]+) s \(forward passes ([\d.]+) s\), "
    r"encoders' drain ([\d.]+) s, upload ([\d.]+) s; encoding ([\d.]+) s of CPU"
)
FIELDS = ("job", "download", "read", "separation", "forward", "drain", "upload", "encoding")


def in_job(stack: Stack, songhash: str) -> tuple[dict[str, float], str]:
    """The worker's own account of a job (seconds: the job, its download, first read of the song, separation, of which
    forward passes, the encoders' drain, upload; CPU seconds of encoding beside them) and its log line."""
    for line in reversed(stack.log_lines(songhash)):  # the newest: a song may have run before
        if m := ACCOUNT.search(line):
            return dict(zip(FIELDS, map(float, m.groups()), strict=True)), line
    return dict.fromkeys(FIELDS, float("nan")), ""


class Library:
    """bench/library_anchor.py as a warm process, fed one song at a time."""

    def __init__(self, repo: Path):
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "library_anchor.py"), str(repo)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.threads = int(self.proc.stdout.readline().split()[1])

    def separate(self, path: Path, out: Path) -> tuple[float, float]:
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        self.proc.stdin.write(f"{path} {out}\n")
        self.proc.stdin.flush()
        seconds = float(self.proc.stdout.readline())
        return seconds, vm_hwm_mb(self.proc.pid)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(60)


def cli_threads() -> int:
    """The torch threads a fresh `demucs` process gets (torch's default: the machine's cores)."""
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], capture_output=True, text=True)
    return int(out.stdout)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.1f} ({min(values):,.1f}-{max(values):,.1f})"


def main(lengths: list[int], rounds: int = 2, with_cli: bool = True) -> None:
    repo = full_size_htdemucs()
    print(f"device: {device()}", flush=True)
    sides = ["cli", "library", "msaas"] if with_cli else ["library", "msaas"]
    order = sides + sides[::-1]
    rows = []
    library = Library(repo)
    with Stack(repo) as stack, tempfile.TemporaryDirectory(prefix="msaas-bench-") as work:
        worker = stack.workers[0]
        threads = {"cli": cli_threads(), "library": library.threads, "msaas": stack.torch_threads()}
        print("torch threads: " + ", ".join(f"{side} {threads[side]}" for side in sides), flush=True)
        for seconds in lengths:
            path = song(seconds)
            times: dict[str, list[float]] = {side: [] for side in sides}
            peaks: dict[str, list[float]] = {side: [] for side in sides}
            job: dict[str, float] = {}
            for n in range(rounds):
                for k, side in enumerate(order):
                    out = Path(work) / f"{side}-{seconds}-{n}-{k}"
                    if side == "cli":
                        elapsed, peak = cli(repo, path, out)
                    elif side == "library":
                        elapsed, peak = library.separate(path, out)
                    else:
                        Path(f"/proc/{worker.pid}/clear_refs").write_text("5")  # reset the worker's peak RSS
                        elapsed, songhash = stack.separate(path)
                        peak = vm_hwm_mb(worker.pid)
                        job, line = in_job(stack, songhash)
                        stack.forget(songhash)  # the same song again is a new job, not "already done"
                    times[side].append(elapsed)
                    peaks[side].append(peak)
                    print(f"{seconds} s song, round {n + 1}, {side}: {elapsed:.1f} s, peak RSS {peak:,.0f} MB", flush=True)
            print(f"  the worker's last job: {line}", flush=True)
            rows.append((seconds, times, peaks, job))
            print_rows(rows, sides)
    library.close()


def print_rows(rows, sides) -> None:
    anchors = [s for s in sides if s != "msaas"]
    head = " | ".join(f"{side} time (s)" for side in sides) + " | " + " | ".join(f"MSaaS / {a}" for a in anchors)
    head += " | " + " | ".join(f"{side} peak RSS (MB)" for side in sides) + " | " + " | ".join(f"RSS / {a}" for a in anchors)
    print(f"| song | {head} | in job: forward passes | overhead |")
    print("|---" * (1 + 2 * len(sides) + 2 * len(anchors) + 2) + "|")
    for seconds, times, peaks, job in rows:
        median = {side: statistics.median(times[side]) for side in sides}
        rss = {side: statistics.median(peaks[side]) for side in sides}
        share = job["forward"] / job["job"] if job else float("nan")
        cells = [spread(times[side]) for side in sides] + [f"**{median['msaas'] / median[a]:.2f}**" for a in anchors]
        cells += [spread(peaks[side]) for side in sides] + [f"{rss['msaas'] / rss[a]:.2f}" for a in anchors]
        print(f"| {seconds} s | " + " | ".join(cells) + f" | {share:.1%} | **{1 - share:.1%}** |", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    rounds = int(args[args.index("--rounds") + 1]) if "--rounds" in args else 2
    if "--rounds" in args:
        del args[args.index("--rounds") : args.index("--rounds") + 2]
    main([int(a) for a in args if a != "--no-cli"] or [30, 120, 600], rounds, with_cli="--no-cli" not in args)
