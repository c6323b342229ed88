#!/usr/bin/env bash
# CI's mutation step: mutmut over the lines a change adds to the guarantee modules (modules.txt),
# each module against its fast tests, within a time budget; fails when a module's score over
# those lines is under the threshold. Nothing to do when no guarantee module changed.
#   tools/mutation/changed.sh [BASE]   (default: $MUTATION_BASE, else the merge base with
#                                       origin/main, else HEAD~1)
# MUTATION_BUDGET_S (default 1200) caps the run: what it did not reach is reported, not failed.
# MUTATION_MIN (default 85) is the score, in percent, under which a module fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=tools/mutation
base=${1:-${MUTATION_BASE:-}}
if [ -z "$base" ]; then
  base=$(git merge-base HEAD origin/main 2>/dev/null || true)
  # on main itself (or without origin/main): the last commit's change
  if [ -z "$base" ] || [ "$base" = "$(git rev-parse HEAD)" ]; then base=$(git rev-parse -q --verify HEAD~1 || true); fi
fi
if [ -z "$base" ]; then echo "mutation: no base to compare with (a shallow clone?): skipped"; exit 0; fi

mapfile -t guarded < <(awk -F'|' '$0 !~ /^#/ && NF >= 2 { gsub(/ /, "", $1); gsub(/ /, "", $2); if ($2 != "") print $1 }' "$here/modules.txt")
work=$(mktemp -d)
# the scores are over this change's mutants only: a cache of earlier runs waits aside meanwhile
[ ! -e .mutmut-cache ] || mv .mutmut-cache "$work/saved-cache"
trap '[ ! -e "$work/saved-cache" ] || mv "$work/saved-cache" .mutmut-cache; rm -rf "$work"' EXIT
changed=()
for module in "${guarded[@]}"; do
  git diff -U0 "$base" -- "$module" > "$work/change.diff"
  if grep -q '^+[^+]' "$work/change.diff"; then changed+=("$module"); fi
done
if [ ${#changed[@]} -eq 0 ]; then echo "mutation: no guarantee module changed since $base"; exit 0; fi
git diff -U0 "$base" -- "${changed[@]}" > "$work/change.diff"

echo "mutation: lines added since $(git rev-parse --short "$base") in ${changed[*]}"
status=0
timeout --signal=INT "${MUTATION_BUDGET_S:-1200}" "$here/run.sh" --patch "$work/change.diff" "${changed[@]}" || status=$?
if [ $status -eq 124 ] || [ $status -eq 130 ]; then
  echo "mutation: the budget (${MUTATION_BUDGET_S:-1200} s) ran out; what was reached:"
elif [ $status -ne 0 ]; then
  exit $status
fi
.venv/bin/python "$here/score.py" --survivors --min "${MUTATION_MIN:-85}" "${changed[@]}"
