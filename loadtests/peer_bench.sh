#!/usr/bin/env bash
# The peer-bench comparison the README quotes: the official JavaScript client drives the Node
# reference, bare python-socketio and this gateway in turn, in one run (servers pinned to CPU 0,
# the load to CPU 1). Usage:
#   loadtests/peer_bench.sh single            # one instance each
#   loadtests/peer_bench.sh cluster [URL]     # two instances each over Redis (default 127.0.0.1:6379/0)
# Extra arguments after the mode go to ../shared/peer-bench/run (e.g. --clients 500 --seconds 10).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-single}; shift || true
redis=redis://127.0.0.1:6379/0
if [ "$mode" = cluster ] && [ $# -gt 0 ] && [[ "$1" == redis* ]]; then redis=$1; shift; fi
export BENCH_SECRET=${BENCH_SECRET:-peer-bench-secret-0123456789abcdef0123}
export GAMEGW_JWT_SECRET=$BENCH_SECRET
export PATH="$PWD/.venv/bin:$PATH"
run=../shared/peer-bench/run
node_ref="node ../shared/peer-bench/node/reference_server.js"
bare="$PWD/.venv/bin/python ../shared/peer-bench/python/bare_server.py {port}"
case "$mode" in
  single)
    exec "$run" --clients 1000 --room-size 10 --rate 2 --seconds 15 "$@" \
      node="$node_ref" bare="$bare" gateway='gamectl serve --config configs/bench.toml --port {port}' ;;
  cluster)
    redis-cli -u "$redis" flushdb >/dev/null
    exec "$run" --clients 1000 --room-size 10 --rate 2 --seconds 15 --instances 2 --redis "$redis" "$@" \
      node="$node_ref" bare="$bare" \
      gateway='gamectl serve --config configs/bench.toml --port {port} --redis $REDIS_URL' ;;
  *) echo "usage: $0 single|cluster [redis-url] [peer-bench args]" >&2; exit 2 ;;
esac
