#!/usr/bin/env bash
# Redis that backs the Ray head's GCS fault tolerance: the head can die and come back
# (same GCS port) and reload the cluster's actors, names and nodes from here. Every
# write is fsynced to the append-only file before Redis answers, so a power cut on
# this machine loses nothing the GCS was told had been stored. Runs in the foreground.
#
#   redis.sh DATA_DIR PORT
#
# Environment:
#   TOKPAY_REDIS_BIND      addresses to listen on (default 127.0.0.1; set the address
#                          the head machine reaches this one by)
#   TOKPAY_REDIS_PASSWORD  password clients must give (give the head the same one);
#                          needed whenever the bind address is not loopback
#   TOKPAY_REDIS_BIN       the redis-server binary (default: redis-server on PATH)
set -euo pipefail
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/common.sh"

tokpay_check_args 2 2 "DATA_DIR PORT" "$@"
data_dir="$1"
mkdir -p "$data_dir"

args=(
    --port "$2"
    --bind "${TOKPAY_REDIS_BIND:-127.0.0.1}"
    --dir "$data_dir"
    --daemonize no
    --logfile ""
    --appendonly yes
    --appendfsync always
    # The append-only file is the durable copy; no periodic RDB snapshots besides.
    --save ""
)
if [ -n "${TOKPAY_REDIS_PASSWORD:-}" ]; then
    args+=(--requirepass "$TOKPAY_REDIS_PASSWORD")
fi
exec "${TOKPAY_REDIS_BIN:-redis-server}" "${args[@]}"
