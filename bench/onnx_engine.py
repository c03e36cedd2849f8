#!/usr/bin/env python3
"""htdemucs on ONNX Runtime against htdemucs on torch (DEMUCS_ENGINE=onnx / torch), on the same song, each in a fresh
process: forward passes per audio-minute (the part the engine changes), the whole separation, peak RSS, and the
difference between their stems in dB (FLAC stems, so that no MP3 encoding hides or adds a difference).

Full-size htdemucs with random weights (compute does not depend on the weights), loaded through `load_separator` from a
model directory as a worker loads it; the export to ONNX happens once, in a warm-up process, before anything is timed.
Runs go A B B A (ROUNDS times); the table gives medians and ONNX's speed-up over torch (the goal: 1.2x on the forward
passes). Threads: the process's CPU budget for both (torch's intra-op threads, ONNX Runtime's intra-op threads).

--threads instead: ONNX Runtime's thread settings on one chunk of the exported network, each in a fresh process (intra-op
threads, inter-op threads and parallel execution, spinning), the figures behind OnnxNetworks' session options.

Usage: python bench/onnx_engine.py [--rounds N] [--threads] [SECONDS]   (default: 1 round of 60 s; make bench-onnx and
       make bench-speed: 2 rounds of 30 s)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from worker_memory import full_size_htdemucs, song  # noqa: E402

ENGINES = ["torch", "onnx"]


def one(engine: str, seconds: int, out: Path) -> None:
    """In this (fresh) process: warm up, separate into `out`, print a JSON line."""
    import resource

    import torch

    from msaas import audio
    from msaas.separation import Inference, cpu_budget, load_separator, separate_file

    torch.set_num_threads(cpu_budget())
    sep = load_separator("htdemucs", full_size_htdemucs(), "cpu", Inference(engine=engine))
    assert sep.engine == engine, f"asked for {engine}, got {sep.engine}"
    sep.warm_up()
    out.mkdir(parents=True, exist_ok=True)
    report = separate_file(sep, song(seconds), out, audio.OutputOptions("flac"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    total = report.read_s + report.separate_s + report.drain_s
    print(json.dumps({"seconds": total, "forward_s": report.forward_s, "peak_mb": peak, "audio_s": report.seconds}))


SESSIONS = [  # intra-op threads (0: ONNX Runtime's own choice), inter-op threads, parallel execution, spinning
    ("cpu budget", "1", "sequential", "1"),
    ("cpu budget", "1", "sequential", "0"),
    ("1", "1", "sequential", "1"),
    ("0", "1", "sequential", "1"),
    ("cpu budget", "2", "parallel", "1"),
]


def session(spec: str) -> None:
    """In this (fresh) process: one chunk through the exported network with these session options, 1 + 4 times."""
    import time

    import numpy as np
    import onnxruntime as ort

    from msaas.separation import Inference, cpu_budget, load_separator
    from msaas.separation.onnxrt import cache_dir, file_name

    intra, inter, mode, spin = spec.split(",")
    sep = load_separator("htdemucs", full_size_htdemucs(), "cpu", Inference(engine="onnx"))  # exported before: loads it
    (member,) = sep._members()[0]
    options = ort.SessionOptions()
    options.intra_op_num_threads = cpu_budget() if intra == "cpu budget" else int(intra)
    options.inter_op_num_threads = int(inter)
    options.execution_mode = ort.ExecutionMode.ORT_PARALLEL if mode == "parallel" else ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    run = ort.InferenceSession(str(cache_dir() / file_name(member)), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.standard_normal([1, *i.shape[1:]]).astype(np.float32) * 0.1 for i in run.get_inputs()}
    run.run(None, feeds)
    times = []
    for _ in range(4):
        started = time.perf_counter()
        run.run(None, feeds)
        times.append(time.perf_counter() - started)
    print(json.dumps({"median_s": statistics.median(times)}))


def export(folder: Path) -> None:
    """In this (fresh) process: the model's network exported into `folder` (as `msaas fetch-model` does), timed, and this
    process's peak RSS (what a worker's start-up adds when it exports)."""
    import resource
    import shutil
    import time

    from msaas.separation.demucs import export_onnx

    folder.mkdir(parents=True, exist_ok=True)
    for path in full_size_htdemucs().iterdir():
        if path.is_file():
            shutil.copy(path, folder)
    started = time.perf_counter()
    export_onnx("htdemucs", folder)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"export_s": time.perf_counter() - started, "peak_mb": peak}))


def thread_settings(run_session) -> None:
    results = {spec: [] for spec in SESSIONS}
    for spec in SESSIONS + SESSIONS[::-1]:
        results[spec].append(run_session(",".join(spec))["median_s"])
    best = min(statistics.median(r) for r in results.values())
    print("\nONNX Runtime's session options, one 7.8 s chunk of full-size htdemucs (medians of 2 processes x 4 runs):")
    print(f"{'intra-op threads':>17} {'inter-op':>9} {'execution':>11} {'spinning':>9} {'ms a chunk':>11} {'against best':>13}")
    for (intra, inter, mode, spin), times in results.items():
        t = statistics.median(times)
        print(f"{intra:>17} {inter:>9} {mode:>11} {spin:>9} {1000 * t:11.0f} {t / best:12.2f}x")


def fresh(what: str, *args: str) -> dict:
    """This script in a fresh process with `args`: the JSON line it prints last."""
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def difference_db(a_dir: Path, b_dir: Path) -> float:
    import numpy as np

    from msaas import audio

    error = energy = 0.0
    for path in sorted(a_dir.glob("*.flac")):
        a, b = audio.decode(path)[0].astype(np.float64), audio.decode(b_dir / path.name)[0].astype(np.float64)
        error += float(((a - b) ** 2).sum())
        energy += float((b**2).sum())
    return 10 * np.log10(error / energy) if error else float("-inf")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--session", help=argparse.SUPPRESS)
    parser.add_argument("--export", help=argparse.SUPPRESS)
    parser.add_argument("--threads", action="store_true", help="ONNX Runtime's thread settings instead")
    parser.add_argument("seconds", nargs="?", type=int, default=60)
    args = parser.parse_args()
    if args.one:
        one(args.one, args.seconds, Path(args.out))
        return
    if args.session:
        session(args.session)
        return
    if args.export:
        export(Path(args.export))
        return
    full_size_htdemucs()
    song(args.seconds)
    work = Path(tempfile.mkdtemp(prefix="msaas-onnx-bench-"))

    def run(engine: str, seconds: int) -> dict:
        return fresh(engine, "--one", engine, "--out", str(work / engine), str(seconds))

    exported = fresh("the export", "--export", str(work / "export"))
    print(
        f"  export to ONNX (once per model, or by msaas fetch-model): {exported['export_s']:.1f} s, peak {exported['peak_mb']:.0f} MB"
    )
    run("onnx", 10)  # the export into the cache, once, outside the timed runs
    if args.threads:
        thread_settings(lambda spec: fresh(f"session {spec}", "--session", spec))
        return
    results: dict[str, list[dict]] = {name: [] for name in ENGINES}
    for name in (ENGINES + ENGINES[::-1]) * args.rounds:
        result = run(name, args.seconds)
        results[name].append(result)
        print(f"  {name}: {result['seconds']:.1f} s, forward passes {result['forward_s']:.1f} s, peak {result['peak_mb']:.0f} MB")
    print(f"\n{args.seconds} s song, {2 * args.rounds} runs each (medians), CPU, full-size htdemucs (random weights):")
    print(f"{'engine':8} {'forward s/audio-min':>20} {'whole s/audio-min':>18} {'peak RSS MB':>12}")
    medians = {}
    for name in ENGINES:
        runs = results[name]
        minutes = runs[0]["audio_s"] / 60
        medians[name] = (statistics.median(r["forward_s"] for r in runs), statistics.median(r["seconds"] for r in runs))
        peak = statistics.median(r["peak_mb"] for r in runs)
        print(f"{name:8} {medians[name][0] / minutes:20.1f} {medians[name][1] / minutes:18.1f} {peak:12.0f}")
    print(
        f"ONNX Runtime against torch: forward passes {medians['torch'][0] / medians['onnx'][0]:.2f}x as fast, the whole "
        f"separation {medians['torch'][1] / medians['onnx'][1]:.2f}x; stems {difference_db(work / 'onnx', work / 'torch'):.1f} dB apart"
    )


if __name__ == "__main__":
    main()
