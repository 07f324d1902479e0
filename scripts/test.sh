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
  # The UCX transport tests are left out of this pass: under ASan's timing, Debian's UCX 1.13 TCP
  # transport sometimes aborts inside libuct (`comp->count > 0` assertion) when a peer is
  # destroyed mid-exchange. They run in the pass above; see the issue note.
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-asan --output-on-failure -j 2 -L unit -E 'UcxTransport|UcxMoeRound' --timeout 900
fi
