#!/usr/bin/env python3
"""The model's forward pass alone: seconds per chunk (7.8 s of song) of full-size htdemucs (random weights) by batch size, on the
device the worker picks (DEMUCS_DEVICE, default auto), with the GPU memory each batch size takes there.

Usage: python bench/forward.py [BATCH ...]   (default 1 2 4 8 on CUDA, 1 2 on CPU)
What a GPU worker's settings rest on: how far one chunk at a time is from the device's throughput, and its memory.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from worker_memory import full_size_htdemucs  # noqa: E402

REPEAT = 3  # timed batches per size, after one untimed


def main(batches: list[int]) -> None:
    import torch
    from demucs.apply import apply_model

    from msaas.separation import cpu_budget, load_separator

    torch.set_num_threads(cpu_budget())
    separator = load_separator("htdemucs", full_size_htdemucs(), os.environ.get("DEMUCS_DEVICE", "auto"))
    cuda = separator.device.type == "cuda"
    segment = separator.chunk_plan(1).segment_length
    name = torch.cuda.get_device_name(separator.device) if cuda else f"cpu ({cpu_budget()} threads)"
    print(f"device: {name}; one chunk is {segment / separator.samplerate:.2f} s of song", flush=True)
    batches = batches or ([1, 2, 4, 8] if cuda else [1, 2])
    first = None
    with torch.inference_mode():
        for batch in batches:
            mix = torch.randn(batch, 2, segment)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            apply_model(separator.model, mix, shifts=0, split=False, device=separator.device).cpu()
            started = time.perf_counter()
            for _ in range(REPEAT):
                apply_model(separator.model, mix, shifts=0, split=False, device=separator.device).cpu()
            per_chunk = (time.perf_counter() - started) / REPEAT / batch
            first = first or per_chunk
            memory = f", GPU memory peak {torch.cuda.max_memory_allocated() / 2**20:,.0f} MB" if cuda else ""
            print(
                f"batch {batch:2d}: {per_chunk * 1000:8.1f} ms per chunk ({segment / separator.samplerate / per_chunk:6.1f}x real "
                f"time, {first / per_chunk:.2f}x batch 1's throughput){memory}",
                flush=True,
            )


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]])
