"""Deployment files checked offline: kustomize builds, Kubernetes schemas (strict), hadolint, shellcheck, consistency."""

import re
import shutil
import subprocess
import tomllib

import kubernetes_validate
import pytest
import yaml

from conftest import BIN, ROOT
from msaas.cli import parser
from msaas.rest import ENVELOPE_BYTES

KUSTOMIZATIONS = [".", "base", "overlays/laptop", "overlays/gke", "overlays/gpu", "overlays/autoscaling"]
DOCKERFILES = ["rest/Dockerfile", "worker/Dockerfile", "logs/Dockerfile"]
COMPONENTS = {"rest": "msaas-rest", "worker": "msaas-worker", "logs": "msaas-logs"}
K8S_VERSION = "1.37.0"


def render(path: str) -> list[dict]:
    out = subprocess.run([str(BIN / "kubectl"), "kustomize", str(ROOT / path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def by_kind(objects, kind):
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def container(objects, name):
    return by_kind(objects, "Deployment")[name]["spec"]["template"]["spec"]["containers"][0]


def container_env(objects, name) -> dict:
    """Every variable the container gets: its env entries and the keys of the ConfigMaps it takes whole."""
    c = container(objects, name)
    maps = by_kind(objects, "ConfigMap")
    env = {}
    for source in c.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]]["data"])
    for item in c.get("env", []):
        env[item["name"]] = item.get("value", item.get("valueFrom"))
    return env


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_every_object_validates_against_the_kubernetes_schemas(path):
    objects = render(path)
    assert {"rest", "worker", "logs", "redis", "minio"} <= set(by_kind(objects, "Deployment"))
    for obj in objects:
        if obj["kind"] == "ScaledObject":
            continue  # KEDA's CRD: no built-in schema, checked below
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_the_autoscaling_overlay_scales_workers_on_the_queue_length():
    (scaled,) = by_kind(render("overlays/autoscaling"), "ScaledObject").values()
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == "worker"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis" and trigger["metadata"]["listName"] == "toWorker"
    assert trigger["metadata"]["address"] == "redis:6379"


