#!/usr/bin/env bash
# `gamectl serve` on port $1 (configs/bench.toml) asking a local backend hook on every move: the
# "hook" candidate of `peer_bench.sh hooks`. The hook (loadtests/hook_server.py, which says yes
# to everything) is started outside this process tree (its launcher exits) and pinned to CPU 1
# with the load, so the server's CPU that peer-bench reads is the gateway's own: making the
# calls, not answering them.
set -euo pipefail
port=$1
hook_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
pidfile="$dir/hook.pid"
gateway=
stop() {
  [ -z "$gateway" ] || kill "$gateway" 2>/dev/null || true
  hook=$(cat "$pidfile" 2>/dev/null || true)
  if [ -n "$hook" ] && kill "$hook" 2>/dev/null; then  # not our child: wait for it by polling
    for _ in $(seq 50); do kill -0 "$hook" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -rf "$dir"
}
trap stop EXIT
trap 'exit 143' TERM INT
(
  setsid taskset -c 1 python loadtests/hook_server.py --port "$hook_port" >/dev/null 2>&1 &
  echo $! >"$pidfile"
)
for _ in $(seq 200); do
  curl -sf -X POST "http://127.0.0.1:$hook_port/" >/dev/null && break
  sleep 0.05
done
curl -sf -X POST "http://127.0.0.1:$hook_port/" >/dev/null || { echo "serve_with_hook.sh: the hook did not start" >&2; exit 1; }
GAMEGW_HOOKS_URL="http://127.0.0.1:$hook_port/gamegw" GAMEGW_HOOKS_EVENTS=move \
  gamectl serve --config configs/bench.toml --port "$port" &
gateway=$!
wait $gateway
