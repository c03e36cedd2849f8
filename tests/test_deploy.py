"""Deployment files checked offline: kustomize builds, Kubernetes schemas (strict), hadolint, shellcheck, consistency."""

import json
import re
import subprocess
import sys
import tomllib

import kubernetes_validate
import pytest
import yaml

from conftest import BIN, ROOT, needs
from msaas.cli import parser
from msaas.rest import ENVELOPE_BYTES

KUSTOMIZATIONS = [
    ".",
    "base",
    "overlays/laptop",
    "overlays/gke",
    "overlays/gpu",
    "overlays/autoscaling",
    "overlays/gpu-autoscaling",
]
DOCKERFILES = ["rest/Dockerfile", "worker/Dockerfile"]
COMPONENTS = {"rest": "msaas-rest", "worker": "msaas-worker", "logs": "msaas-rest"}  # logs runs rest's image
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
        if obj["apiVersion"].startswith("keda.sh/"):
            continue  # KEDA's CRDs: no built-in schema, checked below
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
        dockerfile = (ROOT / COMPONENTS[name].removeprefix("msaas-") / "Dockerfile").read_text()
        assert 'CMD ["msaas", ' in dockerfile and (name != "rest" or 'CMD ["msaas", "rest"]' in dockerfile)


def test_image_names_agree_between_dockerfiles_makefile_and_manifests():
    objects = render(".")
    makefile = (ROOT / "Makefile").read_text()
    version = re.search(r"^VERSION\s*\?=\s*(\S+)", makefile, re.M).group(1)
    assert re.search(r"^IMAGES := rest worker$", makefile, re.M) and "msaas-$$c:$(VERSION)" in makefile
    for name, image in COMPONENTS.items():
        assert container(objects, name)["image"] == f"{image}:{version}"
        assert f"-t {image}:{version}" in (ROOT / image.removeprefix("msaas-") / "Dockerfile").read_text()


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


@needs("shellcheck", "Debian's shellcheck, which .ci/run installs")
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


def secret_ref(env_item) -> dict | None:
    return env_item.get("valueFrom", {}).get("secretKeyRef")


def env_items(objects, deployment) -> dict:
    c = by_kind(objects, "Deployment")[deployment]["spec"]["template"]["spec"]["containers"][0]
    return {item["name"]: item for item in c.get("env", [])}