def test_the_gpu_overlay_gives_workers_a_gpu_and_cuda():
    objects = render("overlays/gpu")
    worker = container(objects, "worker")
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container_env(objects, "worker")["DEMUCS_DEVICE"] == "cuda"
    spec = by_kind(objects, "Deployment")["worker"]["spec"]["template"]["spec"]
    assert spec["nodeSelector"] and spec["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_the_gke_overlay_uses_a_nodeport_and_a_gce_ingress():
    objects = render("overlays/gke")
    assert by_kind(objects, "Service")["rest"]["spec"]["type"] == "NodePort"
    assert by_kind(objects, "Ingress")["rest"]["metadata"]["annotations"]["kubernetes.io/ingress.class"] == "gce"


def test_redis_and_minio_keep_their_data_on_volumes():
    objects = render(".")
    claims = by_kind(objects, "PersistentVolumeClaim")
    for name, claim in (("redis", "redis-data"), ("minio", "minio-data")):
        volumes = by_kind(objects, "Deployment")[name]["spec"]["template"]["spec"]["volumes"]
        assert volumes[0]["persistentVolumeClaim"]["claimName"] == claim and claim in claims
    assert "--appendonly" in container(objects, "redis")["args"]


def test_rest_has_probes_and_two_replicas_and_workers_have_measured_resources():
    objects = render(".")
    rest = container(objects, "rest")
    assert rest["readinessProbe"]["httpGet"]["path"] == "/readyz" and rest["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert by_kind(objects, "Deployment")["rest"]["spec"]["replicas"] == 2
    resources = container(objects, "worker")["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]
    grace = by_kind(objects, "Deployment")["worker"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= 120
    assert any(m["mountPath"] == "/cache" for m in container(objects, "worker")["volumeMounts"])


def _megabytes(size: str) -> float:
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", size.lower()).groups()
    return int(number) * {"": 1 / 2**20, "k": 1 / 1024, "m": 1, "g": 1024}[unit]


def test_the_ingress_admits_the_largest_upload_the_app_accepts():
    objects = render(".")
    limit_mb = float(container_env(objects, "rest")["MAX_UPLOAD_MB"])
    largest_body = limit_mb * 2**20 * 4 / 3 + ENVELOPE_BYTES  # base64 JSON
    annotation = by_kind(objects, "Ingress")["rest"]["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert _megabytes(annotation) * 2**20 >= largest_body


def _variables_the_code_reads() -> set[str]:
    source = (ROOT / "msaas" / "config.py").read_text()
    return set(re.findall(r'"([A-Z][A-Z0-9_]+)"', source)) - {"INFO"}


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_each_container_gets_what_the_code_needs_and_nothing_misspelled(path):
    objects = render(path)
    known = _variables_the_code_reads()
    for name in COMPONENTS:
        env = container_env(objects, name)
        assert set(env) <= known, f"{name} sets variables the code never reads: {set(env) - known}"
        assert "REDIS_HOST" in env or "REDIS_URL" in env  # the default, localhost, is only right on one machine
        if name != "logs":
            assert {"MINIO_HOST", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"} <= set(env)


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_every_setting_comes_from_the_configmap_or_a_secret(path):
    for deployment in by_kind(render(path), "Deployment").values():
        for c in deployment["spec"]["template"]["spec"]["containers"]:
            for item in c.get("env", []):
                source = item.get("valueFrom", {})
                assert "secretKeyRef" in source or "configMapKeyRef" in source, (
                    f"{c['name']}: {item['name']} is written in the manifest"
                )


def test_rest_and_workers_are_annotated_for_prometheus_on_their_metrics_ports():
    objects = render(".")
    ports = {"rest": container_env(objects, "rest")["PORT"], "worker": container_env(objects, "worker")["METRICS_PORT"]}
    for name, port in ports.items():
        annotations = by_kind(objects, "Deployment")[name]["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
        assert annotations["prometheus.io/port"] == port


def test_each_container_runs_a_command_of_the_package():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    subcommands = parser()._subparsers._group_actions[0].choices
    objects = render(".")
    for name in COMPONENTS:
        program, sub = container(objects, name)["command"]
        assert program in scripts and sub == name and sub in subcommands
        dockerfile = (ROOT / name / "Dockerfile").read_text()
        assert f'CMD ["msaas", "{name}"]' in dockerfile


def test_image_names_agree_between_dockerfiles_makefile_and_manifests():
    objects = render(".")
    makefile = (ROOT / "Makefile").read_text()
    version = re.search(r"^VERSION\s*\?=\s*(\S+)", makefile, re.M).group(1)
    assert re.search(r"^IMAGES := rest worker logs$", makefile, re.M) and "msaas-$$c:$(VERSION)" in makefile
    for name, image in COMPONENTS.items():
        assert container(objects, name)["image"] == f"{image}:{version}"
        assert f"-t {image}:{version}" in (ROOT / name / "Dockerfile").read_text()


def test_no_credential_is_written_in_a_manifest():
    for path in KUSTOMIZATIONS:
        objects = render(path)
        assert not by_kind(objects, "Secret"), "secrets are created in the cluster (deploy scripts), not kept in git"
        for deployment in by_kind(objects, "Deployment").values():
            for c in deployment["spec"]["template"]["spec"]["containers"]:
                for item in c.get("env", []):
                    if re.search(r"KEY|SECRET|PASSWORD|USER", item["name"]):
                        assert "secretKeyRef" in item.get("valueFrom", {}), f"{item['name']} must come from a Secret"
        for config in by_kind(objects, "ConfigMap").values():
            assert not any(re.search(r"KEY|SECRET|PASSWORD", k) for k in config["data"])


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfiles_pass_hadolint(dockerfile):
    out = subprocess.run(
        [str(BIN / "hadolint"), "--failure-threshold", "warning", str(ROOT / dockerfile)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_images_run_as_a_non_root_user():
    for dockerfile in DOCKERFILES:
        assert re.search(r"^USER 10001$", (ROOT / dockerfile).read_text(), re.M)
    for deployment in by_kind(render("."), "Deployment").values():
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is installed by .ci/run")
def test_deploy_scripts_pass_shellcheck():
    out = subprocess.run(
        ["shellcheck", "-x", "deploy-local-dev.sh", "deploy.sh", "k8s-lib.sh"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout


@pytest.mark.parametrize("script", ["deploy-local-dev.sh", "deploy.sh"])
def test_deploy_scripts_say_clearly_when_there_is_no_cluster(script, tmp_path):
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "KUBECONFIG": str(tmp_path / "none"), "HOME": str(tmp_path)}
    out = subprocess.run([str(ROOT / script)], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 1 and "reaches no cluster" in out.stderr
