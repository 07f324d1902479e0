#!/usr/bin/env bash
# The one prepared GPU check (docs/gpu.md): on a machine with an NVIDIA GPU, the CUDA toolkit, CMake,
# ninja and a C++ compiler, but no Debian libraries and no network. Run it from the folder that
# scripts/gpu_bundle.sh made:  bash BUNDLE/src/scripts/gpu_check.sh OUTDIR
# It configures the engine core (MOE_CORE_ONLY) with CUDA against BUNDLE/sysroot, builds the CUDA
# kernel tests, the engine's CUDA tests and the benchmarks, runs them, and writes OUTDIR/summary.md
# and OUTDIR/summary.json (plus each step's log). Every step runs under its own time limit and a failing step is recorded, not fatal: the
# summary always gets written. Exit status: 0 when every step that ran passed, 1 otherwise.
#
# Environment: MOE_GPU_SYSROOT (default: the bundle's sysroot, else the system's libraries),
# MOE_GPU_BUILD_DIR (default OUTDIR/build), CUDACXX or nvcc on PATH / in /usr/local/cuda/bin.
# Time limits: configure 90 s, build 240 s (MOE_GPU_CONFIGURE_TIMEOUT / MOE_GPU_BUILD_TIMEOUT
# override them, e.g. to try the script on a small CPU machine), kernel tests 75 s, engine tests
# 120 s, kernel benchmark 60 s, engine benchmark 150 s; and the whole run stops starting steps at
# MOE_GPU_TOTAL_TIMEOUT (default 460 s: each step's limit is cut to what is left, a step with under
# 10 s left is recorded as skipped), so it stays under 8 minutes.
set -uo pipefail
if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
src=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1" || exit 2
out=$(cd "$1" && pwd)
build=${MOE_GPU_BUILD_DIR:-$out/build}
sysroot=${MOE_GPU_SYSROOT:-$src/../sysroot}
started=$(date +%s)
jobs=$(nproc 2>/dev/null || echo 4)

total_limit=${MOE_GPU_TOTAL_TIMEOUT:-460}

steps=()  # "name|status|seconds|detail"
record() { steps+=("$1|$2|$3|$4"); echo "gpu_check: $1: $2 ($3 s) $4"; }
# run_step NAME TIMEOUT_S CMD...: runs CMD with its output in OUTDIR/NAME.log; returns its status.
# The limit is cut to what is left of total_limit; with under 10 s left the step is skipped (124).
run_step() {
  local name=$1 limit=$2
  shift 2
  local left=$((total_limit - ($(date +%s) - started)))
  if ((left < 10)); then
    record "$name" skip 0 "no time left (MOE_GPU_TOTAL_TIMEOUT=${total_limit} s)"
    return 124
  fi
  ((limit > left)) && limit=$left
  local t0=$(date +%s) rc
  timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  local dt=$(($(date +%s) - t0)) status=pass detail="log: $name.log"
  if ((rc == 124 || rc == 137)); then
    status=fail detail="timed out after ${limit} s; log: $name.log"
  elif ((rc != 0)); then
    status=fail detail="exit $rc; last line: $(tail -n 1 "$out/$name.log" | cut -c1-200)"
  fi
  record "$name" "$status" "$dt" "$detail"
  return $rc
}

# ---- Environment -------------------------------------------------------------------------------
if [[ -z "${CUDACXX:-}" ]] && ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
{
  echo "date: $(date -u +%FT%TZ)"
  echo "host: $(uname -srm)"
  echo "bundle commit: $(cat "$src/.bundle_commit" 2>/dev/null || git -C "$src" rev-parse HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "nvidia-smi failed"
  "${CUDACXX:-nvcc}" --version 2>&1 | tail -n 2
  cmake --version | head -n 1
  ninja --version 2>&1 | sed 's/^/ninja /'
} >"$out/environment.log" 2>&1
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
record environment "$([[ -n "$gpu_name" ]] && echo pass || echo fail)" 0 \
  "${gpu_name:-no GPU visible to nvidia-smi}; log: environment.log"

