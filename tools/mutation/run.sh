#!/usr/bin/env bash
# Mutation testing (mutmut 2.x, in place) of the guarantee modules, one at a time, each against the
# fast tests tools/mutation/modules.txt names for it; prints each module's score (score.py).
#   tools/mutation/run.sh [--patch FILE] [MODULE ...]   (no module: every module in modules.txt)
# A module whose line in modules.txt names functions is mutated in those only (patch.py); --patch
# FILE (a unified diff, as `git diff -U0`) restricts every module to the lines that FILE adds.
# Results accumulate in .mutmut-cache (ignored by git): `.venv/bin/mutmut show ID` shows a mutant,
# `.venv/bin/python tools/mutation/score.py --survivors` lists the survivors. A module is restored
# from a copy however the run ends, so an interrupted run never leaves a mutant behind.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=tools/mutation
py=.venv/bin/python
[ -x .venv/bin/mutmut ] || { echo "mutation: .venv/bin/mutmut missing: .venv/bin/pip install -e '.[mutation]'" >&2; exit 2; }

patch_file=""
if [ "${1:-}" = "--patch" ]; then patch_file=$2; shift 2; fi

field() {  # field MODULE N: column N of MODULE's line in modules.txt
  awk -F'|' -v m="$1" -v n="$2" '$0 !~ /^#/ && NF >= 2 { gsub(/ /, "", $1); if ($1 == m) print $n }' "$here/modules.txt"
}

modules=("$@")
if [ ${#modules[@]} -eq 0 ]; then
  mapfile -t modules < <(awk -F'|' '$0 !~ /^#/ && NF >= 2 { gsub(/ /, "", $1); print $1 }' "$here/modules.txt")
fi

# pytest's start dominates a run of these tests: load only the plugins they use
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
# looptime: the timer tests (expiry, pings, ticks) run on a fast-forwarded loop; its marks are errors without it
runner="$py $here/pytest_any_failure.py -x -q -p no:cacheprovider -p asyncio -p pytest_timeout -p looptime_plugin -p looptime_chronometers -p looptime_timeproxies -o addopts="

backup=$(mktemp -d)
restore() {
  for m in "${modules[@]}"; do
    saved="$backup/$(echo "$m" | tr / _)"
    if [ -f "$saved" ]; then cp "$saved" "$m"; rm -f "$m.bak"; fi
  done
  rm -rf "$backup"
}
# mutmut 2 now and then loses its worker process (the mutant it held stays untested) and then
# waits for it forever: mutmut is ended when it has had no child but its resource tracker for 30 s
mutmut_run() {
  nice -n 10 .venv/bin/mutmut run "$@" &
  running=$!
  local idle=0 status=0
  while kill -0 "$running" 2>/dev/null; do
    sleep 2
    if busy "$running"; then idle=0; else idle=$((idle + 2)); fi
    if [ $idle -ge 30 ]; then echo "mutation: mutmut lost its worker: ended" >&2; kill "$running"; fi
  done
  wait "$running" || status=$?
  running=""
  return $status
}
busy() {
  local child
  for child in $(pgrep -P "$1"); do
    grep -q resource_tracker "/proc/$child/cmdline" 2>/dev/null || return 0
  done
  return 1
}

running=""
stop() {  # an interrupted run (CI's budget): stop mutmut and its test run, then restore
  if [ -n "$running" ]; then kill $(pgrep -P "$running") "$running" 2>/dev/null || true; wait "$running" || true; fi
  exit 130
}
trap restore EXIT
trap stop INT TERM

for module in "${modules[@]}"; do
  if ! grep -q "^$module " "$here/modules.txt"; then echo "mutation: $module is not in $here/modules.txt" >&2; exit 2; fi
  tests=$(field "$module" 2)
  if [ -z "${tests// /}" ]; then echo "mutation: $module: no fast test guards it yet (modules.txt), skipped"; continue; fi
  cp "$module" "$backup/$(echo "$module" | tr / _)"
  only=()
  functions=$(field "$module" 3)
  if [ -n "$patch_file" ]; then
    only=(--use-patch-file "$patch_file")
  elif [ -n "${functions// /}" ]; then
    # shellcheck disable=SC2086  # a list of names
    "$py" "$here/patch.py" "$module" $functions > "$backup/functions.diff"
    only=(--use-patch-file "$backup/functions.diff")
  fi
  echo "mutation: $module${functions:+ (${functions# })} against$tests"
  # exit status 2/4/8 = survivors/timeouts/suspicious: reported by score.py, not a failure of the run
  status=0
  mutmut_run --paths-to-mutate "$module" --no-progress --simple-output "${only[@]}" --runner "$runner $tests" \
    || status=$?
  [ $status -ne 1 ] || exit 1
  # what mutmut left untested (mutants of repeated lines, a lost worker's), one by one
  nice -n 10 "$py" "$here/untested.py" "$module" "$runner $tests" >/dev/null &
  running=$!
  wait "$running" || echo "mutation: untested.py failed on $module" >&2
  running=""
  "$py" "$here/score.py" "$module"
done
