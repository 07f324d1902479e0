#!/usr/bin/env bash
# Installs the Debian 12 packages the build and the tests need. Idempotent: installs only what is
# missing, and runs apt-get update only when something is.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config git
  libabsl-dev nlohmann-json3-dev libpcre2-dev libutf8proc-dev zlib1g-dev libcli11-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  libcpp-httplib-dev  # the router's OpenAI-compatible HTTP API
  prometheus-cpp-dev libucx-dev ucx-utils libgoogle-glog-dev
  openssl  # moectl cluster up and the tests make throwaway mTLS certificates with it
  python3 python3-numpy
)
if [[ "${1:-}" == "--test" ]]; then
  # Oracles and tools used by the test suite only.
  packages+=(nodejs npm python3-grpcio python3-protobuf prometheus unzip)
  # torch 1.13 for the oracle reference self-test and the sampler-fixture check (they must run, not skip).
  packages+=(python3-torch)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node/npm may come from elsewhere than Debian (e.g. a preinstalled toolchain): accept those.
if command -v node >/dev/null && command -v npm >/dev/null; then
  filtered=()
  for p in "${missing[@]}"; do [[ "$p" == nodejs || "$p" == npm ]] || filtered+=("$p"); done
  missing=("${filtered[@]}")
fi
if ((${#missing[@]})); then
  echo "install_deps: installing ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -ne 0 ]] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
