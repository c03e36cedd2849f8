"""Long songs across workers: parts separated apart and stitched give the stems of the whole song."""

import re

import julius
import numpy as np
import pytest
import torch
from demucs.apply import TensorChunk

from conftest import TINY, make_song, msaas_process, start_rest, wait_until
from msaas import audio, keys
from msaas.jobs import JobQueue, WorkerRegistry
from msaas.separation import SongStream, StemSink, load_separator, separate_all, separate_file
from msaas.separation.demucs import Window
from msaas.splitting import make_plan, parts_for, separate_part, stitch


@pytest.fixture(scope="module")
def tiny(tiny_repo):
    return load_separator(TINY, tiny_repo, "cpu")


class Collect:
    def __init__(self):
        self.blocks = []

    def put(self, block):
        self.blocks.append(block.clone())

    def finish(self):
        pass


def error_db(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * np.log10(float(((a - b) ** 2).sum()) / float((b**2).sum()) + 1e-30)


@pytest.mark.parametrize("parts", [2, 3, 5])
def test_parts_stitched_equal_the_whole_song(tiny, tmp_path, parts):
    song = make_song(tmp_path / "song.mp3", seconds=31.7, seed=3)
    plan = make_plan(tiny, SongStream(song, tiny.samplerate), parts)
    assert len(plan["parts"]) == parts
    files = []
    for k in range(parts):
        files.append(tmp_path / f"part{k}.f32")
        seen = []
        separate_part(tiny, song, plan, k, files[-1], seen.append)
        assert seen[-1] == 1.0
    got = Collect()
    stitch(tiny, plan, lambda k: files[k], got)
    stitched = torch.cat(got.blocks, dim=-1)
    unsplit = Collect()
    tiny.stream_song(SongStream(song, tiny.samplerate), unsplit.put)
    assert torch.equal(stitched, torch.cat(unsplit.blocks, dim=-1))  # the sums are taken in the same order
    whole = separate_all(tiny, torch.from_numpy(audio.decode(song)[0]))  # demucs' own way, the song held whole
    assert stitched.shape == whole.shape
    assert error_db(stitched, whole) < -60


def test_stitched_stems_are_the_unsplit_files(tiny, tmp_path):
    song = make_song(tmp_path / "song.wav", seconds=20.3, rate=48000, seed=5, fmt="wav")  # through both resamplers
    (tmp_path / "whole").mkdir()
    (tmp_path / "split").mkdir()
    whole = separate_file(tiny, song, tmp_path / "whole", audio.OutputOptions("flac")).stems
    plan = make_plan(tiny, SongStream(song, tiny.samplerate), 2)
    for k in range(2):
        separate_part(tiny, song, plan, k, tmp_path / f"p{k}", lambda f: None)
    sink = StemSink(tiny, tmp_path / "split", plan["samples"], plan["rate"], audio.OutputOptions("flac"))
    try:
        stitch(tiny, plan, lambda k: tmp_path / f"p{k}", sink)
    finally:
        sink.close()
    for track, path in whole.items():
        a, b = audio.decode(sink.paths[track])[0], audio.decode(path)[0]
        assert a.shape == b.shape == (2, int(20.3 * 48000))
        assert error_db(torch.from_numpy(a), torch.from_numpy(b)) < -60


def test_a_cut_short_part_is_refused(tiny, tmp_path):
    song = make_song(tmp_path / "song.mp3", seconds=20, seed=1)
    plan = make_plan(tiny, SongStream(song, tiny.samplerate), 2)
    for k in range(2):
        separate_part(tiny, song, plan, k, tmp_path / f"p{k}", lambda f: None)
    data = (tmp_path / "p1").read_bytes()
    (tmp_path / "p1").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="expected"):
        stitch(tiny, plan, lambda k: tmp_path / f"p{k}", Collect())


