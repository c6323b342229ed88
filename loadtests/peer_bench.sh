#!/usr/bin/env bash
# The peer-bench comparison the README quotes: the official JavaScript client drives the Node
# reference, bare python-socketio and this gateway in turn, in one run (servers pinned to CPU 0,
# the load to CPU 1), every server on the gateway's heartbeat (10 s / 5 s). Usage:
#   loadtests/peer_bench.sh single            # one instance each
#   loadtests/peer_bench.sh cluster           # two instances each over a redis-server of the run's own
#   loadtests/peer_bench.sh rcluster          # the gateway's cluster case over one Redis, then over a
#                                             # three-master Redis Cluster (redis+cluster://), in one run
#   loadtests/peer_bench.sh dashboard         # the gateway with no page open, then with /admin/ui open
#   loadtests/peer_bench.sh hooks             # the gateway without a hook, then asking a local hook on every move
# Extra arguments after the mode go to peer-bench's run (e.g. --clients 500 --seconds 10).
# peer-bench is ../shared/peer-bench where it ships beside the repository (the judge of the
# figures the README quotes), else loadtests/peer-bench, a byte-for-byte copy of it, so that a
# fresh clone reproduces them; PEER_BENCH_DIR chooses.
# BARE=0 leaves bare python-socketio out (it is slow to run and far behind).
# A benchmark never touches a Redis it did not start: cluster mode starts one on a free port.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-single}; shift || true
bench=${PEER_BENCH_DIR:-../shared/peer-bench}
[ -n "${PEER_BENCH_DIR:-}" ] || [ -x "$bench/run" ] || bench=loadtests/peer-bench
run=$bench/run
[ -x "$run" ] || { echo "peer_bench.sh: $run not found" >&2; exit 1; }
export BENCH_SECRET=${BENCH_SECRET:-peer-bench-secret-0123456789abcdef0123}
export GAMEGW_JWT_SECRET=$BENCH_SECRET
export PING_MS=${PING_MS:-10000} PING_TIMEOUT_MS=${PING_TIMEOUT_MS:-5000}
export PATH="$PWD/.venv/bin:$PATH"
node_ref="node $bench/node/reference_server.js"
bare=()
if [ "${BARE:-1}" != 0 ]; then bare=(bare="$PWD/.venv/bin/python $bench/python/bare_server.py {port}"); fi
case "$mode" in
  single)
    exec "$run" --clients 1000 --room-size 10 --rate 2 --seconds 15 "$@" \
      node="$node_ref" "${bare[@]}" gateway='gamectl serve --config configs/bench.toml --port {port}' ;;
  cluster)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    dir=$(mktemp -d)
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" >/dev/null &
    redis_pid=$!
    trap 'kill $redis_pid 2>/dev/null; rm -rf "$dir"' EXIT
    until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done
    "$run" --clients 1000 --room-size 10 --rate 2 --seconds 15 --instances 2 --redis "redis://127.0.0.1:$port/0" "$@" \
      node="$node_ref" "${bare[@]}" \
      gateway='gamectl serve --config configs/bench.toml --port {port} --redis $REDIS_URL' ;;
  rcluster)  # Redis Cluster's cost: the cluster case over one redis-server, then over three masters
    free() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
    dir=$(mktemp -d) pids=() nodes=()
    trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$dir"' EXIT
    one=$(free)
    redis-server --port "$one" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" >/dev/null &
    pids+=($!)
    for k in 1 2 3; do
      port=$(free); mkdir "$dir/$k"
      redis-server --port "$port" --cluster-port "$(free)" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$dir/$k" --cluster-enabled yes --cluster-config-file nodes.conf >/dev/null &
      pids+=($!) nodes+=("127.0.0.1:$port")
    done
    for node in "${nodes[@]}" "127.0.0.1:$one"; do
      until redis-cli -p "${node##*:}" ping >/dev/null 2>&1; do sleep 0.05; done
    done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
    until redis-cli -p "${nodes[0]##*:}" cluster info | grep -q cluster_state:ok; do sleep 0.1; done
    cluster_url="redis+cluster://$(IFS=,; echo "${nodes[*]}")/0"
    "$run" --clients 1000 --room-size 10 --rate 2 --seconds 15 --instances 2 --redis "redis://127.0.0.1:$one/0" "$@" \
      node="$node_ref" \
      one='gamectl serve --config configs/bench.toml --port {port} --redis $REDIS_URL' \
      rcluster="gamectl serve --config configs/bench.toml --port {port} --redis $cluster_url" ;;
  dashboard)  # the dashboard's own cost: the same gateway without, then with, a page open on it
    exec "$run" --clients 1000 --room-size 10 --rate 2 --seconds 15 "$@" \
      node="$node_ref" closed='gamectl serve --config configs/bench.toml --port {port}' \
      open='bash loadtests/serve_with_dashboard.sh {port}' ;;
  hooks)  # a backend hook's cost: the same gateway without, then with, a hook on `move` (hook_server.py)
    exec "$run" --clients 1000 --room-size 10 --rate 2 --seconds 15 "$@" \
      node="$node_ref" nohook='gamectl serve --config configs/bench.toml --port {port}' \
      hook='bash loadtests/serve_with_hook.sh {port}' ;;
  *) echo "usage: $0 single|cluster|rcluster|dashboard|hooks [peer-bench args]" >&2; exit 2 ;;
esac
