#!/usr/bin/env bash
# CI's test run (.ci/run). Installs what the tests need, then three passes:
#   main  build/       every test but the GPU ones;
#   asan  build-asan/  AddressSanitizer + UndefinedBehaviorSanitizer over the unit, integration and
#                      oracle tests, the services themselves built with ASan (the integration tests
#                      start build-asan's binaries);
#   tsan  build-tsan/  ThreadSanitizer over the threaded parts (ctest label `threaded`; only the
#                      target moe_threaded_tests is built, see cmake/MoeTesting.cmake).
# MOE_SKIP_SANITIZERS=1 runs the main pass only.
#
# Every ctest run fails on zero tests (--no-tests=error) and on any skipped or disabled test that
# tests/skip_allowlist.txt does not allow (scripts/check_skips.py over ctest's JUnit output): a skip
# passes ctest quietly, so a missing tool would otherwise shrink the suite unnoticed. Each pass prints
# how long its build and its tests took (CI has 2 cores and 90 minutes; keep the total under 60).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${MOE_BUILD_JOBS:-2}
scripts/install_deps.sh --test
# Formatting first: it fails in a second where a build would take minutes.
scripts/format.sh --check
/usr/bin/python3 scripts/check_skips.py --self-test
/usr/bin/python3 scripts/ctest_failures.py --self-test

failed_passes=() failed_junits=()
# run_ctest NAME BUILD_DIR CTEST_ARGS...: one ctest pass; records NAME in failed_passes (and its
# JUnit file in failed_junits) when a test fails or skips unexpectedly, and goes on (a later pass may
# say more about the failure).
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
  [[ ${rc} == 0 ]] || { failed_passes+=("${name}"); failed_junits+=("${junit}"); }
}

# The main build treats warnings as errors (the sanitizer builds add their own flags and do not). It is
# a Release build: RelWithDebInfo's -O2 without the debug info, which would cost a third of the time.
start=${SECONDS}
MOE_BUILD_TYPE=Release scripts/build.sh -DMOE_WERROR=ON
echo "test.sh: main build: $((SECONDS - start)) s"
run_ctest main build -j 2 -LE gpu --timeout 900

if [[ "${MOE_SKIP_SANITIZERS:-0}" != 1 ]]; then
  sanitizer_cmake=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DMOE_BUILD_BENCH=OFF -DMOE_WITH_CUDA=OFF)

  start=${SECONDS}
  cmake -S . -B build-asan "${sanitizer_cmake[@]}" -DMOE_SANITIZE=address
  cmake --build build-asan -j "${jobs}"
  echo "test.sh: asan build: $((SECONDS - start)) s"
  # Left out: the operations-artifact and Python-only tests, which run no C++ of ours; and the
  # golden comparisons, pure compute over the engine paths that engine_test and engine_decode_test
  # already run here, which take 6-10 minutes each at ASan's speed (they run in the main pass); and
  # four of the six dtype x topology variants of TopologyTest (bf16_1x3 and fp8_2x4 stay: both
  # dtypes, several attention and expert workers; the others repeat those paths at 1-1.5 min each).
  asan_exclude='^deploy_|^oracle_reference_selftest$|^sampler_fixtures_up_to_date$'
  asan_exclude+='|^Goldens/GoldenTest\.|^Topologies/TopologyTest\..*/(bf16_1x1|fp8_1x1|fp8_1x3|bf16_2x4)( |$)'
  # The process-level failover tests (a cluster of 6-7 processes, 32 streams, kill and restart) take
  # 5-10 minutes each under ASan on 2 cores; they run in the main pass, and the code they exercise
  # under ASan here is the same as EngineTest's in-process failover and migration tests and
  # ClusterTest's.
  asan_exclude+='|^ReplicatedExpertFailoverTest\.|^Signals/AttentionWorkerFailoverTest\.'
  # tests/lsan.supp: OpenSSL's allocations that gRPC's TLS stack leaves at a process's exit.
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 LSAN_OPTIONS="suppressions=${PWD}/tests/lsan.supp" \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    run_ctest asan build-asan -j 2 -LE gpu -E "${asan_exclude}" --timeout 900

  start=${SECONDS}
  cmake -S . -B build-tsan "${sanitizer_cmake[@]}" -DMOE_SANITIZE=thread
  cmake --build build-tsan -j "${jobs}" --target moe_threaded_tests
  echo "test.sh: tsan build: $((SECONDS - start)) s"
  # UCX_MEM_EVENTS=no: UCX's memory hooks (it patches malloc and mmap to track registrations) crash
  # under TSan's own interceptors; the tests register no memory through them.
  UCX_MEM_EVENTS=no TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=${PWD}/tests/tsan.supp" \
    run_ctest tsan build-tsan -j 2 -L threaded --timeout 900
fi

if ((${#failed_passes[@]})); then
  # CI shows the tail of the log: repeat there which tests failed, their last lines, and the CPU
  # (the kernels dispatch on its ISA at run time, so a failure can depend on the machine).
  echo "test.sh: CPU: $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2-)," \
    "ISA flags: $(grep -m1 '^flags' /proc/cpuinfo | grep -o -w -E 'avx2|fma|avx512f|avx512_bf16|avx512vbmi' | tr '\n' ' ')"
  for junit in "${failed_junits[@]}"; do
    if [[ -f ${junit} ]]; then /usr/bin/python3 scripts/ctest_failures.py "${junit}" 25 || true; fi
  done
  echo "test.sh: FAILED: ${failed_passes[*]}"
  exit 1
fi
echo "test.sh: all passes passed"
