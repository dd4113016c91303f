#!/usr/bin/env bash
# Idempotent set-up of a fresh machine for TokPay: system packages, then a
# virtual environment with the project and its dev tools. Safe to run again;
# it skips what is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV=".venv"
STAMP="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"

need_apt=()
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
# Redis keeps the Ray GCS tables of a multi-node cluster (cluster/redis.sh).
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# The browser tests drive Debian's Chromium (Playwright cannot download its own here).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
# `cluster up --netns` and its partition drills: namespaces, veths, bridge (iproute2) and
# the one-way cut (nftables).
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
# Node runs the dev OpenID provider; npm installs the web app's browser assets.
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
if ((${#need_apt[@]})); then
    echo "setup: installing system packages: ${need_apt[*]}"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ]; then
    echo "setup: installing TokPay and its dependencies into $VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -e '.[dev]'
    rm -f "$VENV"/.installed-*
    touch "$STAMP"
fi

# Web assets and the dev OpenID provider, pinned by package-lock.json; the files
# the browser loads are copied into the app's static dir (no CDN at run time).
NPM_STAMP="node_modules/.installed-$(sha256sum package-lock.json | cut -c1-16)"
if [ ! -f "$NPM_STAMP" ]; then
    echo "setup: installing npm packages (package-lock.json)"
    npm ci --no-audit --no-fund --loglevel=error
    touch "$NPM_STAMP"
fi
VENDOR="tokpay/web/static/vendor"
mkdir -p "$VENDOR"
for asset in \
    node_modules/htmx.org/dist/htmx.min.js \
    node_modules/chart.js/dist/chart.umd.min.js \
    node_modules/chartjs-adapter-date-fns/dist/chartjs-adapter-date-fns.bundle.min.js \
    node_modules/swagger-ui-dist/swagger-ui-bundle.js \
    node_modules/swagger-ui-dist/swagger-ui.css; do
    cmp -s "$asset" "$VENDOR/$(basename "$asset")" || cp "$asset" "$VENDOR/"
done
