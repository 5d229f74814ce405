#!/usr/bin/env bash
# The README's "run it" command: installs what is missing, builds, and runs `weft demo`
# (a 2-node mesh in network namespaces, torn down on exit). Extra arguments go to the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "weft demo needs root (network namespaces, BPF): run it with sudo" >&2
  exit 1
fi
bash scripts/setup.sh >&2
exec node dist/src/cli/main.js demo "$@"
