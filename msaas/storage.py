"""The object store: buckets `queue` and `output`, on MinIO/S3 (the minio client) or in a local directory."""

from __future__ import annotations

import errno
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from .config import Settings

QUEUE_BUCKET = "queue"
OUTPUT_BUCKET = "output"
BUCKETS = (QUEUE_BUCKET, OUTPUT_BUCKET)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
CHUNK = 1 << 20


class StorageError(RuntimeError):
    """The object store could not be reached or refused the operation."""


class StoreFull(StorageError):
    """The object store has no room for the object (a full disk, a quota)."""


class ObjectNotFound(KeyError):
    """No object of that name."""


FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# What S3 servers answer when they have no room: MinIO's full drive and S3-compatible quotas.
FULL_CODES = {"XMinioStorageFull", "XMinioAdminBucketQuotaExceeded", "QuotaExceeded", "InsufficientStorage"}


def check_name(name: str) -> str:
    if not _NAME.match(name) or ".." in name:
        raise ValueError(f"invalid object name {name!r}")
    return name


def upload_name(songhash: str, ext: str = "mp3") -> str:
    """The uploaded song, under its own format's extension (`mp3` for messages from before uploads kept theirs)."""
    return check_name(f"{songhash}.{ext}")


def stem_name(songhash: str, track: str, ext: str = "mp3") -> str:
    return check_name(f"{songhash}-{track}.{ext}")


def peaks_name(songhash: str, track: str) -> str:
    """A stem's waveform (`msaas.peaks`), beside it in the output bucket."""
    return check_name(f"{songhash}-{track}.peaks.json")


class ObjectStore(Protocol):
    def ensure_buckets(self) -> None: ...
    def put_file(self, bucket: str, name: str, path: Path, content_type: str) -> None: ...
    def get_file(self, bucket: str, name: str, path: Path) -> None: ...
    def stream(self, bucket: str, name: str) -> tuple[int, Iterator[bytes]]: ...
    def exists(self, bucket: str, name: str) -> bool: ...
    def names(self, bucket: str, prefix: str) -> Iterator[str]: ...
    def remove(self, bucket: str, name: str) -> None: ...
    def ping(self) -> None: ...


