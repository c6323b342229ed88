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
#   loadtests/peer_bench.sh sentinel          # two instances over one master (+ a replica): straight to it, then
#                                             # through Sentinel, then through Sentinel with redis_wait_replicas=1
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
  sentinel)  # what Sentinel and WAIT cost: one master, one replica, three sentinels of the run's own
    free() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
    dir=$(mktemp -d)
    master=$(free); replica=$(free); pids=()
    trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$dir"' EXIT
    for p in "$master" "$replica"; do
      mkdir "$dir/$p"
      extra=(); [ "$p" = "$replica" ] && extra=(--replicaof 127.0.0.1 "$master")
      redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir/$p" "${extra[@]}" >/dev/null &
      pids+=($!)
      until redis-cli -p "$p" ping >/dev/null 2>&1; do sleep 0.05; done
    done
    until redis-cli -p "$replica" info replication | grep -q 'master_link_status:up'; do sleep 0.1; done
    nodes=()
    for _ in 1 2 3; do
      p=$(free)
      printf 'port %s\nbind 127.0.0.1\ndir %s\nsentinel monitor gamegw 127.0.0.1 %s 2\n' "$p" "$dir" "$master" \
        > "$dir/sentinel-$p.conf"
      redis-server "$dir/sentinel-$p.conf" --sentinel >/dev/null &
      pids+=($!)
      until redis-cli -p "$p" sentinel get-master-addr-by-name gamegw 2>/dev/null | grep -q 127.0.0.1; do sleep 0.05; done
      nodes+=("127.0.0.1:$p")
    done
    export SENTINEL_URL="redis+sentinel://$(IFS=,; echo "${nodes[*]}")/0/gamegw"
    "$run" --clients 1000 --room-size 10 --rate 2 --seconds 15 --instances 2 --redis "redis://127.0.0.1:$master/0" "$@" \
      direct='gamectl serve --config configs/bench.toml --port {port} --redis $REDIS_URL' \
      sentinel='gamectl serve --config configs/bench.toml --port {port} --redis $SENTINEL_URL' \
      wait1='env GAMEGW_REDIS_WAIT_REPLICAS=1 gamectl serve --config configs/bench.toml --port {port} --redis $SENTINEL_URL' ;;
  *) echo "usage: $0 single|cluster|rcluster|dashboard|hooks|sentinel [peer-bench args]" >&2; exit 2 ;;
esac
