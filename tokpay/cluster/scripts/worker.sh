#!/usr/bin/env bash
# A Ray worker node of a TokPay cluster, in the foreground (one per machine).
#
#   worker.sh HEAD_ADDRESS NODE_NAME        e.g. cluster/worker.sh 10.0.0.5:6380 n1
#
# HEAD_ADDRESS is the head's GCS address (host:TOKPAY_GCS_PORT). While the head is down
# the raylet keeps its actors running and reconnects when the head is back, if that
# takes no longer than TOKPAY_GCS_RECONNECT_TIMEOUT_S. The environment it reads, and
# what every node offers, are in common.sh; with RAY_AUTH_MODE=token it needs the
# head's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token).
set -euo pipefail
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/common.sh"

tokpay_check_args 2 2 "HEAD_ADDRESS NODE_NAME" "$@"
head_address="$1"
tokpay_node_setup "$2"

exec "$ray_bin" start --address "$head_address" "${node_args[@]}"