class LocalStore:
    """A directory per bucket; every write lands under a temporary name and is renamed into place."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, bucket: str, name: str) -> Path:
        if bucket not in BUCKETS:
            raise ValueError(f"unknown bucket {bucket!r}")
        return self.root / bucket / check_name(name)

    def ensure_buckets(self) -> None:
        for bucket in BUCKETS:
            (self.root / bucket).mkdir(parents=True, exist_ok=True)

    def ping(self) -> None:
        if not all((self.root / b).is_dir() for b in BUCKETS):
            raise StorageError(f"storage directory {self.root} is missing its buckets")

    def put_file(self, bucket: str, name: str, path: Path, content_type: str = "") -> None:
        target = self._path(bucket, name)
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                shutil.copyfileobj(src, out, CHUNK)
            os.replace(tmp, target)
        except OSError as exc:
            if tmp:
                Path(tmp).unlink(missing_ok=True)  # nothing half-written is left
            kind = StoreFull if exc.errno in FULL_ERRNOS else StorageError
            raise kind(f"could not write {bucket}/{name}: {exc}") from exc

    def get_file(self, bucket: str, name: str, path: Path) -> None:
        source = self._path(bucket, name)
        try:
            shutil.copyfile(source, path)
        except FileNotFoundError:
            raise ObjectNotFound(f"{bucket}/{name}") from None

    def stream(self, bucket: str, name: str) -> tuple[int, Iterator[bytes]]:
        source = self._path(bucket, name)
        try:
            handle: BinaryIO = open(source, "rb")
        except FileNotFoundError:
            raise ObjectNotFound(f"{bucket}/{name}") from None
        size = os.fstat(handle.fileno()).st_size

        def chunks() -> Iterator[bytes]:
            with handle:
                while block := handle.read(CHUNK):
                    yield block

        return size, chunks()

    def exists(self, bucket: str, name: str) -> bool:
        return self._path(bucket, name).is_file()

    def names(self, bucket: str, prefix: str) -> Iterator[str]:
        if prefix:
            check_name(prefix)
        try:
            with os.scandir(self._path(bucket, "x").parent) as entries:
                found = sorted(e.name for e in entries if e.name.startswith(prefix) and e.is_file())
        except OSError as exc:
            raise StorageError(f"could not list {bucket}: {exc}") from exc
        yield from found

    def remove(self, bucket: str, name: str) -> None:
        try:
            self._path(bucket, name).unlink()
        except FileNotFoundError:
            raise ObjectNotFound(f"{bucket}/{name}") from None


class S3Store:
    """MinIO or any S3-compatible server, through the minio client."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, secure: bool = False, retention_s: float = 0.0):
        import urllib3

        from minio import Minio

        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5, read=120),
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
            maxsize=16,
        )
        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure, http_client=http)
        self.retention_s = retention_s

    def _call(self, what: str, fn, *args, **kwargs):
        from minio.error import MinioException, S3Error
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, **kwargs)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                raise ObjectNotFound(what) from None
            if exc.code in FULL_CODES or getattr(exc.response, "status", None) == 507:
                raise StoreFull(f"object store is full: {what} refused ({exc.code})") from exc
            raise StorageError(f"object store refused {what}: {exc.code}") from exc
        except (MinioException, HTTPError, OSError) as exc:
            raise StorageError(f"object store unreachable during {what}: {exc}") from exc

    def ensure_buckets(self) -> None:
        for bucket in BUCKETS:
            if not self._call(f"bucket {bucket}", self.client.bucket_exists, bucket):
                try:
                    self._call(f"make bucket {bucket}", self.client.make_bucket, bucket)
                except StorageError:
                    if not self._call(f"bucket {bucket}", self.client.bucket_exists, bucket):
                        raise  # another component may have created it meanwhile; else a real failure
            if self.retention_s > 0:
                self._call(f"lifecycle of {bucket}", self.client.set_bucket_lifecycle, bucket, self._lifecycle())

    def _lifecycle(self):
        """A backstop for the retention sweep (retention.py), which normally removes a song first: S3 lifecycle rules
        count whole days from an object's creation, so objects go a day after RETENTION_S, rounded up to days."""
        from minio.commonconfig import ENABLED, Filter
        from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule

        days = math.ceil(self.retention_s / 86400) + 1
        rule = Rule(ENABLED, rule_filter=Filter(prefix=""), rule_id="msaas-retention", expiration=Expiration(days=days))
        return LifecycleConfig([rule])

    def ping(self) -> None:
        self._call("list buckets", self.client.list_buckets)

    def put_file(self, bucket: str, name: str, path: Path, content_type: str = "application/octet-stream") -> None:
        self._call(f"{bucket}/{name}", self.client.fput_object, bucket, check_name(name), str(path), content_type=content_type)

    def get_file(self, bucket: str, name: str, path: Path) -> None:
        self._call(f"{bucket}/{name}", self.client.fget_object, bucket, check_name(name), str(path))

    def stream(self, bucket: str, name: str) -> tuple[int, Iterator[bytes]]:
        stat = self._call(f"{bucket}/{name}", self.client.stat_object, bucket, check_name(name))
        response = self._call(f"{bucket}/{name}", self.client.get_object, bucket, name)

        def chunks() -> Iterator[bytes]:
            try:
                yield from response.stream(CHUNK)
            finally:
                response.close()
                response.release_conn()

        return stat.size, chunks()

    def exists(self, bucket: str, name: str) -> bool:
        try:
            self._call(f"{bucket}/{name}", self.client.stat_object, bucket, check_name(name))
        except ObjectNotFound:
            return False
        return True

    def names(self, bucket: str, prefix: str) -> Iterator[str]:
        listed = self._call(f"list {bucket}/{prefix}", self.client.list_objects, bucket, prefix=prefix and check_name(prefix))
        try:
            for item in listed:
                yield item.object_name
        except Exception as exc:  # the listing is lazy: errors come while iterating
            from minio.error import MinioException
            from urllib3.exceptions import HTTPError

            if isinstance(exc, MinioException | HTTPError | OSError):
                raise StorageError(f"object store unreachable while listing {bucket}/{prefix}: {exc}") from exc
            raise

    def remove(self, bucket: str, name: str) -> None:
        if not self.exists(bucket, name):
            raise ObjectNotFound(f"{bucket}/{name}")
        self._call(f"{bucket}/{name}", self.client.remove_object, bucket, name)


def remove_song(store: ObjectStore, songhash: str, buckets: tuple[str, ...] = BUCKETS) -> int:
    """Every object of one song in `buckets`: its stems and their peaks (`output/<songhash>-*`), its upload and a split
    song's parts (`queue/<songhash>.*`). Returns how many were removed."""
    prefixes = {OUTPUT_BUCKET: f"{songhash}-", QUEUE_BUCKET: f"{songhash}."}
    removed = 0
    for bucket in buckets:
        for name in list(store.names(bucket, prefixes[bucket])):
            try:
                store.remove(bucket, name)
                removed += 1
            except ObjectNotFound:
                pass
    return removed


def open_store(settings: Settings) -> ObjectStore:
    if settings.minio_host:
        return S3Store(
            settings.minio_host, settings.minio_access_key, settings.minio_secret_key, settings.minio_secure, settings.retention_s
        )
    return LocalStore(settings.storage_dir)
