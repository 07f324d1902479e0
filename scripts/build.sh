#!/usr/bin/env bash
# Configures and builds into build/ (binaries in build/bin/). Extra arguments go to cmake configure.
# Parallelism is capped at 2 (the CI machine has 2 cores); override with MOE_BUILD_JOBS.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${MOE_BUILD_DIR:-build}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=${MOE_BUILD_TYPE:-RelWithDebInfo} "$@"
cmake --build "$build_dir" -j "${MOE_BUILD_JOBS:-2}"