def routed(rule_path: str, path_type: str, path: str) -> bool:
    """Whether an Ingress path (nginx's Prefix/Exact, or gce's ImplementationSpecific `/x/*`) sends `path` to rest."""
    if path_type == "Exact" or (path_type == "ImplementationSpecific" and not rule_path.endswith("*")):
        return path == rule_path
    prefix = rule_path.rstrip("*").rstrip("/")
    return path == prefix or path.startswith(prefix + "/")


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_a_cluster_deploy_is_closed_by_default(path):
    objects = render(path)
    api_keys = secret_ref(env_items(objects, "rest")["API_KEYS"])
    assert api_keys["name"] == "msaas-secrets" and not api_keys.get("optional")  # rest does not start without keys
    for name in ("rest", "worker", "logs", "redis"):
        assert secret_ref(env_items(objects, name)["REDIS_PASSWORD"]) == {"name": "msaas-secrets", "key": "REDIS_PASSWORD"}
    args = container(objects, "redis")["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction" and "--maxmemory" in args
    # The object store: root credentials for MinIO and its setup Job only, a user limited to the two buckets for the apps.
    assert secret_ref(env_items(objects, "minio")["MINIO_ROOT_USER"])["key"] == "MINIO_ROOT_USER"
    for name in ("rest", "worker"):
        assert secret_ref(env_items(objects, name)["MINIO_ACCESS_KEY"])["key"] == "MINIO_ACCESS_KEY"
    policy = json.loads(
        by_kind(objects, "ConfigMap")[next(n for n in by_kind(objects, "ConfigMap") if "policy" in n)]["data"]["msaas-app.json"]
    )
    resources = {r for s in policy["Statement"] if "s3:PutObject" in s["Action"] for r in s["Resource"]}
    assert resources == {"arn:aws:s3:::queue/*", "arn:aws:s3:::output/*"}
    (setup,) = by_kind(objects, "Job").values()
    assert "policy attach" in setup["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert [p["port"] for p in by_kind(objects, "Service")["minio"]["spec"]["ports"]] == [9000]  # no console
    assert "127.0.0.1:9001" in container(objects, "minio")["args"]
    # NetworkPolicies: Redis and the store admit MSaaS's pods only; rest its Ingress's traffic only.
    policies = {p["spec"]["podSelector"]["matchLabels"]["app"]: p["spec"] for p in by_kind(objects, "NetworkPolicy").values()}
    assert set(policies) == {"redis", "minio", "rest"}
    for name, allowed in (("redis", {"rest", "worker", "logs"}), ("minio", {"rest", "worker", "minio-setup"})):
        pods = [f["podSelector"] for f in policies[name]["ingress"][0]["from"] if "podSelector" in f]
        assert set(pods[0]["matchExpressions"][0]["values"]) == allowed
        assert [f for f in policies[name]["ingress"][0]["from"] if "ipBlock" in f] == []
    assert all("podSelector" not in f for f in policies["rest"]["ingress"][0]["from"])
    # What the Ingress sends to rest: the API and the page, not the metrics or the probes.
    (ingress,) = by_kind(objects, "Ingress").values()
    rules = [(p["path"], p["pathType"]) for p in ingress["spec"]["rules"][0]["http"]["paths"]]
    for path_, expected in (
        ("/", True),
        ("/apiv1/separate", True),
        ("/static/app.js", True),
        ("/metrics", False),
        ("/readyz", False),
        ("/healthz", False),
    ):
        assert any(routed(rule, kind, path_) for rule, kind in rules) is expected, path_
    assert by_kind(objects, "PodDisruptionBudget")["rest"]["spec"]["minAvailable"] == 1
    for name in ("redis", "minio"):
        c = container(objects, name)
        assert c["securityContext"]["readOnlyRootFilesystem"] is True and c["readinessProbe"] and c["livenessProbe"]


def test_the_object_store_image_is_the_maintained_fork_pinned():
    image = container(render("."), "minio")["image"]
    assert image.startswith("pgsty/minio:RELEASE.2026-") and "latest" not in image


FAKE_KUBECTL = """#!{python}
import base64, json, sys
from pathlib import Path
state = Path({state!r})
data = json.loads(state.read_text()) if state.exists() else None
args = sys.argv[1:]
with open({log!r}, "a") as log:
    log.write(json.dumps(args) + "\\n")
if args[:2] == ["get", "secret"]:
    if data is None:
        sys.exit(1)
    if "-o" in args:
        key = args[args.index("-o") + 1].split(".data.")[1].rstrip("}}")
        print(base64.b64encode(data.get(key, "").encode()).decode() if key in data else "", end="")
elif args[:3] == ["create", "secret", "generic"]:
    state.write_text(json.dumps(dict(a.split("=", 1)[1].split("=", 1) for a in args if a.startswith("--from-literal="))))
elif args[:2] == ["patch", "secret"]:
    data.update(json.loads(args[args.index("-p") + 1])["stringData"])
    state.write_text(json.dumps(data))
"""


def fake_kubectl(tmp_path, secret: dict | None):
    state, log = tmp_path / "secret.json", tmp_path / "calls"
    if secret is not None:
        state.write_text(json.dumps(secret))
    fake = tmp_path / "kubectl"
    fake.write_text(FAKE_KUBECTL.format(python=sys.executable, state=str(state), log=str(log)))
    fake.chmod(0o755)
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "KUBECTL": str(fake), "HOME": str(tmp_path)}
    return env, state


def test_deploy_creates_api_keys_redis_and_store_credentials_and_says_how_to_read_the_key(tmp_path):
    env, state = fake_kubectl(tmp_path, None)
    out = subprocess.run([str(ROOT / "deploy.sh")], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    secret = json.loads(state.read_text())
    assert set(secret) == {
        "MINIO_ROOT_USER",
        "MINIO_ROOT_PASSWORD",
        "MINIO_ACCESS_KEY",
        "MINIO_SECRET_KEY",
        "REDIS_PASSWORD",
        "API_KEYS",
    }
    assert re.fullmatch(r"[0-9a-f]{48}", secret["API_KEYS"]) and re.fullmatch(r"[0-9a-f]{48}", secret["REDIS_PASSWORD"])
    assert secret["MINIO_ROOT_USER"] != secret["MINIO_ACCESS_KEY"]
    assert "jsonpath='{.data.API_KEYS}'" in out.stdout


def test_deploy_adds_what_an_older_secret_lacks_and_keeps_its_store_root(tmp_path):
    env, state = fake_kubectl(tmp_path, {"MINIO_ACCESS_KEY": "msaas-old", "MINIO_SECRET_KEY": "oldsecret"})
    out = subprocess.run([str(ROOT / "deploy-local-dev.sh")], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    secret = json.loads(state.read_text())
    assert (secret["MINIO_ROOT_USER"], secret["MINIO_ROOT_PASSWORD"]) == ("msaas-old", "oldsecret")  # MinIO's data stays readable
    assert secret["MINIO_ACCESS_KEY"] != "msaas-old" and secret["REDIS_PASSWORD"] and secret["API_KEYS"]
    subprocess.run([str(ROOT / "deploy-local-dev.sh"), "stop"], env=env, timeout=30)


def test_components_combine_gpu_workers_with_autoscaling():
    objects = render("overlays/gpu-autoscaling")
    assert container(objects, "worker")["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert by_kind(objects, "ScaledObject")["worker"]["spec"]["scaleTargetRef"]["name"] == "worker"
    redis_from = by_kind(objects, "NetworkPolicy")["redis"]["spec"]["ingress"][0]["from"]
    assert {"kubernetes.io/metadata.name": "keda"} in [f.get("namespaceSelector", {}).get("matchLabels") for f in redis_from]
