"""The worker loop: claim a job, fetch the song, separate it, store every stem, finish, call back."""

from __future__ import annotations

import _thread
import logging
import os
import signal
import tempfile
import threading
import time
import uuid
from pathlib import Path

import redis

from . import audio, models, splitting, storage
from .callbacks import CallbackSender
from .config import Settings
from .jobs import Job, JobQueue
from .metrics import WorkerMetrics
from .separation import (
    ModelUnavailable,
    Separator,
    SongStream,
    StemSink,
    cpu_budget,
    load_separator,
    separate_file,
    torch_threads,
)

log = logging.getLogger("msaas.worker")

# Share of a job's progress given to each stage, in order.
STAGES = {
    "downloading": (0.0, 0.01),
    "decoding": (0.01, 0.02),
    "separating": (0.02, 0.92),
    "encoding": (0.92, 0.98),
    "stitching": (0.9, 0.98),  # a split song's last step, after its parts (jobs.PARTS_SHARE)
    "uploading": (0.98, 1.0),
}
RETRY_LOAD_AFTER_S = 300
MODELS_KEPT = 2  # the default model and the last other one used: each holds hundreds of MB


def output_options(job: Job) -> tuple[str, int, str | None]:
    """What the client asked the stems to be: format, bitrate (kbps, for MP3) and the two-stem pick (or None)."""
    options = job.options
    return options.get("format", "mp3"), int(options.get("bitrate", audio.DEFAULT_BITRATE)), options.get("two_stems")


