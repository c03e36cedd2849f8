"""CPUs, devices and threads: what a worker may use, and how its model and the stems' encoders share it."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch


def cpu_budget() -> int:
    """CPUs this process may really use: its affinity, capped by a cgroup v2/v1 CPU quota."""
    cpus = len(os.sched_getaffinity(0))
    quota = None
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if text[0] != "max":
            quota = int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        try:
            q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
            p = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
            quota = q / p if q > 0 else None
        except (OSError, ValueError):
            pass
    if quota:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def torch_threads(setting: int, device: str) -> int:
    """Torch's CPU threads: `setting` when set; else every CPU this process may use for a model on the CPU, and one for a
    model on a GPU (torch then only adds blocks up on the CPU, while OpenMP threads spinning between those small loops
    would hold the CPUs that the stems' encoders need)."""
    if setting > 0:
        return setting
    return cpu_budget() if pick_device(device).type == "cpu" else 1


def idle_priority() -> None:
    """Let the calling thread run only on CPU time that the rest of the process leaves idle (Linux SCHED_IDLE)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux: an ordinary thread
        pass
