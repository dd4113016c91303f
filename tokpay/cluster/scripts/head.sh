#!/usr/bin/env bash
# The Ray head node of a TokPay cluster, in the foreground (one per cluster).
#
#   head.sh REDIS_ADDRESS [NODE_NAME]     e.g. cluster/head.sh 10.0.0.5:6379 n0
#
# The GCS keeps its tables in the Redis at REDIS_ADDRESS (started by redis.sh), so this
# head can be killed and started again on the same GCS port: the GCS reloads the
# cluster from Redis, the worker nodes' raylets reconnect, and their actors keep
# running and keep their names. common.sh says what every node offers and reads.
#
# Environment (all optional), besides common.sh's:
#   TOKPAY_GCS_PORT            the GCS port workers and drivers attach to (default 6380)
#   TOKPAY_RAY_CLIENT_PORT     Ray Client server port (default 10001; Ray insists on
#                              one, TokPay drivers attach to the GCS port instead)
#   TOKPAY_STORAGE_NAMESPACE   this cluster's key prefix in Redis (default tokpay);
#                              must stay the same across head restarts
#   TOKPAY_REDIS_PASSWORD      the password given to redis.sh, if any
#   TOKPAY_HEALTH_CHECK_PERIOD_MS, TOKPAY_HEALTH_CHECK_TIMEOUT_MS,
#   TOKPAY_HEALTH_CHECK_FAILURE_THRESHOLD
#                              how fast the GCS declares a silent node dead: after
#                              THRESHOLD failed probes, one every PERIOD (defaults
#                              1000 ms, 1000 ms, 12; Ray's are 3000, 10000, 5). A node
#                              declared dead ends its raylet and every replica on it, so
#                              a network cut shorter than this must not reach it: TokPay
#                              fails over by its own heartbeats and leases, never by
#                              Ray's verdict (the controller keeps a node it saw lose a
#                              replica out of placement meanwhile, SUSPECT_SECONDS)
# With RAY_AUTH_MODE=token and no token found, the head makes ~/.ray/auth_token: copy
# it to the other machines.
set -euo pipefail
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/common.sh"

tokpay_check_args 1 2 "REDIS_ADDRESS [NODE_NAME]" "$@"
redis_address="$1"
tokpay_node_setup "${2:-n0}"
gcs_port="${TOKPAY_GCS_PORT:-6380}"

export RAY_REDIS_ADDRESS="$redis_address"
export RAY_external_storage_namespace="${TOKPAY_STORAGE_NAMESPACE:-tokpay}"
if [ "$RAY_AUTH_MODE" = token ] && [ -z "${RAY_AUTH_TOKEN:-}" ] \
    && [ -z "${RAY_AUTH_TOKEN_PATH:-}" ] && [ ! -s "$HOME/.ray/auth_token" ]; then
    "$ray_bin" get-auth-token --generate >/dev/null
    chmod 600 "$HOME/.ray/auth_token"
    echo "head.sh: made a Ray auth token in $HOME/.ray/auth_token" >&2
fi

system_config="$(printf '{"health_check_period_ms": %d, "health_check_timeout_ms": %d, "health_check_failure_threshold": %d}' \
    "${TOKPAY_HEALTH_CHECK_PERIOD_MS:-1000}" \
    "${TOKPAY_HEALTH_CHECK_TIMEOUT_MS:-1000}" \
    "${TOKPAY_HEALTH_CHECK_FAILURE_THRESHOLD:-12}")"

args=(
    --head
    --port "$gcs_port"
    --system-config "$system_config"
    --include-dashboard=false
    --ray-client-server-port "${TOKPAY_RAY_CLIENT_PORT:-10001}"
    "${node_args[@]}"
)
if [ -n "${TOKPAY_REDIS_PASSWORD:-}" ]; then
    args+=(--redis-password "$TOKPAY_REDIS_PASSWORD")
fi
# A head that died leaves its address in ray_current_cluster. `ray start --head` then
# refuses to start again if any process on this machine still names that GCS address
# (a worker node sharing the machine does), taking it for a running head.
ray_temp_dir="${TOKPAY_RAY_TEMP_DIR:-${RAY_TMPDIR:-${TMPDIR:-/tmp}}/ray}"
if [ -f "$ray_temp_dir/ray_current_cluster" ] \
    && [[ "$(cat "$ray_temp_dir/ray_current_cluster")" == *":$gcs_port" ]]; then
    rm -f "$ray_temp_dir/ray_current_cluster"
fi
exec "$ray_bin" start "${args[@]}"
