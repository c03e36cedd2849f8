"""Break each behaviour a test is named for, once, and see that test fail: `make mutants` (MUTANTS="name ..." for some).

A test that still passes with the behaviour it names broken proves nothing. Each mutant below is one small edit of the
code (or of the machine: a tool taken away in CI), the test that must then fail, and why. The edit is made in this
working tree, the test run as `make test` runs it, and the file put back byte for byte (also on Ctrl-C); a file with
uncommitted changes is refused rather than touched. A mutant whose `old` text is no longer in its file is reported as
stale: the list follows the code or it fails. Not part of `make test` (about 20 minutes on 2 CPUs); BENCHMARKS.md says
when it was last run.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    test: str  # the pytest node that must fail
    why: str  # the behaviour broken
    path: str = ""  # the file edited, from the repository's root ("" for a machine without `hide`)
    old: str = ""
    new: str = ""
    hide: tuple[str, ...] = field(default=())  # tools made missing, in CI (CI=true)


T = "tests/"
MUTANTS = [
    Mutant(
        "stems-do-not-sum",
        T + "test_separation.py::test_stems_sum_back_to_the_song",
        "Spleeter's masks squared, so they no longer add up to one",
        "msaas/separation/spleeter.py",
        "masked = masks * spec",
        "masked = masks**2 * spec",
    ),
    Mutant(
        "blurred-masks",
        T + "test_quality.py::test_spleeter_stems_through_the_service_are_real_and_sample_exact",
        "Spleeter's masks pulled a fifth of the way to 0.5 (they still sum to one): a few dB of SDR lost",
        "msaas/separation/spleeter.py",
        "ratio = (squared + EPS / 2) / (squared.sum(0) + EPS)",
        "ratio = 0.1 + 0.8 * (squared + EPS / 2) / (squared.sum(0) + EPS)",
    ),
    Mutant(
        "no-grace",
        T + "test_faults.py::test_sigterm_lets_the_current_job_finish",
        "SIGTERM's grace period is zero: the running job is put back instead of finishing",
        "msaas/worker.py",
        "threading.Timer(self.settings.worker_grace_s, self._out_of_grace)",
        "threading.Timer(0, self._out_of_grace)",
    ),
    Mutant(
        "grace-charges-an-attempt",
        T + "test_faults.py::test_sigterm_past_the_grace_period_puts_the_job_back",
        "a job put back at the end of the grace period spends an attempt",
        "msaas/worker.py",
        "self._record(self.jobs.give_back, self.name, job, True)",
        "self._record(self.jobs.give_back, self.name, job, False)",
    ),
    Mutant(
        "grace-by-interrupt",
        T + "test_faults.py::test_sigterm_past_the_grace_period_puts_the_job_back",
        "the job's progress ignores the end of the grace period (only the last-resort interrupt stops it)",
        "msaas/worker.py",
        "            if self.grace_over.is_set():\n                raise GraceOver\n",
        "",
    ),
    Mutant(
        "stop-leaves-encoders-running",
        T + "test_separation.py::test_a_separation_stopped_at_its_progress_leaves_no_encoder_running",
        "a separation stopped at its progress (SIGTERM's grace over) leaves its encoder threads running as the worker exits",
        "msaas/separation/files.py",
        "        sink.close(abandon=True)\n        raise\n",
        "        raise\n",
    ),
    Mutant(
        "roformer-first-chunk-faded",
        T + "test_roformer.py::test_a_song_shorter_than_two_overlaps_and_one_of_exactly_a_chunk",
        "the RoFormer engine fades in its first chunk too (what a song too short to be mirrored meets)",
        "msaas/separation/roformer.py",
        "                if fade and offset == 0:\n",
        "                if fade and offset < 0:\n",
    ),
    Mutant(
        "ensemble-not-averaged",
        T + "test_ensemble.py::test_an_ensemble_of_two_models_is_the_average_of_each_alone",
        "an ensemble weighs its last model double",
        "msaas/separation/ensemble.py",
        "                    emit(mapped / n)\n",
        "                    emit((mapped + self._mapped(k, block)) / (n + 1))\n",
    ),
    Mutant(
        "specialists-all-run",
        T + "test_worker.py::test_two_stems_on_a_bag_of_specialists_runs_one_and_gives_the_bags_own_track",
        "two_stems on a bag of specialists runs the whole bag",
        "msaas/separation/demucs.py",
        "        if len(needed) == len(members):\n",
        "        if needed:\n",
    ),
    Mutant(
        "ctrl-c-charges-an-attempt",
        T + "test_faults.py::test_ctrl_c_puts_a_running_job_back_at_once_with_its_attempt",
        "a worker leaving on Ctrl-C puts its job back with the attempt spent",
        "msaas/jobs/registry.py",
        "moved = len(self.queue.recover(worker, refund=True))",
        "moved = len(self.queue.recover(worker, refund=False))",
    ),
    Mutant(
        "redis-outage-crashes",
        T + "test_faults.py::test_workers_wait_out_a_redis_outage_instead_of_crashing",
        "a worker that finds no redis at start exits instead of waiting",
        "msaas/worker.py",
        'log.warning("waiting for redis and the object store: %s", exc)',
        'log.warning("waiting for redis and the object store: %s", exc)\n                raise',
    ),
    Mutant(
        "job-end-lost",
        T + "test_faults.py::test_redis_stopped_mid_job_and_started_again_the_job_ends_done",
        "a job's end is written once; with redis away at that moment it is lost",
        "msaas/worker.py",
        "                time.sleep(delay)\n                self._moved()",
        "                raise\n                self._moved()",
    ),
    Mutant(
        "attempts-unbounded",
        T
        + "test_faults.py::test_a_song_that_kills_its_worker_every_time_fails_after_its_attempts_and_the_song_behind_it_is_done",
        "a job whose worker dies with it is tried again forever",
        "msaas/jobs/queue.py",
        "again = retry and (attempts < self.max_attempts or not charge)",
        "again = retry",
    ),
    Mutant(
        "stitch-consumes-parts",
        T + "test_split.py::test_a_worker_killed_while_stitching_loses_nothing",
        "the stitch removes each part once it has read it, so a stitch cut off cannot be done again",
        "msaas/worker.py",
        "            self.store.get_file(storage.QUEUE_BUCKET, splitting.part_name(job.songhash, k), part)\n",
        "            self.store.get_file(storage.QUEUE_BUCKET, splitting.part_name(job.songhash, k), part)\n"
        "            self.store.remove(storage.QUEUE_BUCKET, splitting.part_name(job.songhash, k))\n",
    ),
    Mutant(
        "offline-thinks-online",
        T + "test_e2e.py::test_make_run_with_no_network_no_model_directory_and_no_cache_separates_with_the_bundled_model",
        "the embedded stack assumes the model hosts answer, so with no network it serves a model it cannot load",
        "msaas/embedded.py",
        "wanted in models.CATALOG and _online():",
        "wanted in models.CATALOG:",
    ),
    Mutant(
        "no-pyav-fallback",
        T + "test_lame.py::test_with_no_lame_to_load_the_stems_go_through_pyav",
        "LAME is taken to be there when no library loads (no fallback to PyAV's encoder)",
        "msaas/lame.py",
        "def available() -> bool:\n    return library() is not None",
        "def available() -> bool:\n    return True",
    ),
    Mutant(
        "crc-required",
        T + "test_lame.py::test_a_lame_without_update_music_crc_still_writes_exact_stems",
        "a LAME library without UpdateMusicCRC is not used",
        "msaas/lame.py",
        'if hasattr(lib, "UpdateMusicCRC"):  # LAME',
        "if True:  # LAME",
    ),
    Mutant(
        "fetch-ignores-checksum",
        T + "test_fetch.py::test_a_download_that_does_not_match_its_checksum_is_refused_and_not_kept",
        "fetch-model keeps a download whatever its checksum",
        "msaas/fetch.py",
        "hash_prefix=checksum",
        "hash_prefix=None",
    ),
    Mutant(
        "fetch-forgets-the-bag",
        T + "test_fetch.py::test_fetch_model_downloads_a_bag_into_a_directory_that_loads_as_demucs_repo",
        "fetch-model downloads a bag's models but not the bag's own yaml",
        "msaas/fetch.py",
        "    if bag.is_file():\n        shutil.copyfile(bag, dest / bag.name)\n",
        "",
    ),
    Mutant(
        "fetch-hub-wrong-repo",
        T + "test_fetch.py::test_fetch_model_falls_back_to_the_hugging_face_hub_and_converts_to_demucs_format",
        "the Hugging Face fallback asks the wrong repository",
        "msaas/fetch.py",
        'repo_id = "adefossez/" + models.hf_repo_name(name)',
        'repo_id = "facebook/" + models.hf_repo_name(name)',
    ),
    Mutant(
        "song-held-whole",
        T + "test_worker.py::test_a_workers_memory_does_not_grow_with_the_songs_length",
        "a Demucs song is decoded whole before it is separated (instead of read block by block)",
        "msaas/separation/demucs.py",
        "song = song or SongStream(source, self.samplerate, max_duration_s)\n"
        "        return Reading(song.samples, song.rate, lambda emit, progress: self.stream_song(song, emit, progress))",
        "from .song import load_song\n\n"
        "        mix, samples, rate = load_song(source, self.samplerate, max_duration_s)\n"
        "        return Reading(samples, rate, lambda emit, progress: self.stream(mix, emit, progress))",
    ),
    Mutant(
        "gpu-encoders-one-thread",
        T + "test_parallel_mp3.py::test_gpu_workers_encode_on_every_cpu_and_give_torch_one",
        "a GPU worker's encoders get every CPU but one",
        "msaas/separation/encoders.py",
        'return cpu_budget() if separator.device.type != "cpu" else 0',
        'return cpu_budget() - 1 if separator.device.type != "cpu" else 0',
    ),
    Mutant(
        "slow-status",
        T + "test_load.py::test_many_concurrent_uploads_and_polls_get_no_errors",
        "each status request takes 0.3 s longer",
        "msaas/rest/api.py",
        '    record = _song(songhash)\n    record["urls"]',
        '    __import__("time").sleep(0.3)\n    record = _song(songhash)\n    record["urls"]',
    ),
    Mutant(
        "page-silent",
        T + "test_web.py::test_a_song_is_separated_played_and_mixed_in_the_browser",
        "the page's stems are not connected to its output: the clock runs, nothing is heard",
        "msaas/rest/static/app.js",
        "      gain.connect(this.master);\n",
        "",
    ),
    Mutant(
        "page-mute-ignored",
        T + "test_web.py::test_a_song_is_separated_played_and_mixed_in_the_browser",
        "the mixer's graph plays a muted stem at full level (the buttons still say muted)",
        "msaas/rest/static/app.js",
        "      gain.gain.value = levels[stem.track];\n",
        "      gain.gain.value = 1;\n",
    ),
    Mutant(
        "page-stems-drift",
        T + "test_web.py::test_a_song_is_separated_played_and_mixed_in_the_browser",
        "each stem starts a millisecond after the one before it",
        "msaas/rest/static/app.js",
        "      source.start(at, offset);",
        "      source.start(at + i * 0.001, offset);",
    ),
    Mutant(
        "worker-checks-engine-class",
        T + "test_architecture.py::test_no_caller_checks_an_engines_class",
        "the worker asks whether an engine has a method instead of relying on the engine interface",
        "msaas/worker.py",
        "        sep.warm_up()\n",
        '        if hasattr(sep, "warm_up"):\n            sep.warm_up()\n',
    ),
    Mutant(
        "peaks-last-span-dropped",
        T + "test_peaks.py::test_peaks_fed_in_blocks_of_any_size_are_the_peaks_of_the_whole",
        "a stem's peaks stop at its last whole span: the waveform is shorter than the stem",
        "msaas/peaks.py",
        "        if self.pending.size:\n",
        "        if False:\n",
    ),
    Mutant(
        "peaks-not-the-stems",
        T + "test_peaks.py::test_every_stem_gets_peaks_as_long_as_it_is_and_they_go_with_it",
        "the waveforms are not the stems' own envelope (half of it)",
        "msaas/separation/encoders.py",
        "                    self.peaks[i].add(data)\n",
        "                    self.peaks[i].add(data * 0.5)\n",
    ),
    Mutant(
        "page-seek-ignores-click",
        T + "test_web.py::test_a_song_is_separated_played_and_mixed_in_the_browser",
        "a click on a waveform does not move the song there",
        "msaas/rest/static/app.js",
        "    mixer.seek(Math.min(1, Math.max(0, (e.clientX - box.left) / box.width)));",
        "    mixer.seek(0);",
    ),
    Mutant(
        "library-of-everyone",
        T + "test_library.py::test_each_key_lists_and_deletes_only_its_own_songs",
        "every key's songs listed in one library",
        "msaas/jobs/queue.py",
        "keys.songs_key(job.tenant)]",
        "keys.songs_key(None)]",
    ),
    Mutant(
        "delete-keeps-stems",
        T + "test_library.py::test_deleting_a_song_removes_its_stems_peaks_record_and_listing",
        "a deleted song's stems and peaks stay in the store",
        "msaas/rest/api.py",
        "    removed = storage.remove_song(b.store, songhash, (storage.OUTPUT_BUCKET,))",
        "    removed = 8",
    ),
    Mutant(
        "link-to-private-fetched",
        T + "test_links.py::test_links_to_private_addresses_are_refused_unless_allowed",
        "a song link to a private or metadata address is fetched",
        "msaas/rest/api.py",
        "b.settings.max_upload_bytes, b.settings.callback_allow_private)",
        "b.settings.max_upload_bytes, True)",
    ),
    Mutant(
        "one-song-at-a-time",
        T + "test_lanes.py::test_a_worker_separates_songs_in_flight_together_and_each_as_alone",
        "JOBS_IN_FLIGHT ignored: the worker takes one song at a time",
        "msaas/worker.py",
        "for k in range(1, self.lanes)]",
        "for k in range(1, 1)]",
    ),
    Mutant(
        "inflight-never-shared",
        T + "test_inference.py::test_songs_in_flight_together_share_batches_and_each_gets_its_stems_as_alone",
        "songs in flight each run their own batches: a batch short of full is never filled with another song's chunks",
        "msaas/separation/inflight.py",
        "            if request.member is not member:\n",
        "            if request.member is not member or request is not self.waiting[0]:\n",
    ),
    Mutant(
        "onnx-attention-unfused",
        T + "test_inference.py::test_the_onnx_export_computes_attention_in_fused_nodes",
        "the export writes attention as MatMul and Softmax nodes again (a tenth slower, more memory)",
        "msaas/separation/onnxrt.py",
        "torch.inference_mode(False), grad, fused_attention(core):",
        "torch.inference_mode(False), torch.enable_grad():",
    ),
    Mutant(
        "onnx-telemetry-on",
        T + "test_inference.py::test_a_worker_on_the_default_engine_says_which_it_measured_faster",
        "ONNX Runtime's telemetry left on: a device id and an event queue to send to Microsoft in the worker's home",
        "msaas/config.py",
        'LIBRARY_DEFAULTS = {"ORT_DISABLE_TELEMETRY": "1"}',
        'LIBRARY_DEFAULTS = {"ORT_DISABLE_TELEMETRY": "0"}',
    ),
    Mutant(
        "fetched-onnx-ignored",
        T + "test_fetch.py::test_a_worker_with_a_fetched_model_directory_loads_its_onnx_networks_without_exporting",
        "a worker exports the networks at start-up although fetch-model put them in its model directory",
        "msaas/separation/onnxrt.py",
        "            if path is None or not path.exists():",
        "            if True:",
    ),
    Mutant(
        "ci-without-chromium",
        T + "test_web.py::test_a_song_is_separated_played_and_mixed_in_the_browser",
        "CI on a machine without chromium: the page test must fail, not skip",
        hide=("chromium",),
    ),
    Mutant(
        "ci-without-shellcheck",
        T + "test_deploy.py::test_deploy_scripts_pass_shellcheck",
        "CI on a machine without shellcheck: the test must fail, not skip",
        hide=("shellcheck",),
    ),
]


def hidden_env(tools: tuple[str, ...], shadow: Path) -> dict[str, str]:
    """An environment in which `tools` are missing: shutil.which finds none of them (sitecustomize, for the tests' own
    checks) and running one finds a stand-in that says it is not there (first on PATH, for subprocesses)."""
    for tool in tools:
        stand_in = shadow / "bin" / tool
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text(f"#!/bin/sh\necho '{tool}: not installed' >&2\nexit 127\n")
        stand_in.chmod(0o755)
    (shadow / "sitecustomize.py").write_text(
        f"import shutil\n_which = shutil.which\nshutil.which = lambda name, *a, **k: None if name in {tools!r} else _which(name, *a, **k)\n"
    )
    path = os.pathsep.join([str(shadow / "bin"), os.environ["PATH"]])
    return {"PATH": path, "PYTHONPATH": os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")])), "CI": "true"}


def stale(m: Mutant) -> str | None:
    """Why `m` no longer applies to the code (its text is not in its file exactly once), or None."""
    if not m.path:
        return None
    found = (ROOT / m.path).read_text().count(m.old) if (ROOT / m.path).is_file() else 0
    return None if found == 1 else f"{m.old!r} is in {m.path} {found} times, not once"


def dirty(path: str) -> bool:
    out = subprocess.run(["git", "status", "--porcelain", "--", path], cwd=ROOT, capture_output=True, text=True, check=True)
    return bool(out.stdout.strip())


def run(m: Mutant, timeout_s: float) -> tuple[str, float, str]:
    """('caught' | 'MISSED' | 'stale' | 'refused' | 'timeout', seconds, the test's last line and first failure)."""
    target = ROOT / m.path if m.path else None
    original = target.read_bytes() if target else None
    if target:
        if dirty(m.path):
            return "refused", 0.0, f"{m.path} has uncommitted changes"
        if why := stale(m):
            return "stale", 0.0, why
        target.write_text(original.decode().replace(m.old, m.new))
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="msaas-mutant-") as shadow:
            env = {**os.environ, **(hidden_env(m.hide, Path(shadow)) if m.hide else {})}
            cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", m.test]
            try:
                out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
            except subprocess.TimeoutExpired:
                return "timeout", time.monotonic() - started, f"no result in {timeout_s:.0f} s"
    finally:
        if target:
            target.write_bytes(original)
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    last = lines[-1] if lines else out.stderr.strip()[-200:]
    failure = next((line[1:].strip() for line in lines if line.startswith("E ")), "")  # the first assertion that failed
    # Caught: the named test ran and failed. A test that errors in collection or is skipped has not caught anything.
    caught = re.search(r"\b\d+ failed\b", last) and "error" not in last
    said = last.strip("= ") + (f"\n    {failure[:300]}" if failure else "")
    return ("caught" if caught else "MISSED"), time.monotonic() - started, said


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="mutants to run (all by default)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds for each mutant's test")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.names or m.name in args.names]
    if unknown := set(args.names) - {m.name for m in MUTANTS}:
        parser.error(f"no such mutant: {', '.join(sorted(unknown))}")
    if args.list:
        for m in chosen:
            print(f"{m.name:26} {m.why}\n{'':26} -> {m.test}")
        return 0
    results = []
    for m in chosen:
        print(f"{m.name}: {m.why} ...", flush=True)
        verdict, seconds, last = run(m, args.timeout)
        results.append((m, verdict))
        print(f"  {verdict} in {seconds:.0f} s: {last}", flush=True)
    missed = [m.name for m, verdict in results if verdict != "caught"]
    print(f"\n{len(results) - len(missed)} of {len(results)} mutants caught" + (f"; not: {', '.join(missed)}" if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
