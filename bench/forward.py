#!/usr/bin/env python3
"""The model's forward pass alone: seconds per chunk (7.8 s of song) of full-size htdemucs (random weights) by batch size and
precision (DEMUCS_BATCH, DEMUCS_PRECISION), on the device the worker picks (DEMUCS_DEVICE, default auto), through the
worker's own code (`demucs.forward` under the separator's autocast), with the GPU memory each takes there and each lower
precision's difference from FP32 on the same chunks, in dB.

Usage: python bench/forward.py [BATCH ...]   (default 1 2 4 8 16 on CUDA, 1 2 4 on CPU; PRECISIONS="fp32 fp16 bf16" on
CUDA, "fp32 bf16" on CPU by default)
What a GPU worker's settings rest on: how far one chunk at a time is from the device's throughput, and its memory.
COMPILE=reduce-overhead (CUDA graphs) or COMPILE=default adds, after each row, the same batch through `torch.compile` of
the network in that mode: its time, how long the compilation took, its difference from the eager row in dB; whether it
pays on a GPU is what decides a worker setting for it. (COMPILE=eager traces with TorchDynamo only: a quick try of the
script on a CPU, where inductor takes many minutes to compile the full-size model.)
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
COMPILE = os.environ.get("COMPILE", "")  # a torch.compile mode to try after each row (reduce-overhead, default), or eager


def main(batches: list[int]) -> None:
    import numpy as np
    import torch
    from demucs.apply import TensorChunk

    from msaas.separation import Inference, cpu_budget, load_separator
    from msaas.separation.demucs import forward

    torch.set_num_threads(cpu_budget())
    device = os.environ.get("DEMUCS_DEVICE", "auto")
    cuda = load_separator("htdemucs", full_size_htdemucs(), device).device.type == "cuda"
    precisions = os.environ.get("PRECISIONS", "fp32 fp16 bf16" if cuda else "fp32 bf16").split()
    batches = batches or ([1, 2, 4, 8, 16] if cuda else [1, 2, 4])
    torch.manual_seed(0)
    reference: dict[int, list] = {}
    first = None
    for precision in precisions:
        separator = load_separator("htdemucs", full_size_htdemucs(), device, Inference(precision=precision))
        segment = separator.chunk_plan(1).segment_length
        if first is None:
            name = torch.cuda.get_device_name(separator.device) if cuda else f"cpu ({cpu_budget()} threads)"
            print(f"device: {name}; one chunk is {segment / separator.samplerate:.2f} s of song", flush=True)
        with torch.inference_mode(), separator._autocast():
            for batch in batches:
                chunks = [
                    TensorChunk(torch.randn(1, 2, segment, generator=torch.Generator().manual_seed(k))) for k in range(batch)
                ]
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                model = separator._members()[0][0]  # the one network (a bag of one, or the model)
                out = forward(model, chunks, separator.device)
                started = time.perf_counter()
                for _ in range(REPEAT):
                    forward(model, chunks, separator.device)
                per_chunk = (time.perf_counter() - started) / REPEAT / batch
                first = first or per_chunk
                reference.setdefault(batch, out)
                error = relative_error(out, reference[batch])
                db = f", {10 * np.log10(error):6.1f} dB from fp32" if error else ""
                memory = f", GPU memory peak {torch.cuda.max_memory_allocated() / 2**20:,.0f} MB" if cuda else ""
                print(
                    f"{precision} batch {batch:2d}: {per_chunk * 1000:8.1f} ms per chunk "
                    f"({segment / separator.samplerate / per_chunk:6.1f}x real time, {first / per_chunk:.2f}x fp32 batch 1's "
                    f"throughput){db}{memory}",
                    flush=True,
                )
                if COMPILE:
                    compiled_row(model, chunks, separator.device, out, per_chunk, cuda)


def relative_error(out: list, reference: list) -> float:
    """The energy of `out`'s difference from `reference` over `reference`'s (0.0: the same numbers)."""
    import torch

    ref = torch.stack(reference)
    return float(((torch.stack(out) - ref) ** 2).sum() / (ref**2).sum())


def compiled_row(model, chunks: list, device, eager_out: list, eager_per_chunk: float, cuda: bool) -> None:
    """The same batch through `torch.compile(model)` in COMPILE's mode: a row below the eager one."""
    import numpy as np
    import torch

    from msaas.separation.demucs import forward

    mode = {"backend": "eager"} if COMPILE == "eager" else {"mode": COMPILE}
    compiled = torch.compile(model, dynamic=False, **mode)
    started = time.perf_counter()
    try:
        out = forward(compiled, chunks, device)  # the compilation, then (CUDA graphs) a recording
        forward(compiled, chunks, device)
    except Exception as exc:  # a model torch.compile cannot take: said, and the eager rows stand
        print(f"  compiled ({COMPILE}): failed, {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        return
    compile_s = time.perf_counter() - started
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(REPEAT):
        forward(compiled, chunks, device)
    per_chunk = (time.perf_counter() - started) / REPEAT / len(chunks)
    error = relative_error(out, eager_out)
    db = f"{10 * np.log10(error):6.1f} dB" if error else "bit-exact"
    print(
        f"  compiled ({COMPILE}): {per_chunk * 1000:8.1f} ms per chunk ({eager_per_chunk / per_chunk:.2f}x eager), "
        f"compiled in {compile_s:.0f} s, {db} from eager",
        flush=True,
    )


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]])