# ---- Configure the engine core with CUDA ---------------------------------------------------------
cmake_args=(-S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOE_CORE_ONLY=ON -DMOE_WITH_CUDA=ON
            -DMOE_WITH_UCX=OFF -DMOE_BUILD_BENCH=ON -DMOE_BUILD_TESTS=ON)
if [[ -d "$sysroot/usr" ]]; then
  sysroot=$(cd "$sysroot" && pwd)
  libdir=$sysroot/usr/lib/x86_64-linux-gnu
  export LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export PKG_CONFIG_LIBDIR="$libdir/pkgconfig:$sysroot/usr/share/pkgconfig"
  export PKG_CONFIG_PATH="$PKG_CONFIG_LIBDIR"
  pkg_config=$sysroot/usr/bin/pkgconf
  # The bundled pkgconf needs glibc >= 2.34; fall back to the machine's pkg-config.
  if ! "$pkg_config" --version >/dev/null 2>&1; then pkg_config=$(command -v pkg-config || command -v pkgconf || true); fi
  cmake_args+=(-DCMAKE_PREFIX_PATH="$sysroot/usr" -DCMAKE_LIBRARY_PATH="$libdir" -DCMAKE_INCLUDE_PATH="$sysroot/usr/include")
  [[ -n "$pkg_config" ]] && cmake_args+=(-DPKG_CONFIG_EXECUTABLE="$pkg_config")
fi
configured=0
run_step configure "${MOE_GPU_CONFIGURE_TIMEOUT:-90}" cmake "${cmake_args[@]}" && configured=1

# ---- Build the CUDA kernel tests ----------------------------------------------------------------
targets=(moe_kernels_cuda kernels_cuda_test kernels_cuda_host_test device_spec_test gpu_kernels_bench
         engine_cuda_test cuda_expert_block_test engine_bench moe_cuda_backend_plugin moectl golden_test)
built=0
if ((configured)); then
  run_step build "${MOE_GPU_BUILD_TIMEOUT:-240}" cmake --build "$build" --target "${targets[@]}" -j "$jobs" && built=1
else
  record build skip 0 "configure failed"
fi

# ---- Run them -----------------------------------------------------------------------------------
gpu_pass=0 gpu_fail=0 gpu_skip=0
if ((built)); then
  run_step gpu_tests 75 ctest --test-dir "$build" -R '^(CudaKernelsTest|CudaHostTest|DeviceSpecTest|CudaExpertBlockTest)\.' \
    --output-on-failure --no-tests=error --output-junit "$out/gpu_tests.xml"
  gpu_pass=$(grep -c 'status="run"' "$out/gpu_tests.xml" 2>/dev/null || true)
  gpu_fail=$(grep -c 'status="fail"' "$out/gpu_tests.xml" 2>/dev/null || true)
  gpu_skip=$(grep -c 'status="disabled"\|status="notrun"' "$out/gpu_tests.xml" 2>/dev/null || true)
  # With a GPU present, a skipped GPU test is a failure of the check (the device probe failed).
  if [[ -n "$gpu_name" ]] && ((gpu_skip > 0)); then
    record gpu_tests_not_skipped fail 0 "$gpu_skip tests skipped although nvidia-smi sees a GPU"
  fi
else
  record gpu_tests skip 0 "build failed"
fi

