# shellcheck shell=bash
# assert.sh - how the lab reports outcomes. One line per assertion on stdout:
#   PASS <name>: <figure>     the outcome held; the figure says what was measured
#   FAIL <name>: <figure>     it did not
#   SKIP <name>: <reason>     it could not run here (e.g. no `fwagent run` yet)
# and, last, the summary `N passed, M failed` alone on its line. Progress messages go to
# stderr so stdout stays machine-readable.

LAB_PASSED=0
LAB_FAILED=0
LAB_SKIPPED=0

lab_log() { printf '[lab %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

lab_pass() { LAB_PASSED=$((LAB_PASSED + 1)); printf 'PASS %s: %s\n' "$1" "$2"; }
lab_fail() { LAB_FAILED=$((LAB_FAILED + 1)); printf 'FAIL %s: %s\n' "$1" "$2"; }
lab_skip() { LAB_SKIPPED=$((LAB_SKIPPED + 1)); printf 'SKIP %s: %s\n' "$1" "$2"; }

# lab_check NAME FIGURE COMMAND...: PASS when COMMAND succeeds, FAIL otherwise.
lab_check() {
  local name=$1 figure=$2; shift 2
  if "$@"; then lab_pass "$name" "$figure"; else lab_fail "$name" "$figure"; fi
}

# lab_summary: prints the final line; returns non-zero when anything failed.
lab_summary() {
  [ "$LAB_SKIPPED" -gt 0 ] && lab_log "$LAB_SKIPPED assertion(s) skipped"
  printf '%d passed, %d failed\n' "$LAB_PASSED" "$LAB_FAILED"
  [ "$LAB_FAILED" -eq 0 ]
}
