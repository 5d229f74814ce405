#!/usr/bin/env bash
# Installs what weft needs on a Debian machine, only where missing, then builds.
# Used by the README's two commands and by CI (no stdin, as root).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v clang >/dev/null || need+=(clang)
command -v llvm-strip >/dev/null || need+=(llvm)
[ -e /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
ldconfig -p | grep -q 'libbpf.so.1 ' || need+=(libbpf1)
command -v ip >/dev/null || need+=(iproute2)
command -v cc >/dev/null || need+=(gcc)
command -v make >/dev/null || need+=(make)
[ -e /usr/include/linux/bpf.h ] || need+=(linux-libc-dev)
command -v bpftool >/dev/null || need+=(bpftool)
command -v tcpdump >/dev/null || need+=(tcpdump)
command -v tshark >/dev/null || need+=(tshark)
[ -e /usr/lib/python3/dist-packages/h2 ] || need+=(python3-h2)
command -v iperf3 >/dev/null || need+=(iperf3)
# The side-by-side benchmark (bench/crossnode.ts): peers, latency tool, their keys.
command -v haproxy >/dev/null || need+=(haproxy)
command -v stunnel4 >/dev/null || need+=(stunnel4)
command -v sockperf >/dev/null || need+=(sockperf)
command -v openssl >/dev/null || need+=(openssl)
command -v iptables >/dev/null || need+=(iptables)
if [ "${#need[@]}" -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q "${need[@]}"
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: npm ci"
  npm ci --no-audit --no-fund
fi

bash scripts/build.sh