class Worker:
    def __init__(self, settings: Settings, client: redis.Redis, store: storage.ObjectStore, name: str | None = None):
        self.settings = settings
        self.store = store
        self.jobs = JobQueue(client, settings.job_max_attempts, settings.heartbeat_ttl_s)
        self.name = name or f"{settings.hostname}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.callbacks = CallbackSender(settings.callback_secret, settings.callback_allow_private, settings.callback_timeout_s)
        self.separators: dict[str, Separator] = {}
        self.load_errors: dict[str, tuple[float, str]] = {}
        self.stopping = threading.Event()
        self.outage_backoff_s = 0.0
        self.metrics = WorkerMetrics()
        self.published: dict[str, dict] = {}

    # --- models ----------------------------------------------------------------------------
    def separator(self, name: str) -> Separator:
        """Each model is loaded once per worker; a failed load is remembered for a while, not retried per job."""
        if name in self.separators:
            self.separators[name] = self.separators.pop(name)  # most recently used last
            return self.separators[name]
        failed = self.load_errors.get(name)
        if failed and time.monotonic() - failed[0] < RETRY_LOAD_AFTER_S:
            raise ModelUnavailable(failed[1])
        log.info("loading model %s", name)
        started = time.monotonic()
        try:
            sep = load_separator(name, self.settings.demucs_repo, self.settings.device)
        except ModelUnavailable as exc:
            self.load_errors[name] = (time.monotonic(), str(exc))
            raise
        if hasattr(sep, "warm_up"):
            sep.warm_up()
        log.info("model %s loaded in %.1f s (tracks %s)", name, time.monotonic() - started, ", ".join(sep.tracks))
        while len(self.separators) >= MODELS_KEPT:
            unused = next((n for n in self.separators if n != self.settings.demucs_model), next(iter(self.separators)))
            log.info("unloading model %s", unused)
            del self.separators[unused]
        self.separators[name] = sep
        self.publish_models()
        return sep

    def publish_models(self) -> None:
        repo = self.settings.demucs_repo
        seen = {}
        for name, info in models.catalog(repo).items():
            loaded = self.separators.get(name)
            seen[name] = {
                "tracks": loaded.tracks if loaded else info["tracks"],
                "available": bool(loaded) or models.available(name, repo, self.settings.torch_home),
            }
        self.published = seen
        self.jobs.publish_models(self.name, seen)

    # --- the loop --------------------------------------------------------------------------
    def _beat(self) -> None:
        while not self.stopping.wait(max(1.0, self.settings.heartbeat_ttl_s / 3)):
            try:
                self.jobs.heartbeat(self.name)
                self.jobs.publish_models(self.name, self.published)  # refreshed, so it expires only with the worker
                self.jobs.requeue_orphans()
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)

    def stop(self, *_args) -> None:
        """SIGTERM: take no new job; let the current one finish within the grace period, else put it back."""
        if self.stopping.is_set():
            return
        log.info("worker %s stopping: the current job may finish within %.0f s", self.name, self.settings.worker_grace_s)
        self.stopping.set()
        timer = threading.Timer(self.settings.worker_grace_s, self._out_of_grace)
        timer.daemon = True
        timer.start()

    def _out_of_grace(self) -> None:
        log.warning("worker %s: grace period over; putting the current job back in the queue", self.name)
        _thread.interrupt_main()  # KeyboardInterrupt in the loop; run() then retires, requeueing the job

    def run(self, preload: bool = True) -> None:
        import torch

        torch.set_num_threads(torch_threads(self.settings.torch_threads, self.settings.device))
        self._wait_for_backends()
        self.jobs.heartbeat(self.name)
        threading.Thread(target=self._beat, daemon=True, name="heartbeat").start()
        if self.settings.metrics_port:
            try:
                self.metrics.serve(self.settings.metrics_port)
            except OSError as exc:  # a second worker on one machine: the port is taken; metrics are not worth dying for
                log.warning("no metrics on port %d: %s", self.settings.metrics_port, exc)
        log.info("worker %s ready: model %s, %d torch threads", self.name, self.settings.demucs_model, torch.get_num_threads())
        self.publish_models()
        if preload:
            try:
                self.separator(self.settings.demucs_model)
            except ModelUnavailable as exc:
                log.error("default model unavailable: %s", exc)
        backoff = 1.0
        try:
            while not self.stopping.is_set():
                try:
                    self.jobs.requeue_orphans()
                    job = self.jobs.claim(self.name, timeout_s=2)
                    backoff = 1.0
                except redis.RedisError as exc:
                    log.warning("redis unavailable (%s); retrying in %.0f s", exc, backoff)
                    self.stopping.wait(backoff)
                    backoff = min(backoff * 2, 30)
                    continue
                if job is not None:
                    self.process(job)
        finally:
            self.stopping.set()
            try:
                moved = self.jobs.retire(self.name)
                if moved:
                    log.info("put %d unfinished job(s) back in the queue", moved)
            except redis.RedisError as exc:
                log.warning("could not retire cleanly (%s); another worker will requeue my jobs", exc)

    def _wait_for_backends(self) -> None:
        delay = 1.0
        while True:
            try:
                self.jobs.r.ping()
                self.store.ensure_buckets()
                return
            except (redis.RedisError, storage.StorageError) as exc:
                log.warning("waiting for redis and the object store: %s", exc)
                if self.stopping.wait(delay):
                    raise SystemExit(0) from None
                delay = min(delay * 2, 30)

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)

    # --- one job ---------------------------------------------------------------------------
    def process(self, job: Job) -> None:
        started = time.monotonic()
        if not job.whole and (self.jobs.status(job.songhash) or {}).get("state") != "running":
            log.info("job %s has ended; dropping its %s", job.songhash, "stitch" if job.stitch else f"part {job.part}")
            self.jobs.drop(self.name, job)
            return
        what = "stitching its parts" if job.stitch else "separating" + (f" part {job.part}" if job.part is not None else "")
        log.info("job %s: %s with %s", job.songhash, what, job.model)
        last = [0.0, ""]

        def progress(stage: str, fraction: float) -> None:
            now = time.monotonic()
            if stage == last[1] and now - last[0] < 0.5 and fraction < 1.0:
                return
            last[:] = [now, stage]
            lo, hi = STAGES[stage]
            self.jobs.progress(job, stage, lo + (hi - lo) * fraction)

        try:
            with tempfile.TemporaryDirectory(prefix="msaas-job-") as tmp:
                if job.part is not None:
                    tracks = self._separate_part(job, Path(tmp), progress)
                elif job.stitch:
                    tracks = self._stitch(job, Path(tmp), progress)
                else:
                    tracks = self._separate(job, Path(tmp), progress)
        except (ModelUnavailable, audio.NotAudio, audio.TooLong, ValueError) as exc:
            self._fail(job, str(exc), retry=False)
            return
        except storage.ObjectNotFound:
            self._fail(job, "the uploaded song is no longer in the object store; upload it again", retry=False)
            return
        except (storage.StorageError, redis.RedisError) as exc:
            # An outage is not the song's fault: put the job back without spending an attempt, and wait before the next.
            self._fail(job, f"{exc.__class__.__name__}: {exc}", retry=True, charge=False)
            self.outage_backoff_s = min(max(1.0, self.outage_backoff_s * 2), 60.0)
            log.warning("backend unavailable; next job in %.0f s", self.outage_backoff_s)
            self.stopping.wait(self.outage_backoff_s)
            return
        except Exception as exc:  # storage or redis hiccups, out of memory, a bug: retried up to JOB_MAX_ATTEMPTS
            log.exception("job %s: separation failed", job.songhash)
            self._fail(job, f"{exc.__class__.__name__}: {exc}", retry=True)
            return
        self.outage_backoff_s = 0.0
        if tracks is None:  # split into parts, or one part of a split song stored
            return
        self.jobs.finish(self.name, job, tracks)
        if job.stitch:
            self._remove_parts(job)
        self.metrics.jobs.labels("done").inc()
        self.metrics.seconds.observe(time.monotonic() - started)
        log.info("job %s: done in %.1f s, tracks %s", job.songhash, time.monotonic() - started, ", ".join(tracks))
        self._call_back(job, "done", tracks)

    def _download(self, job: Job, tmp: Path, progress) -> Path:
        progress("downloading", 0.0)
        source = tmp / "song"
        self.store.get_file(storage.QUEUE_BUCKET, storage.upload_name(job.songhash), source)
        return source

    def _separate(self, job: Job, tmp: Path, progress) -> list[str] | None:
        sep = self.separator(job.model)
        started = time.perf_counter()
        source = self._download(job, tmp, progress)
        downloaded = time.perf_counter()
        workers = self.jobs.live_workers() if splitting.can_split(sep) and self.settings.split_over_s > 0 else 1
        song, read_s = None, 0.0
        if workers > 1:  # only then is the song's length needed before separating: read once, for the split or not
            progress("decoding", 0.0)
            song = SongStream(source, sep.samplerate, self.settings.max_duration_s)
            read_s = time.perf_counter() - downloaded
            seconds = song.samples / song.rate
            parts = splitting.parts_for(seconds, self.settings.split_over_s, self.settings.split_max_parts, workers)
            if parts > 1:
                plan = splitting.make_plan(sep, song, parts)
                self.jobs.split(self.name, job, plan)
                log.info("job %s: %.0f s of song, split into %d parts for the workers", job.songhash, seconds, parts)
                return None
        fmt, bitrate, two_stems = output_options(job)
        done: dict = {}
        stems = separate_file(
            sep,
            source,
            tmp,
            fmt=fmt,
            bitrate=bitrate,
            two_stems=two_stems,
            max_duration_s=self.settings.max_duration_s,
            progress=progress,
            info=done,
            encoder_threads=self.settings.encoder_threads,
            song=song,
        )
        self.metrics.audio.inc(done["samples"] / done["rate"])
        self.metrics.forward.inc(done["forward_s"])
        uploading = time.perf_counter()
        tracks = self._upload(job, stems, progress)
        finished = time.perf_counter()
        log.info(
            "job %s: %.1f s of song in %.1f s: download %.1f s, read %.1f s, separation %.1f s (forward passes %.1f s), "
            "encoders' drain %.1f s, upload %.1f s; encoding %.1f s of CPU beside them",
            job.songhash,
            done["samples"] / done["rate"],
            finished - started,
            downloaded - started,
            read_s + done["read_s"],  # the first pass, here or in separate_file
            done["separate_s"],
            done["forward_s"],
            done["drain_s"],
            finished - uploading,
            done["encode_cpu_s"],
        )
        return tracks

    def _separate_part(self, job: Job, tmp: Path, progress) -> None:
        sep = self.separator(job.model)
        plan = self.jobs.plan(job.songhash)
        if plan is None or not splitting.can_split(sep) or not 0 <= job.part < len(plan["parts"]):
            raise ValueError(f"part {job.part} of a song that has no such part (or model {job.model} cannot be split)")
        source = self._download(job, tmp, progress)
        out = tmp / "part"
        forward_s = sep.forward_s
        splitting.separate_part(sep, source, plan, job.part, out, lambda f: progress("separating", f))
        forward_s = sep.forward_s - forward_s
        self.metrics.forward.inc(forward_s)
        progress("uploading", 0.0)
        self.store.put_file(storage.QUEUE_BUCKET, splitting.part_name(job.songhash, job.part), out, "application/octet-stream")
        done = self.jobs.finish_part(self.name, job, len(plan["parts"]))
        log.info(
            "job %s: part %d stored by %s (%d of %d done); forward passes %.1f s",
            job.songhash,
            job.part,
            self.name,
            max(done, 0),
            len(plan["parts"]),
            forward_s,
        )
        return None

    def _stitch(self, job: Job, tmp: Path, progress) -> list[str]:
        sep = self.separator(job.model)
        plan = self.jobs.plan(job.songhash)
        if plan is None or not splitting.can_split(sep):
            raise ValueError(f"no plan to stitch song {job.songhash} with model {job.model}")
        # Encoding alone, no model running beside it: every CPU this worker may use.
        threads = self.settings.encoder_threads or cpu_budget()
        sink = StemSink(sep, tmp, plan["samples"], plan["rate"], *output_options(job), threads)
        part = tmp / "part"

        def fetch(k: int) -> Path:
            part.unlink(missing_ok=True)  # one part on disk at a time
            self.store.get_file(storage.QUEUE_BUCKET, splitting.part_name(job.songhash, k), part)
            return part

        try:
            splitting.stitch(sep, plan, fetch, sink, lambda f: progress("stitching", f))
        finally:
            sink.close()
        self.metrics.audio.inc(plan["samples"] / plan["rate"])
        return self._upload(job, sink.paths, progress)

    def _upload(self, job: Job, stems: dict[str, Path], progress) -> list[str]:
        _, _, _, ext, content_type = audio.FORMATS[output_options(job)[0]]
        for i, (track, path) in enumerate(stems.items()):
            progress("uploading", i / len(stems))
            self.store.put_file(storage.OUTPUT_BUCKET, storage.stem_name(job.songhash, track, ext), path, content_type)
        return list(stems)

    def _remove_parts(self, job: Job) -> None:
        """A split song's parts are scratch: gone once its stems are stored or it has failed (best effort)."""
        try:
            plan = self.jobs.plan(job.songhash)
            for k in range(len(plan["parts"]) if plan else 0):
                try:
                    self.store.remove(storage.QUEUE_BUCKET, splitting.part_name(job.songhash, k))
                except storage.ObjectNotFound:
                    pass
        except (storage.StorageError, redis.RedisError) as exc:
            log.warning("job %s: could not remove its parts: %s", job.songhash, exc)

    def _fail(self, job: Job, error: str, retry: bool, charge: bool = True) -> None:
        try:
            again = self.jobs.fail(self.name, job, error, retry, charge)
        except redis.RedisError as exc:
            log.error(
                "job %s failed (%s) and redis is unreachable (%s); it stays in my processing list", job.songhash, error, exc
            )
            return
        self.metrics.jobs.labels("requeued" if again else "failed").inc()
        if again:
            log.warning("job %s: %s; requeued", job.songhash, error)
        else:
            log.error("job %s failed: %s", job.songhash, error)
            if not job.whole:
                self._remove_parts(job)
            self._call_back(job, "failed", [], error)

    def _call_back(self, job: Job, state: str, tracks: list[str], error: str | None = None) -> None:
        if not job.callback:
            return
        payload = {"hash": job.songhash, "state": state, "tracks": tracks}
        if error:
            payload["error"] = error
        self.callbacks.send(job.callback, payload)
