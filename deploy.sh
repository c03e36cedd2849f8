#!/usr/bin/env bash
# Deploy the whole stack (redis, minio, rest, workers, logs) to the current kubectl context.
# Usage: ./deploy.sh [OVERLAY]    OVERLAY: base (default), overlays/laptop, overlays/gke, overlays/gpu, overlays/autoscaling,
#        overlays/gpu-autoscaling, or any kustomization of yours combining components/
# Build and push the images first (make images push REGISTRY=...); see README "Run on Kubernetes".
set -euo pipefail
cd "$(dirname "$0")"
OVERLAY=${1:-base}
# shellcheck source=k8s-lib.sh
. ./k8s-lib.sh

[ -f "$OVERLAY/kustomization.yaml" ] || die "no kustomization in $OVERLAY (try base or overlays/laptop)"
need_cluster
ensure_secret
k apply -k "$OVERLAY"
for d in redis minio rest worker logs; do
  k rollout status "deployment/$d" --timeout=300s
done
k wait --for=condition=complete job/minio-setup --timeout=300s >/dev/null
echo "MSaaS is up, closed by default: every /apiv1 request needs the API key."
echo "Try it: kubectl port-forward service/rest 5000:5000 &"
echo "  export MSAAS_API_KEY=\"\$(kubectl get secret msaas-secrets -o jsonpath='{.data.API_KEYS}' | base64 -d | cut -d, -f1)\""
echo "  REST=localhost:5000 python sample-requests.py"
echo "Logs of the whole system: kubectl logs -f deployment/logs"
