#!/usr/bin/env bash
# `gamectl serve` on port $1 (configs/bench.toml) with the live dashboard open on it in headless
# Chromium: the "page open" candidate of `peer_bench.sh dashboard`. Chromium is started outside
# this process tree (its launcher exits) and pinned to CPU 1 with the load, so the server's CPU
# that peer-bench reads is the gateway's own, serving the page's stream included.
set -euo pipefail
port=$1
gamectl serve --config configs/bench.toml --port "$port" &
gateway=$!
profile=$(mktemp -d)
pidfile="$profile/chromium.pid"
trap 'kill -- -"$(cat "$pidfile" 2>/dev/null)" 2>/dev/null; kill $gateway 2>/dev/null; rm -rf "$profile"' EXIT TERM INT
(
  until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do sleep 0.1; done
  url=$(gamectl dashboard --url "http://127.0.0.1:$port" --ttl 1h --json |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["url"])')
  setsid taskset -c 1 chromium --headless --no-sandbox --disable-gpu --user-data-dir="$profile" \
    "$url" >/dev/null 2>&1 &
  echo $! >"$pidfile"
) &
wait $gateway
