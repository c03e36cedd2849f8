"""Every environment variable MSaaS reads is read here, once, into a frozen Settings."""

from __future__ import annotations

import base64
import binascii
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlparse


class ConfigError(ValueError):
    """A setting has a value MSaaS cannot use."""


def _port(value: str, name: str) -> int:
    # Kubernetes injects REDIS_PORT=tcp://10.x.y.z:6379 when a Service named redis exists.
    if "://" in value:
        value = value.rsplit(":", 1)[-1]
    try:
        port = int(value)
    except ValueError:
        raise ConfigError(f"{name} must be a port number, not {value!r}") from None
    if not 0 < port < 65536:
        raise ConfigError(f"{name} must be between 1 and 65535, not {port}")
    return port


def _flag(value: str | None, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {raw!r}") from None


def _callback_secret(value: str | None) -> str | None:
    """A Standard Webhooks secret: `whsec_` and base64 of at least 16 bytes; anything else stops the component at start."""
    if not value:
        return None
    try:
        key = base64.b64decode(value.strip().removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) < 16:
        raise ConfigError(
            "CALLBACK_SECRET must be whsec_ followed by base64 of at least 16 bytes, e.g. whsec_$(openssl rand -base64 24)"
        )
    return value.strip()


def _rate_limit(value: str | None) -> str | None:
    """flask-limiter's syntax, checked here so that a typo stops rest at start rather than at the first upload."""
    if not value or not value.strip():
        return None
    from limits import parse_many

    try:
        parse_many(value)
    except ValueError:
        raise ConfigError(f"RATE_LIMIT must be like 30/minute;500/day, not {value!r}") from None
    return value.strip()


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://localhost:6379/0"
    minio_host: str | None = None
    minio_access_key: str = "rootuser"
    minio_secret_key: str = "rootpass123"
    minio_secure: bool = False
    storage_dir: Path = Path("var/storage")
    demucs_model: str = "htdemucs"
    demucs_repo: Path | None = None
    port: int = 5000
    max_upload_bytes: int = 100 * 1024 * 1024
    max_duration_s: float = 30 * 60.0
    callback_secret: str | None = None
    callback_allow_private: bool = False
    callback_timeout_s: float = 10.0
    job_max_attempts: int = 3
    heartbeat_ttl_s: int = 30
    device: str = "auto"
    torch_threads: int = 0  # 0: as many as the CPUs this process may use
    encoder_threads: int = 0  # stems' encoders; 0: one per stem beside a model on the CPU, every CPU beside one on a GPU
    hostname: str = field(default_factory=socket.gethostname)
    log_level: str = "INFO"
    log_stdout: bool = True  # off under `msaas up`, where the logs tail prints every line once
    api_keys: tuple[str, ...] = ()  # when set, /apiv1 wants `Authorization: Bearer <key>`
    worker_grace_s: float = 270.0  # after SIGTERM, how long the current job may run before it is put back
    metrics_port: int = 9100  # a worker's Prometheus metrics; 0: none
    torch_home: Path | None = None  # torch.hub's cache root (TORCH_HOME), where downloaded Demucs weights are found
    split_over_s: float = 240.0  # songs longer than this are split across the live workers; 0: never split
    split_max_parts: int = 8  # at most this many parts per song (each part is at least split_over_s / 2 long)
    retention_s: float = 7 * 86400.0  # a song's stems and record are removed this long after its job ended; 0: kept
    job_stall_s: float = 900.0  # a job whose progress has not moved this long is given back; 0: never
    max_sample_rate: int = 192_000  # songs above this rate are refused
    max_stems_bytes: int = 2048 * 1024 * 1024  # songs whose stems would take more than this are refused
    max_uploads: int = 4  # uploads one rest process takes at once; more get 503 with Retry-After
    redis_maxmemory: str = "256mb"  # the embedded redis-server's memory bound (`msaas up`; manifests set their own)
    redis_password: str | None = None  # Redis's requirepass (from the Secret in clusters)
    host: str | None = None  # the address rest binds; None: each command's default (0.0.0.0 for `msaas rest`, loopback for `up`)
    rate_limit: str | None = None  # uploads per key (or client address), flask-limiter syntax: "30/minute;500/day"
    max_queued_songs: int = 20  # songs one API key may have waiting at once (with API_KEYS set)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        redis_url = env.get("REDIS_URL")
        if not redis_url:
            host = env.get("REDIS_HOST") or "localhost"
            port = _port(env.get("REDIS_PORT") or "6379", "REDIS_PORT")
            redis_url = f"redis://{host}:{port}/0"
        elif urlparse(redis_url).scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(f"REDIS_URL must start with redis://, rediss:// or unix://, not {redis_url!r}")
        repo = env.get("DEMUCS_REPO")
        return cls(
            redis_url=redis_url,
            minio_host=env.get("MINIO_HOST") or None,
            minio_access_key=env.get("MINIO_ACCESS_KEY", cls.minio_access_key),
            minio_secret_key=env.get("MINIO_SECRET_KEY", cls.minio_secret_key),
            minio_secure=_flag(env.get("MINIO_SECURE")),
            storage_dir=Path(env.get("STORAGE_DIR") or cls.storage_dir),
            demucs_model=env.get("DEMUCS_MODEL") or cls.demucs_model,
            demucs_repo=Path(repo) if repo else None,
            port=_port(env.get("PORT") or "5000", "PORT"),
            max_upload_bytes=int(_number(env, "MAX_UPLOAD_MB", 100) * 1024 * 1024),
            max_duration_s=_number(env, "MAX_DURATION_S", cls.max_duration_s),
            callback_secret=_callback_secret(env.get("CALLBACK_SECRET")),
            callback_allow_private=_flag(env.get("CALLBACK_ALLOW_PRIVATE")),
            callback_timeout_s=_number(env, "CALLBACK_TIMEOUT_S", cls.callback_timeout_s),
            job_max_attempts=int(_number(env, "JOB_MAX_ATTEMPTS", cls.job_max_attempts)),
            heartbeat_ttl_s=int(_number(env, "HEARTBEAT_TTL_S", cls.heartbeat_ttl_s)),
            device=env.get("DEMUCS_DEVICE") or cls.device,
            torch_threads=int(_number(env, "TORCH_THREADS", 0)),
            encoder_threads=int(_number(env, "ENCODER_THREADS", 0)),
            hostname=env.get("HOSTNAME") or socket.gethostname(),
            log_level=(env.get("LOG_LEVEL") or "INFO").upper(),
            log_stdout=_flag(env.get("LOG_STDOUT"), default=True),
            api_keys=tuple(k.strip() for k in (env.get("API_KEYS") or "").split(",") if k.strip()),
            worker_grace_s=_number(env, "WORKER_GRACE_S", cls.worker_grace_s),
            metrics_port=int(_number(env, "METRICS_PORT", cls.metrics_port)),
            torch_home=Path(env["TORCH_HOME"]) if env.get("TORCH_HOME") else None,
            split_over_s=_number(env, "SPLIT_OVER_S", cls.split_over_s),
            split_max_parts=max(1, int(_number(env, "SPLIT_MAX_PARTS", cls.split_max_parts))),
            retention_s=max(0.0, _number(env, "RETENTION_S", cls.retention_s)),
            job_stall_s=max(0.0, _number(env, "JOB_STALL_S", cls.job_stall_s)),
            max_sample_rate=int(_number(env, "MAX_SAMPLE_RATE", cls.max_sample_rate)),
            max_stems_bytes=int(_number(env, "MAX_STEMS_MB", 2048) * 1024 * 1024),
            max_uploads=max(1, int(_number(env, "MAX_UPLOADS", cls.max_uploads))),
            redis_maxmemory=env.get("REDIS_MAXMEMORY") or cls.redis_maxmemory,
            redis_password=env.get("REDIS_PASSWORD") or None,
            host=env.get("HOST") or None,
            rate_limit=_rate_limit(env.get("RATE_LIMIT")),
            max_queued_songs=max(1, int(_number(env, "MAX_QUEUED_SONGS", cls.max_queued_songs))),
        )

    def with_(self, **changes) -> Settings:
        return replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """The environment that makes `from_env` give these settings back (for child processes)."""
        env = {
            "REDIS_URL": self.redis_url,
            "STORAGE_DIR": str(self.storage_dir),
            "DEMUCS_MODEL": self.demucs_model,
            "PORT": str(self.port),
            "MAX_UPLOAD_MB": repr(self.max_upload_bytes / (1024 * 1024)),
            "MAX_DURATION_S": repr(self.max_duration_s),
            "CALLBACK_ALLOW_PRIVATE": "1" if self.callback_allow_private else "0",
            "CALLBACK_TIMEOUT_S": repr(self.callback_timeout_s),
            "JOB_MAX_ATTEMPTS": str(self.job_max_attempts),
            "HEARTBEAT_TTL_S": str(self.heartbeat_ttl_s),
            "DEMUCS_DEVICE": self.device,
            "TORCH_THREADS": str(self.torch_threads),
            "ENCODER_THREADS": str(self.encoder_threads),
            "LOG_LEVEL": self.log_level,
            "LOG_STDOUT": "1" if self.log_stdout else "0",
            "WORKER_GRACE_S": repr(self.worker_grace_s),
            "METRICS_PORT": str(self.metrics_port),
            "SPLIT_OVER_S": repr(self.split_over_s),
            "SPLIT_MAX_PARTS": str(self.split_max_parts),
            "RETENTION_S": repr(self.retention_s),
            "JOB_STALL_S": repr(self.job_stall_s),
            "MAX_SAMPLE_RATE": str(self.max_sample_rate),
            "MAX_STEMS_MB": repr(self.max_stems_bytes / (1024 * 1024)),
            "MAX_UPLOADS": str(self.max_uploads),
            "REDIS_MAXMEMORY": self.redis_maxmemory,
            "MAX_QUEUED_SONGS": str(self.max_queued_songs),
        }
        for name, value in (("REDIS_PASSWORD", self.redis_password), ("HOST", self.host), ("RATE_LIMIT", self.rate_limit)):
            if value:
                env[name] = value
        if self.torch_home:
            env["TORCH_HOME"] = str(self.torch_home)
        if self.api_keys:
            env["API_KEYS"] = ",".join(self.api_keys)
        if self.minio_host:
            env.update(
                MINIO_HOST=self.minio_host,
                MINIO_ACCESS_KEY=self.minio_access_key,
                MINIO_SECRET_KEY=self.minio_secret_key,
                MINIO_SECURE="1" if self.minio_secure else "0",
            )
        if self.demucs_repo:
            env["DEMUCS_REPO"] = str(self.demucs_repo)
        if self.callback_secret:
            env["CALLBACK_SECRET"] = self.callback_secret
        return env
