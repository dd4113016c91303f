#!/usr/bin/env bash
# The Ray head node of a TokPay cluster, in the foreground (one per cluster).
#
#   cluster/head.sh REDIS_ADDRESS [NODE_NAME]     e.g. cluster/head.sh 10.0.0.5:6379 n0
#
# The GCS keeps its tables in the Redis at REDIS_ADDRESS (started by cluster/redis.sh),
# so this head can be killed and started again on the same GCS port: the GCS reloads
# the cluster from Redis, the worker nodes' raylets reconnect, and their actors keep
# running and keep their names. The node offers the resource tokpay_node_NODE_NAME
# (1000 units) so actors can be pinned to it, and its actors find their node's data
# dir in TOKPAY_NODE_DATA_DIR (= TOKPAY_DATA_DIR/nodes/NODE_NAME) and the node's
# name in TOKPAY_NODE_NAME.
#
# Environment (all optional):
#   TOKPAY_GCS_PORT            the GCS port workers and drivers attach to (default 6380)
#   TOKPAY_RAY_CLIENT_PORT     Ray Client server port (default 10001; Ray insists on
#                              one, TokPay drivers attach to the GCS port instead)
#   TOKPAY_STORAGE_NAMESPACE   this cluster's key prefix in Redis (default tokpay);
#                              must stay the same across head restarts
#   TOKPAY_REDIS_PASSWORD      the password given to cluster/redis.sh, if any
#   TOKPAY_HEALTH_CHECK_PERIOD_MS, TOKPAY_HEALTH_CHECK_TIMEOUT_MS,
#   TOKPAY_HEALTH_CHECK_FAILURE_THRESHOLD
#                              how fast the GCS declares a silent node dead: after
#                              THRESHOLD failed probes, one every PERIOD (defaults
#                              1000 ms, 1000 ms, 3; Ray's are 3000, 10000, 5)
#   TOKPAY_GCS_RECONNECT_TIMEOUT_S
#                              how long this node's raylet and workers wait for a
#                              restarted GCS before they give up and exit (default 60;
#                              give every node the same)
#   TOKPAY_DATA_DIR            root of this machine's TokPay data (default var/tokpay)
#   TOKPAY_NODE_IP             address other nodes reach this one by (default: Ray's guess)
#   TOKPAY_NUM_CPUS            logical CPUs this node offers (default 2)
#   TOKPAY_OBJECT_STORE_BYTES  object store size (default 100 MiB; Ray's minimum is 75 MiB)
#   TOKPAY_RAY_TEMP_DIR        Ray's session, log and socket dir (default Ray's /tmp/ray);
#                              keep it short: Unix socket paths are limited to 107 bytes
#   TOKPAY_RAY_BIN             the ray executable (default: ray on PATH)
#   RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S
#                              seconds `ray start` drains the node on SIGTERM
#                              before stopping it (default 0: stop at once)
#   RAY_AUTH_MODE              token (default) or disabled. With token, every node and
#                              driver needs the same token, from RAY_AUTH_TOKEN,
#                              RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (made here if
#                              none is found: copy it to the other machines).
set -euo pipefail

if [ "$#" -lt 1 ] || [ "$#" -gt 2 ]; then
    echo "usage: $0 REDIS_ADDRESS [NODE_NAME]" >&2
    exit 2
fi
redis_address="$1"
node_name="${2:-n0}"
case "$node_name" in
    "" | *[!A-Za-z0-9_]*)
        echo "node name must be letters, digits or _: '$node_name'" >&2
        exit 2
        ;;
esac
ray_bin="${TOKPAY_RAY_BIN:-ray}"

data_root="${TOKPAY_DATA_DIR:-var/tokpay}"
mkdir -p "$data_root/nodes/$node_name"
# Actors started by this node's raylet inherit these.
export TOKPAY_NODE_NAME="$node_name"
node_data_dir="$(cd "$data_root/nodes/$node_name" && pwd)"
export TOKPAY_NODE_DATA_DIR="$node_data_dir"