# ---- The engine on the GPU against the CPU engine (tests/common/engine/cuda/engine_cuda_test.cc) -----
eng_pass=0 eng_fail=0 eng_skip=0
if ((built)); then
  run_step engine_logits_vs_cpu 120 ctest --test-dir "$build" -j 4 -R '^(Models/EngineCudaTest|EngineCudaErrorsTest)\.' \
    --output-on-failure --no-tests=error --output-junit "$out/engine_tests.xml"
  eng_pass=$(grep -c 'status="run"' "$out/engine_tests.xml" 2>/dev/null || true)
  eng_fail=$(grep -c 'status="fail"' "$out/engine_tests.xml" 2>/dev/null || true)
  eng_skip=$(grep -c 'status="disabled"\|status="notrun"' "$out/engine_tests.xml" 2>/dev/null || true)
  if [[ -n "$gpu_name" ]] && ((eng_skip > 0)); then
    record engine_tests_not_skipped fail 0 "$eng_skip engine tests skipped although nvidia-smi sees a GPU"
  fi
else
  record engine_logits_vs_cpu skip 0 "build failed"
fi

# ---- transformers on the GPU as the reference (tests/oracle/reference/make_transformers_goldens.sh:
# the three golden models, goldens in golden_test's format), then golden_test against those goldens
# with the engine on the GPU (MOE_GOLDEN_DEVICE) and, for comparison, on the CPU. -----------------
golden_names=()
if ((built)); then
  run_step transformers_goldens 150 "$src/tests/oracle/reference/make_transformers_goldens.sh" \
    "$build/bin/moectl" "$out/goldens"
  for name in tiny_bf16 tiny_fp8 dense_tiny_bf16; do
    [[ -f "$out/goldens/$name/golden.json" ]] && golden_names+=("$name")
  done
else
  record transformers_goldens skip 0 "build failed"