@pytest.mark.parametrize("rate", [44100, 48000])
def test_a_song_read_block_by_block_gives_demucs_chunks_in_little_memory(tiny, tmp_path, rate):
    path = make_song(tmp_path / "song.wav", seconds=47.3, rate=rate, seed=4, fmt="wav")
    song = SongStream(path, tiny.samplerate)
    mix = torch.from_numpy(audio.decode(path)[0])
    if rate != tiny.samplerate:
        mix = julius.resample_frac(mix, rate, tiny.samplerate)
    assert (song.samples, song.rate, song.length) == (mix.shape[-1] if rate == 44100 else int(47.3 * rate), rate, mix.shape[-1])
    ref = mix.mean(0)
    assert song.mean == pytest.approx(float(ref.mean()), abs=1e-6) and song.std == pytest.approx(float(ref.std()), rel=1e-5)
    plan = tiny.chunk_plan(song.length)
    window = Window(song.blocks(), song.mean, song.std)
    held = (mix - song.mean) / song.std
    for offset in plan.offsets:
        got, expected = window(offset, plan.segment_length), TensorChunk(held[None], offset, plan.segment_length)
        assert got.length == expected.length
        assert torch.allclose(got.padded(plan.segment_length), expected.padded(plan.segment_length), atol=1e-5)
    assert window.most <= 2 * plan.segment_length + 8192  # a segment back, the chunk, a block: not the song


@pytest.mark.parametrize(
    ("seconds", "over", "workers", "expected"),
    [(600, 240, 2, 2), (600, 240, 10, 5), (600, 240, 1, 1), (200, 240, 4, 1), (600, 0, 4, 1), (250, 240, 8, 2)],
)
def test_how_many_parts(seconds, over, workers, expected):
    assert parts_for(seconds, over, 8, workers) == expected


# --- through the service: real rest, real workers, the bundled redis-server ---------------------------------
def stored_by(redis_client, songhash) -> dict[int, str]:
    found = {}
    for line in redis_client.lrange(keys.LOGGING, 0, -1):
        if m := re.search(rf"job {songhash}: part (\d+) stored by (\S+)", line):
            found[int(m[1])] = m[2]
    return found


def unsplit_stems(tiny, song, tmp_path) -> dict[str, np.ndarray]:
    (tmp_path / "unsplit").mkdir()
    return {
        t: audio.decode(p)[0]
        for t, p in separate_file(tiny, song, tmp_path / "unsplit", audio.OutputOptions("wav")).stems.items()
    }


@pytest.mark.slow
def test_a_long_song_is_split_across_two_workers_and_stitched(tiny, settings, redis_client, processes, tmp_path):
    settings = settings.with_(split_over_s=10)
    client = start_rest(settings, processes)
    song = make_song(tmp_path / "long.mp3", seconds=30, seed=11)
    processes.extend(msaas_process("worker", settings) for _ in range(2))
    wait_until(lambda: WorkerRegistry(JobQueue(redis_client)).live_workers() == 2, what="two live workers")
    h = client.submit(song, format="wav")["hash"]
    status = wait_until(lambda: (s := client.status(h))["state"] in ("done", "failed") and s, what="the job to end")
    assert status["state"] == "done", status
    assert status["parts"] == 2 and status["tracks"] == ["drums", "bass", "other", "vocals"]
    workers = stored_by(redis_client, h)
    assert sorted(workers) == [0, 1] and workers[0] != workers[1]  # two workers, one part each
    expected = unsplit_stems(tiny, song, tmp_path)
    for track in status["tracks"]:
        path = settings.storage_dir / "output" / f"{h}-{track}.wav"
        got = audio.decode(path)[0]
        assert got.shape == expected[track].shape
        assert error_db(torch.from_numpy(got), torch.from_numpy(expected[track])) < -60
    assert list((settings.storage_dir / "queue").iterdir()) == []  # no part, and the upload is gone once the job ended
    assert not redis_client.exists(keys.parts_key(h))


