#!/usr/bin/env bash
# Every test of every environment (what `hatch run all` and CI run): the default environment's pytest, the docs
# environment (snippets, walk-through, strict site build) and the xla environment. Each runs even when an earlier
# one failed; the summary names each result, and the exit status is non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."

names=() results=()
run() {
    local name=$1; shift
    echo "== environment ${name}: $*"
    "$@"
    local status=$?
    names+=("$name") results+=("$status")
}

run default pytest "$@"
run docs hatch run docs:test
run xla hatch run xla:test

passed=0 failed=0
echo
echo "== summary"
for i in "${!names[@]}"; do
    if [[ ${results[$i]} -eq 0 ]]; then
        passed=$((passed + 1)); echo "  ${names[$i]}: passed"
    else
        failed=$((failed + 1)); echo "  ${names[$i]}: FAILED (exit ${results[$i]})"
    fi
done
echo "environments: ${passed} passed, ${failed} failed"
[[ $failed -eq 0 ]]
