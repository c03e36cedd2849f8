"""Every environment variable MSaaS reads is read here, once, into a frozen Settings."""

from __future__ import annotations

import base64
import binascii
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
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


def _as_number(raw: str, name: str) -> float:
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


PRECISIONS = ("fp32", "fp16", "bf16")
ENGINES = ("auto", "torch", "onnx")


def _one_of(name: str, options: tuple[str, ...]) -> Callable[[str], str]:
    """A setting that is one of a few words (any case), checked at start."""

    def read(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ConfigError(f"{name} must be one of {', '.join(options)}, not {raw!r}")
        return value

    return read


# What libraries MSaaS loads read from the environment themselves, and MSaaS's choice where the environment says nothing:
# ONNX Runtime's PyPI builds keep a device identifier and a queue of events in the home folder and send them to Microsoft
# unless ORT_DISABLE_TELEMETRY=1 (read when ONNX Runtime starts); a self-hosted service must not do that unasked.
LIBRARY_DEFAULTS = {"ORT_DISABLE_TELEMETRY": "1"}


def library_defaults() -> dict[str, str]:
    """LIBRARY_DEFAULTS put in this process's environment where it has none of them (before the library loads); the
    values in force (ORT_DISABLE_TELEMETRY=0 in the environment turns ONNX Runtime's telemetry back on)."""
    for name, value in LIBRARY_DEFAULTS.items():
        os.environ.setdefault(name, value)
    return {name: os.environ[name] for name in LIBRARY_DEFAULTS}


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
    demucs_batch: int = 0  # Demucs chunks run together in one forward pass; 0: the device's default (separation/demucs.py)
    demucs_precision: str = "fp32"  # fp32, fp16 or bf16 for a Demucs model's layers (its STFT and norms stay FP32)
    jobs_in_flight: int = 0  # songs one worker separates at once (their chunks share batches); 0: 1 on a CPU, 4 on a GPU
    demucs_engine: str = "auto"  # torch, onnx (ONNX Runtime, CPU), or auto: whichever runs a chunk faster at warm-up
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
    rest: str = "localhost:5000"  # the command line's server (REST, as the course's sample clients call it)
    api_key: str | None = None  # the command line's API key (MSAAS_API_KEY)
    given: frozenset[str] = field(default=frozenset(), compare=False)  # the settings the environment set

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, var in VARIABLES.items():
            raw = env.get(var.env)
            if raw not in (None, ""):
                values[name] = var.read(raw)
        given = frozenset(values)
        values["redis_url"] = _redis_url(env)
        values.setdefault("hostname", socket.gethostname())
        return cls(**values, given=given)

    def with_(self, **changes) -> Settings:
        return replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """The environment that makes `from_env` give these settings back (for child processes)."""
        env = {"REDIS_URL": self.redis_url}
        for name, var in VARIABLES.items():
            value = getattr(self, name)
            if var.written and value not in (None, ()) and (var.with_ is None or getattr(self, var.with_)):
                env[var.env] = var.write(value)
        return env


def _redis_url(env: Mapping[str, str]) -> str:
    redis_url = env.get("REDIS_URL")
    if not redis_url:
        host = env.get("REDIS_HOST") or "localhost"
        port = _port(env.get("REDIS_PORT") or "6379", "REDIS_PORT")
        return f"redis://{host}:{port}/0"
    if urlparse(redis_url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"REDIS_URL must start with redis://, rediss:// or unix://, not {redis_url!r}")
    return redis_url


@dataclass(frozen=True)
class Var:
    """One setting: its environment variable, how it is read, how it is written back for a child process."""

    env: str
    read: Callable[[str], Any] = str
    write: Callable[[Any], str] = str
    with_: str | None = None  # written only when this other setting is set
    written: bool = True


def _int(name: str, least: int | None = None) -> Callable[[str], int]:
    return lambda raw: int(_as_number(raw, name)) if least is None else max(least, int(_as_number(raw, name)))


def _float(name: str, least: float | None = None) -> Callable[[str], float]:
    return lambda raw: _as_number(raw, name) if least is None else max(least, _as_number(raw, name))


def _flag_text(value: bool) -> str:
    return "1" if value else "0"


MIB = 1024 * 1024

# Every setting but REDIS_URL (from REDIS_URL, or REDIS_HOST and REDIS_PORT) and HOSTNAME's default, keyed by field.
VARIABLES: dict[str, Var] = {
    "minio_host": Var("MINIO_HOST"),
    "minio_access_key": Var("MINIO_ACCESS_KEY", with_="minio_host"),
    "minio_secret_key": Var("MINIO_SECRET_KEY", with_="minio_host"),
    "minio_secure": Var("MINIO_SECURE", _flag, _flag_text, with_="minio_host"),
    "storage_dir": Var("STORAGE_DIR", Path),
    "demucs_model": Var("DEMUCS_MODEL"),
    "demucs_repo": Var("DEMUCS_REPO", Path),
    "port": Var("PORT", lambda raw: _port(raw, "PORT")),
    "max_upload_bytes": Var("MAX_UPLOAD_MB", lambda raw: int(_as_number(raw, "MAX_UPLOAD_MB") * MIB), lambda v: repr(v / MIB)),
    "max_duration_s": Var("MAX_DURATION_S", _float("MAX_DURATION_S"), repr),
    "callback_secret": Var("CALLBACK_SECRET", _callback_secret),
    "callback_allow_private": Var("CALLBACK_ALLOW_PRIVATE", _flag, _flag_text),
    "callback_timeout_s": Var("CALLBACK_TIMEOUT_S", _float("CALLBACK_TIMEOUT_S"), repr),
    "job_max_attempts": Var("JOB_MAX_ATTEMPTS", _int("JOB_MAX_ATTEMPTS")),
    "heartbeat_ttl_s": Var("HEARTBEAT_TTL_S", _int("HEARTBEAT_TTL_S")),
    "device": Var("DEMUCS_DEVICE"),
    "torch_threads": Var("TORCH_THREADS", _int("TORCH_THREADS")),
    "encoder_threads": Var("ENCODER_THREADS", _int("ENCODER_THREADS")),
    "demucs_batch": Var("DEMUCS_BATCH", _int("DEMUCS_BATCH", least=0)),
    "demucs_precision": Var("DEMUCS_PRECISION", _one_of("DEMUCS_PRECISION", PRECISIONS)),
    "demucs_engine": Var("DEMUCS_ENGINE", _one_of("DEMUCS_ENGINE", ENGINES)),
    "jobs_in_flight": Var("JOBS_IN_FLIGHT", _int("JOBS_IN_FLIGHT", least=0)),
    "hostname": Var("HOSTNAME", written=False),  # each process's own
    "log_level": Var("LOG_LEVEL", str.upper),
    "log_stdout": Var("LOG_STDOUT", lambda raw: _flag(raw, default=True), _flag_text),
    "api_keys": Var("API_KEYS", lambda raw: tuple(k.strip() for k in raw.split(",") if k.strip()), ",".join),
    "worker_grace_s": Var("WORKER_GRACE_S", _float("WORKER_GRACE_S"), repr),
    "metrics_port": Var("METRICS_PORT", _int("METRICS_PORT")),
    "torch_home": Var("TORCH_HOME", Path),
    "split_over_s": Var("SPLIT_OVER_S", _float("SPLIT_OVER_S"), repr),
    "split_max_parts": Var("SPLIT_MAX_PARTS", _int("SPLIT_MAX_PARTS", least=1)),
    "retention_s": Var("RETENTION_S", _float("RETENTION_S", least=0.0), repr),
    "job_stall_s": Var("JOB_STALL_S", _float("JOB_STALL_S", least=0.0), repr),
    "max_sample_rate": Var("MAX_SAMPLE_RATE", _int("MAX_SAMPLE_RATE")),
    "max_stems_bytes": Var("MAX_STEMS_MB", lambda raw: int(_as_number(raw, "MAX_STEMS_MB") * MIB), lambda v: repr(v / MIB)),
    "max_uploads": Var("MAX_UPLOADS", _int("MAX_UPLOADS", least=1)),
    "redis_maxmemory": Var("REDIS_MAXMEMORY"),
    "redis_password": Var("REDIS_PASSWORD"),
    "host": Var("HOST"),
    "rate_limit": Var("RATE_LIMIT", _rate_limit),
    "max_queued_songs": Var("MAX_QUEUED_SONGS", _int("MAX_QUEUED_SONGS", least=1)),
    "rest": Var("REST", written=False),  # the client's; not the servers'
    "api_key": Var("MSAAS_API_KEY", written=False),
}
