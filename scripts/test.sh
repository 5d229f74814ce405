#!/usr/bin/env bash
# The README's test command: installs what is missing, builds, runs the whole ava suite as
# TAP and ends with the plain line "N passed, N failed". Extra arguments go to ava (e.g. a
# single compiled test file).
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "weft's tests need root (network namespaces, BPF): run as root" >&2
  echo "0 passed, 1 failed"
  exit 1
fi
if ! bash scripts/setup.sh; then
  echo "setup or build failed" >&2
  echo "0 passed, 1 failed"
  exit 1
fi

mkdir -p .test-results
tap=.test-results/ava.tap
npx ava --tap "$@" > "$tap" 2> .test-results/ava.stderr
status=$?
cat "$tap"
if [ -s .test-results/ava.stderr ]; then
  echo "--- ava stderr ---"
  tail -n 200 .test-results/ava.stderr
fi
node scripts/tap-summary.mjs "$tap" "$status"
