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
runner="$py -m pytest -x -q -p no:cacheprovider -p asyncio -p pytest_timeout -o addopts="

backup=$(mktemp -d)
restore() {
  for m in "${modules[@]}"; do
    saved="$backup/$(echo "$m" | tr / _)"
    if [ -f "$saved" ]; then cp "$saved" "$m"; rm -f "$m.bak"; fi
  done
  rm -rf "$backup"
}
trap restore EXIT
trap 'exit 130' INT TERM

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
  nice -n 10 .venv/bin/mutmut run --paths-to-mutate "$module" --no-progress --simple-output \
    "${only[@]}" --runner "$runner $tests" || [ $? -ne 1 ]
  "$py" "$here/score.py" "$module"
done
