from pathlib import Path

import pytest

from msaas.config import ConfigError, Settings


def test_defaults_match_the_course():
    s = Settings.from_env({})
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.port == 5000 and s.demucs_model == "htdemucs" and s.minio_host is None
    assert s.max_upload_bytes == 100 * 1024 * 1024


def test_kubernetes_injected_redis_port_is_understood():
    s = Settings.from_env({"REDIS_HOST": "redis", "REDIS_PORT": "tcp://10.0.3.7:6379"})
    assert s.redis_url == "redis://redis:6379/0"


def test_redis_url_wins_over_host_and_port():
    s = Settings.from_env({"REDIS_URL": "redis://cache:7000/2", "REDIS_HOST": "other"})
    assert s.redis_url == "redis://cache:7000/2"


@pytest.mark.parametrize("env", [{"PORT": "http"}, {"REDIS_PORT": "99999"}, {"MAX_UPLOAD_MB": "lots"}, {"REDIS_URL": "http://x"}])
def test_bad_values_are_refused_with_their_name(env):
    with pytest.raises(ConfigError, match=next(iter(env))):
        Settings.from_env(env)


def test_settings_survive_the_trip_through_a_child_environment():
    s = Settings.from_env(
        {
            "MINIO_HOST": "minio:9000",
            "MINIO_SECURE": "1",
            "DEMUCS_REPO": "/models",
            "MAX_UPLOAD_MB": "20",
            "CALLBACK_SECRET": "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ=",
        }
    )
    again = Settings.from_env(s.to_env())
    assert again.with_(hostname=s.hostname) == s
    assert again.demucs_repo == Path("/models") and again.minio_secure


@pytest.mark.parametrize("secret", ["whsec_x", "not base64!", "whsec_c2hvcnQ="])
def test_a_callback_secret_that_cannot_sign_stops_the_component_at_start(secret):
    with pytest.raises(ConfigError, match="CALLBACK_SECRET"):
        Settings.from_env({"CALLBACK_SECRET": secret})


def test_reliability_settings_have_their_documented_defaults_and_read_from_the_environment():
    s = Settings.from_env({})
    assert s.retention_s == 7 * 86400 and s.job_stall_s == 900 and s.max_uploads == 4
    s = Settings.from_env({"RETENTION_S": "0", "JOB_STALL_S": "60", "MAX_STEMS_MB": "10", "MAX_SAMPLE_RATE": "48000"})
    assert (s.retention_s, s.job_stall_s, s.max_stems_bytes, s.max_sample_rate) == (0, 60, 10 * 1024 * 1024, 48000)


def test_msaas_up_listens_on_loopback_unless_host_says_otherwise_and_then_filters_callbacks():
    from msaas.embedded import local_url, stack_settings

    mine = stack_settings(Settings.from_env({}), "tiny")
    assert mine.host == "127.0.0.1" and mine.callback_allow_private and local_url(mine) == "http://127.0.0.1:5000"
    shared = stack_settings(Settings.from_env({"HOST": "0.0.0.0"}), "tiny")
    assert shared.host == "0.0.0.0" and not shared.callback_allow_private and local_url(shared) == "http://127.0.0.1:5000"
    chosen = stack_settings(Settings.from_env({"HOST": "0.0.0.0", "CALLBACK_ALLOW_PRIVATE": "1"}), "tiny")
    assert chosen.callback_allow_private


def test_a_rate_limit_that_does_not_parse_stops_rest_at_start():
    with pytest.raises(ConfigError, match="RATE_LIMIT"):
        Settings.from_env({"RATE_LIMIT": "lots"})
    assert Settings.from_env({"RATE_LIMIT": "30/minute;500/day"}).rate_limit == "30/minute;500/day"


