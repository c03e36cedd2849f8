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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from . import audio, compat, lame, peaks, splitting, storage
from .callbacks import CallbackSender
from .config import Settings
from .jobs import Job, JobQueue, JobState, ModelDirectory, WorkerRegistry
from .metrics import WorkerMetrics
from .retention import Retention
from .separation import (
    Inference,
    ModelUnavailable,
    Separator,
    SongStream,
    StemSink,
    cpu_budget,
    load_separator,
    pick_device,
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
RECORD_RETRY_MAX_S = 5.0  # while redis is away, a job's end is recorded again at least this often
STORE_RETRY_S = (2.0, 4.0, 8.0)  # waits between tries to store a job's results
EXIT_STALLED = 3  # the worker's exit status when its watchdog found its job stalled
GRACE_LAST_RESORT_S = 15.0  # after the grace period, how long a job may take to reach its next progress report


@dataclass(frozen=True)
class Handled:
    """What handling one message came to: the song done (its tracks stored), or its work handed on (split into parts, or
    one part stored: the worker that stores the last part has queued the stitch)."""

    tracks: list[str] | None = None
    handed_on: str = ""

    @property
    def done(self) -> bool:
        return self.tracks is not None


@dataclass
class Lane:
    """A job being processed, and when its progress last moved."""

    job: Job
    moved_at: float


class GraceOver(BaseException):
    """Raised from a job's progress report once SIGTERM's grace period is over: not an error of the job's, so it is a
    BaseException that no `except Exception` on its way up can take for one."""


class ResultsNotStored(RuntimeError):
    """The object store would not take a job's results after several tries."""


GPU_JOBS_IN_FLIGHT = 4  # songs in flight on a GPU worker by default: their chunks fill its batches (JOBS_IN_FLIGHT)
MODELS_KEPT = 2  # the default model and the last other one used: each holds hundreds of MB


class Worker:
    def __init__(self, settings: Settings, client: redis.Redis, store: storage.ObjectStore, name: str | None = None):
        self.settings = settings
        self.store = store
        self.jobs = JobQueue(client, settings.job_max_attempts, settings.heartbeat_ttl_s, settings.retention_s)
        self.registry = WorkerRegistry(self.jobs)
        self.directory = ModelDirectory(client, settings.demucs_repo, settings.torch_home, settings.heartbeat_ttl_s)
        self.name = name or f"{settings.hostname}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.callbacks = CallbackSender(settings.callback_secret, settings.callback_allow_private, settings.callback_timeout_s)
        self.jobs.outbox.lease_s = 2 * settings.callback_timeout_s + 5  # a delivery held longer: its worker died sending it
        self.retention = Retention(client, store, settings.retention_s)
        self.store_retry_s = STORE_RETRY_S
        self.giving_back = threading.Lock()  # the loop and the heartbeat thread both give back jobs; one at a time
        self.separators: dict[str, Separator] = {}
        self.load_errors: dict[str, tuple[float, str]] = {}
        self.stopping = threading.Event()
        self.grace_over = threading.Event()  # SIGTERM's grace period has run out: the current job stops at its next progress
        self.outage_backoff_s = 0.0
        # The jobs being processed, by the thread of the lane running each, and when its progress last moved (the
        # watchdog's): one lane, the main thread's, unless JOBS_IN_FLIGHT asks for more.
        self.running: dict[int, Lane] = {}
        self.claiming = threading.Lock()  # lanes claim one at a time (and recover stranded jobs only when none holds one)
        self.loading = threading.Lock()  # a model is loaded once, whichever lane needs it first
        on_gpu = not settings.jobs_in_flight and pick_device(settings.device).type != "cpu"
        self.lanes = settings.jobs_in_flight or (GPU_JOBS_IN_FLIGHT if on_gpu else 1)
        self.metrics = WorkerMetrics()
        self.published: dict[str, dict] = {}

    def _moved(self, every: bool = False) -> None:
        """The calling lane's job moves (or every lane's: a model loading, which they all wait on, is not a stall)."""
        now = time.monotonic()
        for ident, lane in list(self.running.items()):
            if every or ident == threading.get_ident():
                lane.moved_at = now

    # --- models ----------------------------------------------------------------------------
    def separator(self, name: str) -> Separator:
        """Each model is loaded once per worker; a failed load is remembered for a while, not retried per job."""
        with self.loading:
            return self._separator(name)

    def _separator(self, name: str) -> Separator:
        if name in self.separators:
            self.separators[name] = self.separators.pop(name)  # most recently used last
            return self.separators[name]
        failed = self.load_errors.get(name)
        if failed and time.monotonic() - failed[0] < RETRY_LOAD_AFTER_S:
            raise ModelUnavailable(failed[1])
        log.info("loading model %s", name)
        started = time.monotonic()
        try:
            inference = Inference(self.settings.demucs_batch, self.settings.demucs_precision, self.settings.demucs_engine)
            sep = load_separator(name, self.settings.demucs_repo, self.settings.device, inference)
        except ModelUnavailable as exc:
            self.load_errors[name] = (time.monotonic(), str(exc))
            raise
        sep.warm_up()
        if self.lanes > 1:
            sep.share_batches()
        log.info("model %s loaded in %.1f s (tracks %s)", name, time.monotonic() - started, ", ".join(sep.tracks))
        while len(self.separators) >= MODELS_KEPT:
            unused = next((n for n in self.separators if n != self.settings.demucs_model), next(iter(self.separators)))
            log.info("unloading model %s", unused)
            del self.separators[unused]
        self.separators[name] = sep
        self._moved(every=True)  # a first load (a download) is not the job stalling
        self.publish_models()
        return sep

    def separator_for(self, job: Job) -> Separator:
        """The job's model; for `two_stems`, the cheaper one that gives that track exactly, where there is one (a Demucs
        bag of specialists runs only that track's: htdemucs_ft at a quarter of the forward passes)."""
        sep = self.separator(job.model)
        track = audio.OutputOptions.of(job.options).two_stems
        narrowed = sep.for_track(track) if track else None
        if narrowed is not None:
            log.info("job %s: %s runs only what weighs in %s", job.songhash, job.model, track)
        return narrowed or sep

    def publish_models(self) -> None:
        self.published = self.directory.view({name: sep.tracks for name, sep in self.separators.items()})
        self.directory.publish(self.name, self.published)

    # --- the loop --------------------------------------------------------------------------
    def _beat(self) -> None:
        """The heartbeat thread; it also gives back dead workers' jobs, watches this worker's job and sweeps expired songs.
        Nothing may end it but the worker stopping: without it, the worker would look dead while it works."""
        while not self.stopping.wait(max(1.0, self.settings.heartbeat_ttl_s / 3)):
            try:
                self.registry.heartbeat(self.name)
                self.directory.publish(self.name, self.published)  # refreshed, so it expires only with the worker
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)
                continue
            for duty in (self._requeue_orphans, self._watchdog, self.retention.sweep):
                try:
                    duty()
                except (redis.RedisError, storage.StorageError) as exc:
                    log.warning("%s failed: %s", duty.__name__.strip("_"), exc)
                except Exception:
                    log.exception("%s failed", duty.__name__.strip("_"))

    def _watchdog(self) -> None:
        """The heartbeat says the process lives; this says its job moves. A job whose progress has not moved for
        JOB_STALL_S is given back (the attempt counts) and the process exits, to be restarted (by Kubernetes, or
        `msaas up`): a thread stuck in native code cannot be stopped any other way."""
        now, limit = time.monotonic(), self.settings.job_stall_s
        if not limit:
            return
        stalled = [(lane.job, now - lane.moved_at) for lane in list(self.running.values()) if now - lane.moved_at >= limit]
        if not stalled:
            return
        for job, still_s in stalled:
            log.error("job %s: no progress for %.0f s; giving it back and restarting this worker", job.songhash, still_s)
            with self.giving_back:
                requeued = self.jobs.give_back(self.name, job, refund=False, why=f"no progress for {still_s:.0f} s")
            self._given_back([(job, requeued)])
        self.registry.retire(self.name)  # the other lanes' jobs go back too, their attempts refunded
        logging.shutdown()
        os._exit(EXIT_STALLED)

    def _requeue_orphans(self) -> None:
        with self.giving_back:
            given = self.registry.requeue_orphans(self.name)
        self._given_back(given)

    def _given_back(self, given: list[tuple[Job, bool]]) -> None:
        for job, requeued in given:
            self.metrics.jobs.labels("requeued" if requeued else "failed").inc()
            if not requeued:
                log.error("job %s failed: its attempts are spent", job.songhash)
                self._song_ended(job)

    def deliver_callbacks(self, stop: threading.Event, poll_s: float = 0.5) -> None:
        """Send the callbacks that are due, whichever worker's jobs they are for, until `stop` is set."""
        while not stop.is_set():
            try:
                if self.jobs.outbox.deliver_due(self.callbacks.post):
                    continue
            except redis.RedisError as exc:
                log.warning("callbacks wait for redis: %s", exc)
                stop.wait(5)
            stop.wait(poll_s)

    def start_callbacks(self) -> Callable[[], None]:
        """Deliver callbacks in a thread; returns what stops it (after the delivery under way, if any)."""
        stop = threading.Event()
        thread = threading.Thread(target=self.deliver_callbacks, args=(stop,), daemon=True, name="callbacks")
        thread.start()

        def stopped() -> None:
            stop.set()
            thread.join(2 * self.settings.callback_timeout_s + 1)

        return stopped

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
        """The job's next progress report ends it (GraceOver) and it goes back to the queue, its attempt refunded. Only if
        none comes within GRACE_LAST_RESORT_S (a stuck download, say) is the main thread interrupted wherever it is."""
        if not self.running:
            return
        log.warning("worker %s: grace period over; putting the current job(s) back in the queue", self.name)
        self.grace_over.set()
        timer = threading.Timer(GRACE_LAST_RESORT_S, self._interrupt_if_still_busy)
        timer.daemon = True
        timer.start()

    def _interrupt_if_still_busy(self) -> None:
        if not self.running:
            return
        log.warning("worker %s: the job did not stop at its progress; interrupting it", self.name)
        if self.lanes == 1:
            _thread.interrupt_main()  # KeyboardInterrupt in the loop; run() then retires, requeueing the job
        else:  # lanes are threads, which nothing can interrupt: every job goes back, and the process ends
            self.registry.retire(self.name)
            logging.shutdown()
            os._exit(0)

    def run(self, preload: bool = True) -> None:
        import torch

        torch.set_num_threads(torch_threads(self.settings.torch_threads, self.settings.device))
        self._wait_for_backends()
        self.registry.heartbeat(self.name)
        threading.Thread(target=self._beat, daemon=True, name="heartbeat").start()
        stop_callbacks = self.start_callbacks()
        if self.settings.metrics_port:
            try:
                self.metrics.serve(self.settings.metrics_port)
            except OSError as exc:  # a second worker on one machine: the port is taken; metrics are not worth dying for
                log.warning("no metrics on port %d: %s", self.settings.metrics_port, exc)
        log.info(
            "worker %s ready: model %s, %d torch threads, %d song(s) in flight at once",
            self.name,
            self.settings.demucs_model,
            torch.get_num_threads(),
            self.lanes,
        )
        (log.info if lame.available() else log.warning)(lame.describe())
        for usual, line in compat.describe():
            (log.info if usual else log.warning)(line)
        self.publish_models()
        if preload:
            try:
                self.separator(self.settings.demucs_model)
            except ModelUnavailable as exc:
                log.error("default model unavailable: %s", exc)
        lanes = [threading.Thread(target=self._lane, daemon=True, name=f"lane-{k}") for k in range(1, self.lanes)]
        try:
            for lane in lanes:
                lane.start()
            self._lane()
        except BaseException:  # interrupted (Ctrl-C): the other lanes put their jobs back at their next progress
            self.grace_over.set()
            raise
        finally:
            self.stopping.set()
            for lane in lanes:  # each finishes its job, or puts it back once the grace is over
                lane.join()
            stop_callbacks()  # a delivery cut off falls due again, for another worker, when its lease ends
            try:
                with self.giving_back:
                    moved = self.registry.retire(self.name)
                if moved:
                    log.info("put %d unfinished job(s) back in the queue", moved)
            except redis.RedisError as exc:
                log.warning("could not retire cleanly (%s); another worker will requeue my jobs", exc)

    def _lane(self) -> None:
        """Claim a job, process it, again, until the worker stops; several of these run at once with JOBS_IN_FLIGHT."""
        backoff = 1.0
        while not self.stopping.is_set():
            try:
                with self.claiming:
                    if not self.running:  # no lane holds a job: whatever this worker holds is stranded
                        self._recover_stranded()
                    self._requeue_orphans()
                    job = self.jobs.claim(self.name, timeout_s=2)
                    if job is not None:
                        self.running[threading.get_ident()] = Lane(job, time.monotonic())
                backoff = 1.0
            except redis.RedisError as exc:
                log.warning("redis unavailable (%s); retrying in %.0f s", exc, backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 30)
                continue
            if job is not None:
                self.process(job)

    def _recover_stranded(self) -> None:
        """Between jobs this worker holds none: whatever is in its processing list is a job whose end could not be recorded
        (redis went away at that moment), given back now that redis answers."""
        with self.giving_back:
            given = self.jobs.recover(self.name, why="its worker lost redis")
        if given:
            log.warning("gave back %d job(s) whose end could not be recorded", len(given))
            self._given_back(given)

    def _wait_for_backends(self) -> None:
        delay = 1.0
        while True:
            try:
                self.jobs.ping()
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
        self.running[threading.get_ident()] = Lane(job, time.monotonic())
        try:
            self._process(job)
        finally:
            del self.running[threading.get_ident()]

    def _process(self, job: Job) -> None:
        started = time.monotonic()
        if not job.whole and (self.jobs.status(job.songhash) or {}).get("state") != JobState.RUNNING:
            log.info("job %s has ended; dropping its %s", job.songhash, "stitch" if job.stitch else f"part {job.part}")
            self.jobs.drop(self.name, job)
            return
        what = "stitching its parts" if job.stitch else "separating" + (f" part {job.part}" if job.part is not None else "")
        log.info("job %s: %s with %s", job.songhash, what, job.model)
        last = [0.0, ""]
        unrecorded = [False]

        def progress(stage: str, fraction: float) -> None:
            if self.grace_over.is_set():
                raise GraceOver
            now = time.monotonic()
            self._moved()
            if stage == last[1] and now - last[0] < 0.5 and fraction < 1.0:
                return
            last[:] = [now, stage]
            lo, hi = STAGES[stage]
            try:
                self.jobs.progress(job, stage, lo + (hi - lo) * fraction)
            except redis.RedisError as exc:  # the job goes on; its end is recorded once redis answers again
                if not unrecorded[0]:
                    log.warning("job %s: progress not recorded (%s); the separation goes on", job.songhash, exc)
                unrecorded[0] = True

        handler = self._separate_part if job.part is not None else self._stitch if job.stitch else self._separate
        try:
            with tempfile.TemporaryDirectory(prefix="msaas-job-") as tmp:
                handled = handler(job, Path(tmp), progress)
        except GraceOver:
            self._record(self.jobs.give_back, self.name, job, True)
            log.info("job %s: put back in the queue (the worker is stopping)", job.songhash)
            return
        except (ModelUnavailable, audio.SongRejected) as exc:  # trying again would fail the same way
            self._fail(job, str(exc), retry=False)
            return
        except storage.ObjectNotFound:
            self._fail(job, "the uploaded song is no longer in the object store; upload it again", retry=False)
            return
        except ResultsNotStored as exc:
            # The store refuses what the job made (full, read-only): that attempt is spent, so this cannot loop forever.
            self._fail(job, str(exc), retry=True)
            self._back_off()
            return
        except (storage.StorageError, redis.RedisError) as exc:
            # An outage before anything was made is not the song's fault: put the job back without spending an attempt.
            # The status says what happened, not where (the details, host names included, go to the log only).
            log.warning("job %s: %s: %s", job.songhash, exc.__class__.__name__, exc)
            backend = "the object store" if isinstance(exc, storage.StorageError) else "the job queue (redis)"
            self._fail(job, f"{backend} was unavailable; the job waits for it", retry=True, charge=False)
            self._back_off()
            return
        except Exception as exc:  # out of memory, a bug: retried up to JOB_MAX_ATTEMPTS
            log.exception("job %s: separation failed", job.songhash)
            self._fail(job, f"the separation failed ({exc.__class__.__name__}); see the worker's log", retry=True)
            return
        self.outage_backoff_s = 0.0
        if not handled.done:
            return
        tracks = handled.tracks
        self._record(self.jobs.finish, self.name, job, tracks)
        self._song_ended(job)
        self.metrics.jobs.labels("done").inc()
        self.metrics.seconds.observe(time.monotonic() - started)
        log.info("job %s: done in %.1f s, tracks %s", job.songhash, time.monotonic() - started, ", ".join(tracks))

    def _back_off(self) -> None:
        self.outage_backoff_s = min(max(1.0, self.outage_backoff_s * 2), 60.0)
        log.warning("backend unavailable; next job in %.0f s", self.outage_backoff_s)
        self.stopping.wait(self.outage_backoff_s)

    def _record(self, write, *args):
        """Record a job's outcome, however long redis is away: the work is done and must not be lost. If the worker is
        killed meanwhile, the message is still in its processing list and another worker gives it back."""
        delay = 0.5
        while True:
            try:
                return write(*args)
            except redis.RedisError as exc:
                log.warning("redis unavailable (%s); recording the job's end again in %.0f s", exc, delay)
                time.sleep(delay)
                self._moved()  # waiting for redis is not the job stalling
                delay = min(delay * 2, RECORD_RETRY_MAX_S)

    def _download(self, job: Job, tmp: Path, progress) -> Path:
        progress("downloading", 0.0)
        source = tmp / "song"
        self.store.get_file(storage.QUEUE_BUCKET, storage.upload_name(job.songhash, job.upload), source)
        return source

    def _separate(self, job: Job, tmp: Path, progress) -> Handled:
        """A whole song: separated here, or split into parts for the live workers."""
        sep = self.separator_for(job)
        started = time.perf_counter()
        source = self._download(job, tmp, progress)
        downloaded = time.perf_counter()
        workers = self.registry.live_workers() if sep.can_split and self.settings.split_over_s > 0 else 1
        song, read_s = None, 0.0
        if workers > 1:  # only then is the song's length needed before separating: read once, for the split or not
            progress("decoding", 0.0)
            song = SongStream(source, sep.samplerate, self.settings.max_duration_s)
            read_s = time.perf_counter() - downloaded
            seconds = song.samples / song.rate
            parts = splitting.parts_for(seconds, self.settings.split_over_s, self.settings.split_max_parts, workers)
            if parts > 1:
                plan = splitting.make_plan(sep, song, parts)
                self._record(self.jobs.splits.split, self.name, job, plan)
                log.info("job %s: %.0f s of song, split into %d parts for the workers", job.songhash, seconds, parts)
                return Handled(handed_on=f"split into {parts} parts")
        report = separate_file(
            sep,
            source,
            tmp,
            audio.OutputOptions.of(job.options),
            max_duration_s=self.settings.max_duration_s,
            progress=progress,
            encoder_threads=self._encoder_threads(),
            song=song,
        )
        self.metrics.audio.inc(report.seconds)
        self.metrics.forward.inc(report.forward_s)
        uploading = time.perf_counter()
        tracks = self._upload(job, report.stems, progress)
        finished = time.perf_counter()
        log.info(
            "job %s: %.1f s of song in %.1f s: download %.1f s, read %.1f s, separation %.1f s (forward passes %.1f s), "
            "encoders' drain %.1f s, upload %.1f s; encoding %.1f s of CPU beside them",
            job.songhash,
            report.seconds,
            finished - started,
            downloaded - started,
            read_s + report.read_s,  # the first pass, here or in separate_file
            report.separate_s,
            report.forward_s,
            report.drain_s,
            finished - uploading,
            report.encode_cpu_s,
        )
        return Handled(tracks)

    def _encoder_threads(self) -> int:
        """ENCODER_THREADS; unset, with several songs in flight, each song's share of the CPUs (0: one song, whose
        encoders `encoding_threads` sizes)."""
        if self.settings.encoder_threads or self.lanes == 1:
            return self.settings.encoder_threads
        return max(1, cpu_budget() // self.lanes)

    def _separate_part(self, job: Job, tmp: Path, progress) -> Handled:
        sep = self.separator_for(job)
        plan = self.jobs.splits.plan(job.songhash)
        if plan is None or not sep.can_split or not 0 <= job.part < len(plan["parts"]):
            raise audio.SongRejected(f"part {job.part} of a song that has no such part (or model {job.model} cannot be split)")
        source = self._download(job, tmp, progress)
        out = tmp / "part"
        forward_s = sep.forward_s
        splitting.separate_part(sep, source, plan, job.part, out, lambda f: progress("separating", f))
        forward_s = sep.forward_s - forward_s
        self.metrics.forward.inc(forward_s)
        progress("uploading", 0.0)
        self._store_result(storage.QUEUE_BUCKET, splitting.part_name(job.songhash, job.part), out, "application/octet-stream")
        done = self._record(self.jobs.splits.finish_part, self.name, job, len(plan["parts"]))
        log.info(
            "job %s: part %d stored by %s (%d of %d done); forward passes %.1f s",
            job.songhash,
            job.part,
            self.name,
            max(done, 0),
            len(plan["parts"]),
            forward_s,
        )
        return Handled(handed_on=f"part {job.part} stored")

    def _stitch(self, job: Job, tmp: Path, progress) -> Handled:
        sep = self.separator_for(job)
        plan = self.jobs.splits.plan(job.songhash)
        if plan is None or not sep.can_split:
            raise audio.SongRejected(f"no plan to stitch song {job.songhash} with model {job.model}")
        # Encoding alone, no model running beside it: every CPU this worker may use.
        threads = self._encoder_threads() or cpu_budget()
        sink = StemSink(sep, tmp, plan["samples"], plan["rate"], audio.OutputOptions.of(job.options), threads)
        part = tmp / "part"

        def fetch(k: int) -> Path:
            part.unlink(missing_ok=True)  # one part on disk at a time
            self.store.get_file(storage.QUEUE_BUCKET, splitting.part_name(job.songhash, k), part)
            return part

        try:
            splitting.stitch(sep, plan, fetch, sink, lambda f: progress("stitching", f))
        except BaseException:
            sink.close(abandon=True)
            raise
        sink.close()
        self.metrics.audio.inc(plan["samples"] / plan["rate"])
        return Handled(self._upload(job, sink.paths, progress))

    def _upload(self, job: Job, stems: dict[str, Path], progress) -> list[str]:
        form = audio.OutputOptions.of(job.options).file_format
        for i, (track, path) in enumerate(stems.items()):
            progress("uploading", i / len(stems))
            waveform = peaks.path_for(path)
            if waveform.exists():  # written by the encoders; before the stem, so a stored stem has its peaks
                self._store_result(storage.OUTPUT_BUCKET, storage.peaks_name(job.songhash, track), waveform, "application/json")
            self._store_result(storage.OUTPUT_BUCKET, storage.stem_name(job.songhash, track, form.ext), path, form.content_type)
        return list(stems)

    def _store_result(self, bucket: str, name: str, path: Path, content_type: str) -> None:
        """Put what a job made, tried a few times with backoff (the separation is not redone for a blip); then the attempt
        is spent (ResultsNotStored), so a full or read-only store fails jobs after JOB_MAX_ATTEMPTS instead of looping."""
        for delay in (*self.store_retry_s, None):
            try:
                self.store.put_file(bucket, name, path, content_type)
                return
            except storage.StorageError as exc:
                if delay is None:
                    kind = "it is full" if isinstance(exc, storage.StoreFull) else "it refused them or did not answer"
                    raise ResultsNotStored(f"the object store did not take the results: {kind}") from exc
                log.warning("could not store %s/%s (%s); trying again in %.0f s", bucket, name, exc, delay)
                time.sleep(delay)

    def _fail(self, job: Job, error: str, retry: bool, charge: bool = True) -> None:
        again = self._record(self.jobs.fail, self.name, job, error, retry, charge)
        self.metrics.jobs.labels("requeued" if again else "failed").inc()
        if again:
            log.warning("job %s: %s; requeued", job.songhash, error)
        else:
            log.error("job %s failed: %s", job.songhash, error)
            self._song_ended(job)

    def _song_ended(self, job: Job) -> None:
        """The song's job has ended (done or failed for good): its upload and a split song's parts are scratch now."""
        names = [storage.upload_name(job.songhash, job.upload)]
        if not job.whole:
            try:
                plan = self.jobs.splits.plan(job.songhash)
            except redis.RedisError:
                plan = None
            names += [splitting.part_name(job.songhash, k) for k in range(len(plan["parts"]) if plan else 0)]
        for name in names:
            try:
                self.store.remove(storage.QUEUE_BUCKET, name)
            except storage.ObjectNotFound:
                pass
            except storage.StorageError as exc:  # the retention sweep removes it later
                log.warning("job %s: could not remove %s: %s", job.songhash, name, exc)
