#!/usr/bin/env bash
# Builds everything weft runs: the eBPF object (bpf/), the native shim (native/) and the
# TypeScript (src/ -> dist/). CI, the Dockerfile and the README's commands all call this.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build

multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
for src in bpf/*.bpf.c; do
  obj="build/$(basename "${src%.c}").o"
  clang -O2 -g -Wall -Werror -target bpf -I"/usr/include/${multiarch}" -c "$src" -o "$obj"
done

cc -O2 -g -Wall -Wextra -Werror -fPIC -shared -o build/libweft.so native/weft_native.c -lbpf

npx tsc -p tsconfig.json