def test_every_setting_is_read_and_written_back_through_one_table():
    from dataclasses import fields

    from msaas.config import VARIABLES

    assert {f.name for f in fields(Settings)} - set(VARIABLES) == {"redis_url", "given"}
    everything = {
        "MINIO_HOST": "minio:9000", "MINIO_ACCESS_KEY": "a", "MINIO_SECRET_KEY": "b", "MINIO_SECURE": "1", "STORAGE_DIR": "/s",
        "DEMUCS_MODEL": "m", "DEMUCS_REPO": "/r", "PORT": "5001", "MAX_UPLOAD_MB": "12.5", "MAX_DURATION_S": "60",
        "CALLBACK_SECRET": "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ=", "CALLBACK_ALLOW_PRIVATE": "1", "CALLBACK_TIMEOUT_S": "3",
        "JOB_MAX_ATTEMPTS": "5", "HEARTBEAT_TTL_S": "7", "DEMUCS_DEVICE": "cpu", "TORCH_THREADS": "3", "ENCODER_THREADS": "2",
        "DEMUCS_BATCH": "4", "DEMUCS_PRECISION": "BF16", "DEMUCS_ENGINE": "onnx", "JOBS_IN_FLIGHT": "3",
        "LOG_LEVEL": "debug", "LOG_STDOUT": "0", "API_KEYS": "k1, k2", "WORKER_GRACE_S": "9", "METRICS_PORT": "0",
        "TORCH_HOME": "/t", "SPLIT_OVER_S": "100", "SPLIT_MAX_PARTS": "3", "RETENTION_S": "60", "JOB_STALL_S": "30",
        "MAX_SAMPLE_RATE": "48000", "MAX_STEMS_MB": "10", "MAX_UPLOADS": "2", "REDIS_MAXMEMORY": "64mb",
        "REDIS_PASSWORD": "pw", "HOST": "0.0.0.0", "RATE_LIMIT": "5/minute", "MAX_QUEUED_SONGS": "3", "HOSTNAME": "here",
        "REDIS_HOST": "cache", "REDIS_PORT": "7000", "REST": "rest:80", "MSAAS_API_KEY": "k",
    }  # fmt: skip
    s = Settings.from_env(everything)
    assert s.api_keys == ("k1", "k2") and s.max_upload_bytes == int(12.5 * 1024 * 1024) and s.log_level == "DEBUG"
    assert s.redis_url == "redis://cache:7000/0" and not s.log_stdout and s.hostname == "here"
    defaults = Settings.from_env({"HOSTNAME": "here"})
    for f in fields(Settings):  # every setting was read: none kept its default
        assert getattr(s, f.name) != getattr(defaults, f.name) or f.name == "hostname", f.name
    children = Settings.from_env({**s.to_env(), "HOSTNAME": "here"})  # a child process: the servers' settings, not the CLI's
    assert children == s.with_(rest=defaults.rest, api_key=None)


def test_settings_say_which_the_environment_set_and_keep_the_clients_own_out_of_childrens():
    settings = Settings.from_env({"STORAGE_DIR": "/data", "REST": "rest:80", "MSAAS_API_KEY": "k1", "PORT": ""})
    assert settings.given == {"storage_dir", "rest", "api_key"} and settings.rest == "rest:80" and settings.api_key == "k1"
    assert Settings.from_env({}).given == frozenset() and Settings.from_env({}).rest == "localhost:5000"
    env = settings.to_env()
    assert "REST" not in env and "MSAAS_API_KEY" not in env and env["STORAGE_DIR"] == "/data"


def test_a_precision_or_engine_that_is_none_stops_the_worker_at_start():
    assert Settings.from_env({"DEMUCS_PRECISION": " FP16 "}).demucs_precision == "fp16"
    with pytest.raises(ConfigError, match="DEMUCS_PRECISION must be one of fp32, fp16, bf16"):
        Settings.from_env({"DEMUCS_PRECISION": "fp8"})
    with pytest.raises(ConfigError, match="DEMUCS_ENGINE must be one of auto, torch, onnx"):
        Settings.from_env({"DEMUCS_ENGINE": "tensorrt"})