export RAY_REDIS_ADDRESS="$redis_address"
export RAY_external_storage_namespace="${TOKPAY_STORAGE_NAMESPACE:-tokpay}"
export RAY_USAGE_STATS_ENABLED=0
# How long this node's raylet and workers wait for a restarted GCS before they give up
# and exit. An environment variable, not --system-config: the raylet reads the
# system config from the GCS only after it connected (ray-project/ray#62074).
export RAY_gcs_rpc_server_reconnect_timeout_s="${TOKPAY_GCS_RECONNECT_TIMEOUT_S:-60}"
# On SIGTERM `ray start` first drains the node, waiting up to this long for it to go
# idle; a node holding detached actors (TokPay's replicas) never does, so a stop
# would just hang for the whole wait. TokPay fails over on its own: no drain.
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
if [ "$RAY_AUTH_MODE" = token ] && [ -z "${RAY_AUTH_TOKEN:-}" ] \
    && [ -z "${RAY_AUTH_TOKEN_PATH:-}" ] && [ ! -s "$HOME/.ray/auth_token" ]; then
    "$ray_bin" get-auth-token --generate >/dev/null
    chmod 600 "$HOME/.ray/auth_token"
    echo "head.sh: made a Ray auth token in $HOME/.ray/auth_token" >&2
fi

system_config="$(printf '{"health_check_period_ms": %d, "health_check_timeout_ms": %d, "health_check_failure_threshold": %d}' \
    "${TOKPAY_HEALTH_CHECK_PERIOD_MS:-1000}" \
    "${TOKPAY_HEALTH_CHECK_TIMEOUT_MS:-1000}" \
    "${TOKPAY_HEALTH_CHECK_FAILURE_THRESHOLD:-3}")"

args=(
    --head
    --block
    --port "${TOKPAY_GCS_PORT:-6380}"
    --system-config "$system_config"
    --include-dashboard=false
    --disable-usage-stats
    --ray-client-server-port "${TOKPAY_RAY_CLIENT_PORT:-10001}"
    --num-cpus "${TOKPAY_NUM_CPUS:-2}"
    --object-store-memory "${TOKPAY_OBJECT_STORE_BYTES:-104857600}"
    --resources "{\"tokpay_node_$node_name\": 1000}"
    # Port 0: the OS picks, so several nodes can share one machine.
    --node-manager-port 0
    --min-worker-port 0
    --max-worker-port 0
    --dashboard-agent-listen-port 0
    --metrics-export-port 0
)
if [ -n "${TOKPAY_REDIS_PASSWORD:-}" ]; then
    args+=(--redis-password "$TOKPAY_REDIS_PASSWORD")
fi
if [ -n "${TOKPAY_NODE_IP:-}" ]; then
    args+=(--node-ip-address "$TOKPAY_NODE_IP")
fi
if [ -n "${TOKPAY_RAY_TEMP_DIR:-}" ]; then
    mkdir -p "$TOKPAY_RAY_TEMP_DIR"
    args+=(--temp-dir "$TOKPAY_RAY_TEMP_DIR")
fi
# A head that died leaves its address in ray_current_cluster. `ray start --head` then
# refuses to start again if any process on this machine still names that GCS address
# (a worker node sharing the machine does), taking it for a running head.
ray_temp_dir="${TOKPAY_RAY_TEMP_DIR:-${RAY_TMPDIR:-${TMPDIR:-/tmp}}/ray}"
if [ -f "$ray_temp_dir/ray_current_cluster" ] \
    && [[ "$(cat "$ray_temp_dir/ray_current_cluster")" == *":${TOKPAY_GCS_PORT:-6380}" ]]; then
    rm -f "$ray_temp_dir/ray_current_cluster"
fi
exec "$ray_bin" start "${args[@]}"