fi
if ((${#golden_names[@]})); then
  golden_regex="^Goldens/GoldenTest\\..*/\"?($(IFS='|'; echo "${golden_names[*]}"))\"?\$"  # names are quoted
  for golden_device in cuda:0 cpu; do
    MOE_GOLDENS_DIR="$out/goldens" MOE_GOLDEN_DEVICE=$golden_device run_step "goldens_vs_${golden_device%%:*}_engine" 90 \
      ctest --test-dir "$build" -j 3 -R "$golden_regex" --output-on-failure --no-tests=error -V
  done
elif ((built)); then
  record goldens_vs_cuda_engine skip 0 "no transformers goldens were made (see transformers_goldens.log)"
fi

# ---- Kernel benchmark (bench/kernels/gpu_kernels_bench.cc): rooflines + kernels at 30B-A3B shapes ---
if ((built)) && [[ -n "$gpu_name" ]]; then
  run_step kernel_bench 60 bash -c '"$0" >"$1"' "$build/bin/gpu_kernels_bench" "$out/kernel_bench.jsonl"
else
  record kernel_bench skip 0 "$( ((built)) && echo "no GPU" || echo "build failed")"
fi
# ---- Engine benchmark (bench/engine/engine_bench.cc): bench-30b-4l (FP8) with the dense forward pass
# on the GPU, decode tok/s at batch 1/8/32/128 and prefill of 512/4096 tokens, against the HBM copy
# roofline measured in the same run. The embedded experts still run on the CPU (docs/gpu.md).
if ((built)) && [[ -n "$gpu_name" ]]; then
  run_step engine_bench 150 "$build/bin/engine_bench" --device cuda:0 --model "$out/models/bench-30b-4l-fp8" \
    --make-preset bench-30b-4l --make-dtype fp8 --batches 1,8,32,128 --prefill-tokens 512,4096 --decode-steps 8 \
    --jsonl "$out/engine_bench.jsonl"
  rm -rf "$out/models"  # gigabytes of generated weights: not part of the results
else
  record engine_bench skip 0 "$( ((built)) && echo "no GPU" || echo "build failed")"
fi

# ---- Summary ------------------------------------------------------------------------------------
total=$(($(date +%s) - started))
overall=pass
for s in "${steps[@]}"; do [[ $(cut -d'|' -f2 <<<"$s") == fail ]] && overall=fail; done
json_escape() { sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/\t/ /g' | tr -d '\n\r'; }
{
  echo "# GPU check"
  echo
  echo "- result: **$overall** in ${total} s"
  echo "- GPU: ${gpu_name:-none visible}"
  echo "- kernel tests: $gpu_pass passed, $gpu_fail failed, $gpu_skip skipped (CudaKernelsTest, CudaHostTest, DeviceSpecTest)"
  echo "- engine tests: $eng_pass passed, $eng_fail failed, $eng_skip skipped (EngineCudaTest, EngineCudaErrorsTest: GPU vs CPU engine)"
  echo
  echo "| step | status | seconds | detail |"
  echo "|---|---|---|---|"
  for s in "${steps[@]}"; do IFS='|' read -r n st dt d <<<"$s"; echo "| $n | $st | $dt | $d |"; done
  echo
  echo '```'
  cat "$out/environment.log"
  echo '```'
  if [[ -s "$out/kernel_bench.jsonl" ]]; then
    echo
    echo "Kernel benchmark (us per call; fraction of the HBM copy or BF16 GEMM roofline measured in this run):"
    echo '```'
    cat "$out/kernel_bench.log" 2>/dev/null
    echo '```'
  fi
  if [[ -s "$out/engine_bench.log" ]]; then
    echo
    echo "Engine benchmark (bench-30b-4l FP8, dense forward pass on the GPU, experts on the CPU; vs r+w = fraction of the HBM copy roofline):"
    echo '```'
    cat "$out/engine_bench.log"
    echo '```'
  fi
  for log in gpu_tests engine_logits_vs_cpu; do
    [[ -f "$out/$log.log" ]] || continue
    echo
    echo "Failed or skipped tests ($log):"
    echo '```'
    grep -E 'Failed|\*\*\*|Skipped|tests passed|greedy tokens compared' "$out/$log.log" | head -n 60
    echo '```'
  done
  for log in goldens_vs_cuda_engine goldens_vs_cpu_engine; do
    [[ -f "$out/$log.log" ]] || continue
    echo
    echo "transformers goldens ($log; tolerance: tests/oracle/golden_test.cc):"
    echo '```'
    grep -o '\[golden\].*' "$out/$log.log" | head -n 40
    echo '```'
  done
  if [[ -f "$out/engine_tests.xml" ]]; then
    echo
    echo "Greedy continuations compared (GPU vs CPU engine, up to the CPU's first near-tie):"
    echo '```'
    grep -o '[a-z-]* [a-z0-9]*: [0-9]* of 96 greedy tokens compared' "$out/engine_tests.xml" | sort -u
    echo '```'
  fi
} >"$out/summary.md"
{
  printf '{"result":"%s","seconds":%d,"gpu":"%s",' "$overall" "$total" "$(printf '%s' "${gpu_name:-}" | json_escape)"
  printf '"kernel_tests":{"passed":%d,"failed":%d,"skipped":%d},' "${gpu_pass:-0}" "${gpu_fail:-0}" "${gpu_skip:-0}"
  printf '"engine_tests":{"passed":%d,"failed":%d,"skipped":%d},"steps":[' "${eng_pass:-0}" "${eng_fail:-0}" "${eng_skip:-0}"
  first=1
  for s in "${steps[@]}"; do
    IFS='|' read -r n st dt d <<<"$s"
    ((first)) || printf ','
    first=0
    printf '{"name":"%s","status":"%s","seconds":%d,"detail":"%s"}' "$n" "$st" "$dt" "$(printf '%s' "$d" | json_escape)"
  done
  printf '],"kernel_bench":['
  if [[ -s "$out/kernel_bench.jsonl" ]]; then paste -sd, "$out/kernel_bench.jsonl" | tr -d '\n'; fi
  printf '],"engine_bench":['
  if [[ -s "$out/engine_bench.jsonl" ]]; then paste -sd, "$out/engine_bench.jsonl" | tr -d '\n'; fi
  printf ']}\n'
} >"$out/summary.json"
echo "gpu_check: $overall; summary in $out/summary.md"
[[ $overall == pass ]]
