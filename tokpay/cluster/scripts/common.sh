# Shared by head.sh, worker.sh and redis.sh (sourced, not run): the argument check and
# the set-up every Ray node of a TokPay cluster needs.
#
# A node offers the resource tokpay_node_NODE_NAME (1000 units) so actors can be pinned
# to it, and its actors find their node's data dir in TOKPAY_NODE_DATA_DIR
# (= TOKPAY_DATA_DIR/nodes/NODE_NAME) and the node's name in TOKPAY_NODE_NAME.
#
# Environment every node reads (all optional):
#   TOKPAY_GCS_RECONNECT_TIMEOUT_S
#                              how long this node's raylet and workers wait for a
#                              restarted GCS before they give up and exit (default 600:
#                              a node outlives a head outage of minutes, its replicas
#                              serving meanwhile; give every node the same)
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
#                              RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token.
#   TOKPAY_REDIS_PASSWORD_FILE a file holding TOKPAY_REDIS_PASSWORD (redis.sh, head.sh),
#                              read when that is unset

if [ -z "${TOKPAY_REDIS_PASSWORD:-}" ] && [ -n "${TOKPAY_REDIS_PASSWORD_FILE:-}" ]; then
    TOKPAY_REDIS_PASSWORD="$(cat "$TOKPAY_REDIS_PASSWORD_FILE")"
fi

# tokpay_check_args MIN MAX USAGE ARG...: exit 2 with USAGE unless MIN <= #ARG <= MAX.
tokpay_check_args() {
    local min="$1" max="$2" usage="$3"
    shift 3
    if [ "$#" -lt "$min" ] || [ "$#" -gt "$max" ]; then
        echo "usage: $0 $usage" >&2
        exit 2
    fi
}

# tokpay_node_setup NODE_NAME: check the name, make the node's data dir, export what
# `ray start` and the node's actors read, and set ray_bin and node_args (the
# `ray start` arguments every node takes).
tokpay_node_setup() {
    local node_name="$1"
    case "$node_name" in
        "" | *[!A-Za-z0-9_]*)
            echo "node name must be letters, digits or _: '$node_name'" >&2
            exit 2
            ;;
    esac
    ray_bin="${TOKPAY_RAY_BIN:-ray}"

    local data_root="${TOKPAY_DATA_DIR:-var/tokpay}"
    mkdir -p "$data_root/nodes/$node_name"
    # Actors started by this node's raylet inherit these.
    export TOKPAY_NODE_NAME="$node_name"
    TOKPAY_NODE_DATA_DIR="$(cd "$data_root/nodes/$node_name" && pwd)"
    export TOKPAY_NODE_DATA_DIR

    export RAY_USAGE_STATS_ENABLED=0
    # How long this node's raylet and workers wait for a restarted GCS before they give
    # up and exit. An environment variable, not --system-config: the raylet reads the
    # system config from the GCS only after it connected (ray-project/ray#62074).
    export RAY_gcs_rpc_server_reconnect_timeout_s="${TOKPAY_GCS_RECONNECT_TIMEOUT_S:-600}"
    # On SIGTERM `ray start` first drains the node, waiting up to this long for it to go
    # idle; a node holding detached actors (TokPay's replicas) never does, so a stop
    # would just hang for the whole wait. TokPay fails over on its own: no drain.
    export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}"
    export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
    # Ray runs its workers at niceness 15 by default. TokPay's replicas are workers, and
    # they heartbeat and renew their leases every 0.2 s: at 15, any busy process at the
    # normal priority (a gateway starting, a load generator) starved them into false
    # failovers on a 2-core machine. They run at the normal priority instead.
    export RAY_worker_niceness="${RAY_worker_niceness:-0}"

    node_args=(
        --block
        --disable-usage-stats
        --num-cpus "${TOKPAY_NUM_CPUS:-2}"
        --object-store-memory "${TOKPAY_OBJECT_STORE_BYTES:-104857600}"
        --resources "{\"tokpay_node_$node_name\": 1000}"
        # Port 0: the OS picks, so several nodes can share one machine.
        --node-manager-port 0
        --min-worker-port 0
        --max-worker-port 0
        --dashboard-agent-listen-port 0
        --metrics-export-port 0
        # The log monitor tails every worker log file on the node to stream it to drivers.
        # TokPay's drivers take no worker logs (log_to_driver=False) and every replica ever
        # started leaves its files: its CPU grew with each failover. Logs stay on disk.
        --include-log-monitor false
    )
    if [ -n "${TOKPAY_NODE_IP:-}" ]; then
        node_args+=(--node-ip-address "$TOKPAY_NODE_IP")
    fi
    if [ -n "${TOKPAY_RAY_TEMP_DIR:-}" ]; then
        mkdir -p "$TOKPAY_RAY_TEMP_DIR"
        node_args+=(--temp-dir "$TOKPAY_RAY_TEMP_DIR")
    fi
}
