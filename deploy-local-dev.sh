#!/usr/bin/env bash
# Deploy redis and minio to the current kubectl context and port-forward them to this machine, like the course's
# script: redis on 6379, MinIO's API on 9000 and its console on 9001. Then run rest and workers here against them:
#   eval "$(./deploy-local-dev.sh env)"; msaas rest & msaas worker
# Usage: ./deploy-local-dev.sh [up|env|stop]     (up is the default; stop ends the port-forwards)
set -euo pipefail
cd "$(dirname "$0")"
PIDS=.port-forward.pids
# shellcheck source=k8s-lib.sh
. ./k8s-lib.sh


stop() {
  if [ -f "$PIDS" ]; then
    xargs kill 2>/dev/null < "$PIDS" || true
    rm -f "$PIDS"
    echo "port-forwards stopped"
  else
    echo "no port-forwards recorded in $PIDS"
  fi
}

case "${1:-up}" in
  up)
    need_cluster
    ensure_secret
    k apply -k redis
    k apply -k minio
    echo "waiting for redis and minio to be ready..."
    k rollout status deployment/redis --timeout=180s
    k rollout status deployment/minio --timeout=180s
    k wait --for=condition=complete job/minio-setup --timeout=180s >/dev/null
    stop >/dev/null
    for spec in "service/redis 6379:6379" "service/minio 9000:9000" "deployment/minio 9001:9001"; do
      # shellcheck disable=SC2086
      k port-forward --address 127.0.0.1 $spec >/dev/null 2>&1 &
      echo $! >> "$PIDS"
    done
    echo "redis on localhost:6379, MinIO on localhost:9000 (console http://localhost:9001, as MINIO_ROOT_USER)"
    echo "credentials: eval \"\$(./deploy-local-dev.sh env)\"    stop the forwards: ./deploy-local-dev.sh stop"
    ;;
  env)
    need_cluster
    echo "export REDIS_HOST=localhost REDIS_PORT=6379 MINIO_HOST=localhost:9000"
    echo "export REDIS_PASSWORD='$(secret_value REDIS_PASSWORD)'"
    echo "export MINIO_ACCESS_KEY='$(secret_value MINIO_ACCESS_KEY)' MINIO_SECRET_KEY='$(secret_value MINIO_SECRET_KEY)'"
    ;;
  stop) stop ;;
  *) die "usage: $0 [up|env|stop]" ;;
esac