@pytest.mark.slow
def test_a_worker_killed_during_its_part_loses_nothing(tiny, settings, redis_client, processes, tmp_path):
    settings = settings.with_(split_over_s=10, heartbeat_ttl_s=2)
    client = start_rest(settings, processes)
    song = make_song(tmp_path / "long.mp3", seconds=40, seed=12)
    doomed, survivor = msaas_process("worker", settings), msaas_process("worker", settings)
    processes.extend([doomed, survivor])
    wait_until(lambda: WorkerRegistry(JobQueue(redis_client)).live_workers() == 2, what="two live workers")
    h = client.submit(song, format="wav")["hash"]

    def holds_a_part():
        name = worker_of(redis_client, doomed.pid)
        return name and any('"part"' in m for m in redis_client.lrange(keys.processing_key(name), 0, -1))

    wait_until(holds_a_part, what="the doomed worker to take a part")
    wait_until(lambda: client.status(h).get("parts"), what="the split")
    doomed.kill()
    doomed.wait()
    status = wait_until(
        lambda: (s := client.status(h))["state"] in ("done", "failed") and s, timeout_s=180, what="the job to end"
    )
    assert status["state"] == "done", status
    record = redis_client.hgetall(keys.job_key(h))
    assert sorted(int(v) for k, v in record.items() if k.startswith("attempts.part")) == [1, 2]  # the lost part, rerun
    expected = unsplit_stems(tiny, song, tmp_path)
    for track in status["tracks"]:
        got = audio.decode(settings.storage_dir / "output" / f"{h}-{track}.wav")[0]
        assert error_db(torch.from_numpy(got), torch.from_numpy(expected[track])) < -60
    assert redis_client.llen(keys.QUEUE) == 0


def worker_of(redis_client, pid: int) -> str | None:
    return next((w for w in redis_client.smembers(keys.WORKERS) if f"-{pid}-" in w), None)


@pytest.mark.slow
def test_a_worker_killed_while_stitching_loses_nothing(tiny, settings, redis_client, processes, tmp_path):
    settings = settings.with_(split_over_s=10, heartbeat_ttl_s=2)
    client = start_rest(settings, processes)
    song = make_song(tmp_path / "long.mp3", seconds=58, seed=13)
    workers = {w.pid: w for w in (msaas_process("worker", settings), msaas_process("worker", settings))}
    processes.extend(workers.values())
    wait_until(lambda: WorkerRegistry(JobQueue(redis_client)).live_workers() == 2, what="two live workers")
    h = client.submit(song)["hash"]  # MP3 stems: encoding them makes the stitch last long enough to be cut off

    def stitcher() -> int | None:
        """The worker holding the stitch, once the stitch has read its first part (progress past the stitching stage's
        start): killed then, a stitch that consumed what it read could not be done again."""
        if float(redis_client.hget(keys.job_key(h), "progress") or 0) <= 0.9:
            return None
        for name in redis_client.smembers(keys.WORKERS):
            if any('"stitch": true' in m for m in redis_client.lrange(keys.processing_key(name), 0, -1)):
                return next(pid for pid in workers if f"-{pid}-" in name)
        return None

    pid = wait_until(stitcher, timeout_s=180, what="a worker to be stitching")
    workers[pid].kill()
    workers[pid].wait()
    status = wait_until(lambda: (s := client.status(h))["state"] in ("done", "failed") and s, 180, "the job to end")
    assert status["state"] == "done", status
    assert int(redis_client.hget(keys.job_key(h), "attempts.stitch")) == 2  # cut off once, done by the other worker
    samples = audio.probe(song).samples
    for track in status["tracks"]:
        assert audio.probe(settings.storage_dir / "output" / f"{h}-{track}.mp3").samples == samples
    assert list((settings.storage_dir / "queue").iterdir()) == [] and redis_client.llen(keys.QUEUE) == 0
