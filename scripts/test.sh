#!/usr/bin/env bash
# Installs what the tests need, builds, and runs every test but the GPU ones; then builds the unit
# tests with AddressSanitizer + UndefinedBehaviorSanitizer and runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh --test
scripts/build.sh
ctest --test-dir build --output-on-failure -j 2 -LE gpu --timeout 900

if [[ "${MOE_SKIP_SANITIZERS:-0}" != 1 ]]; then
  MOE_BUILD_DIR=build-asan MOE_BUILD_TYPE=RelWithDebInfo scripts/build.sh -DMOE_SANITIZE=ON -DMOE_BUILD_BENCH=OFF \
    -DMOE_WITH_CUDA=OFF
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-asan --output-on-failure -j 2 -L unit --timeout 900
fi
