#!/usr/bin/env bash
# Installs what the tests need, builds, and runs every test but the GPU ones; then builds the unit
# tests with AddressSanitizer + UndefinedBehaviorSanitizer and runs them.
#
# Every ctest run fails on zero tests (--no-tests=error) and on any skipped or disabled test that
# tests/skip_allowlist.txt does not allow (scripts/check_skips.py over ctest's JUnit output): a skip
# passes ctest quietly, so a missing tool would otherwise shrink the suite unnoticed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh --test
# Formatting first: it fails in a second where a build would take minutes.
scripts/format.sh --check
/usr/bin/python3 scripts/check_skips.py --self-test

failed_passes=()
# run_ctest NAME BUILD_DIR CTEST_ARGS...: one ctest pass; records NAME in failed_passes when a test
# fails or skips unexpectedly, and goes on (a later pass may say more about the failure).
run_ctest() {
  local name="$1" dir="$2"
  shift 2
  local junit="${PWD}/${dir}/ctest-${name}.xml" tests="${PWD}/${dir}/ctest-${name}-tests.json"
  local start=${SECONDS} rc=0
  rm -f "${junit}"
  ctest --test-dir "${dir}" --output-on-failure --no-tests=error --output-junit "${junit}" "$@" || rc=$?
  ctest --test-dir "${dir}" --show-only=json-v1 "$@" >"${tests}" || rc=1
  /usr/bin/python3 scripts/check_skips.py --tests "${tests}" "${junit}" tests/skip_allowlist.txt || rc=1
  echo "test.sh: ${name} tests: $((SECONDS - start)) s, $([[ ${rc} == 0 ]] && echo passed || echo FAILED)"
  [[ ${rc} == 0 ]] || failed_passes+=("${name}")
}

# The main build treats warnings as errors (the sanitizer builds add their own flags and do not).
scripts/build.sh -DMOE_WERROR=ON
run_ctest main build -j 2 -LE gpu --timeout 900

if [[ "${MOE_SKIP_SANITIZERS:-0}" != 1 ]]; then
  MOE_BUILD_DIR=build-asan MOE_BUILD_TYPE=RelWithDebInfo scripts/build.sh -DMOE_SANITIZE=ON -DMOE_BUILD_BENCH=OFF \
    -DMOE_WITH_CUDA=OFF
  # The UCX transport tests are left out of this pass: under ASan's timing, Debian's UCX 1.13 TCP
  # transport sometimes aborts inside libuct (`comp->count > 0` assertion) when a peer is
  # destroyed mid-exchange. They run in the pass above; see the issue note.
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    run_ctest asan build-asan -j 2 -L unit -E 'UcxTransport|UcxMoeRound' --timeout 900
fi

if ((${#failed_passes[@]})); then
  echo "test.sh: FAILED: ${failed_passes[*]}"
  exit 1
fi
echo "test.sh: all passes passed"
