"""Both object-store backends, the S3 one against a real S3-compatible server (moto_server)."""

import pytest

from msaas import storage


def test_put_then_get_stream_and_remove(store, tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(b"x" * 3_000_000)
    store.put_file(storage.OUTPUT_BUCKET, "abc-vocals.mp3", src, "audio/mpeg")
    assert store.exists(storage.OUTPUT_BUCKET, "abc-vocals.mp3")
    size, chunks = store.stream(storage.OUTPUT_BUCKET, "abc-vocals.mp3")
    assert size == 3_000_000 and b"".join(chunks) == src.read_bytes()
    store.get_file(storage.OUTPUT_BUCKET, "abc-vocals.mp3", tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
    store.remove(storage.OUTPUT_BUCKET, "abc-vocals.mp3")
    assert not store.exists(storage.OUTPUT_BUCKET, "abc-vocals.mp3")


def test_missing_objects_raise_not_found(store, tmp_path):
    with pytest.raises(storage.ObjectNotFound):
        store.stream(storage.QUEUE_BUCKET, "nothing.mp3")
    with pytest.raises(storage.ObjectNotFound):
        store.get_file(storage.QUEUE_BUCKET, "nothing.mp3", tmp_path / "x")
    with pytest.raises(storage.ObjectNotFound):
        store.remove(storage.QUEUE_BUCKET, "nothing.mp3")


def test_ensure_buckets_is_idempotent(store):
    store.ensure_buckets()
    store.ensure_buckets()
    store.ping()


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b.mp3", "", ".hidden", "x\x00.mp3", "a..b"])
def test_path_tricks_in_names_are_refused(store, tmp_path, name):
    (tmp_path / "f").write_bytes(b"1")
    with pytest.raises(ValueError):
        store.put_file(storage.QUEUE_BUCKET, name, tmp_path / "f", "")


def test_local_writes_appear_whole_or_not_at_all(tmp_path):
    st = storage.LocalStore(tmp_path)
    st.ensure_buckets()
    (tmp_path / "f").write_bytes(b"song")
    st.put_file(storage.QUEUE_BUCKET, "h.mp3", tmp_path / "f")
    assert sorted(p.name for p in (tmp_path / "queue").iterdir()) == ["h.mp3"]  # no partial file left


def test_unreachable_s3_server_is_a_storage_error(tmp_path):
    from conftest import free_port

    st = storage.S3Store(f"127.0.0.1:{free_port()}", "a", "b")
    with pytest.raises(storage.StorageError):
        st.ensure_buckets()


def test_open_store_picks_the_backend_from_settings(tmp_path):
    from msaas.config import Settings

    assert isinstance(storage.open_store(Settings(storage_dir=tmp_path)), storage.LocalStore)
    assert isinstance(storage.open_store(Settings(minio_host="minio:9000")), storage.S3Store)


def test_names_lists_the_objects_that_start_with_a_prefix(store, tmp_path):
    src = tmp_path / "x"
    src.write_bytes(b"abc")
    for name in ("h-vocals.mp3", "h-drums.mp3", "g-vocals.mp3"):
        store.put_file(storage.OUTPUT_BUCKET, name, src, "audio/mpeg")
    assert sorted(store.names(storage.OUTPUT_BUCKET, "h-")) == ["h-drums.mp3", "h-vocals.mp3"]
    assert list(store.names(storage.QUEUE_BUCKET, "h")) == []


def test_s3_buckets_get_a_lifecycle_rule_a_day_past_the_retention(s3_endpoint):
    st = storage.S3Store(s3_endpoint, "testing", "testing", retention_s=2.5 * 86400)
    st.ensure_buckets()
    for bucket in storage.BUCKETS:
        (rule,) = st.client.get_bucket_lifecycle(bucket).rules
        assert rule.expiration.days == 4 and rule.status == "Enabled"


def test_s3_objects_keep_the_content_type_they_were_stored_with(s3_endpoint, tmp_path):
    st = storage.S3Store(s3_endpoint, "testing", "testing")
    st.ensure_buckets()
    song = tmp_path / "song"
    song.write_bytes(b"fLaC and more")
    st.put_file(storage.QUEUE_BUCKET, "h.flac", song, "audio/flac")
    assert st.client.stat_object(storage.QUEUE_BUCKET, "h.flac").content_type == "audio/flac"
