#!/usr/bin/env bash
# Runs clang-tidy (the repository's .clang-tidy) over C++ sources, using the compile database of a
# configured build (build/compile_commands.json; MOE_BUILD_DIR to change).
#   scripts/tidy.sh              the .cc files changed against main (committed or not)
#   scripts/tidy.sh FILE...      those files
#   scripts/tidy.sh --all        every tracked .cc file (slow: minutes per hundred files)
# Exits non-zero when clang-tidy reports a warning.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${MOE_BUILD_DIR:-build}
if [[ ! -f "$build_dir/compile_commands.json" ]]; then
  echo "tidy.sh: $build_dir/compile_commands.json is missing; run scripts/build.sh first" >&2
  exit 2
fi
if [[ "${1:-}" == "--all" ]]; then
  mapfile -t files < <(git ls-files '*.cc')
elif (($#)); then
  files=("$@")
else
  mapfile -t files < <({ git diff --name-only main -- '*.cc'; git ls-files --others --exclude-standard '*.cc'; } | sort -u)
fi
if ((${#files[@]} == 0)); then
  echo "tidy.sh: no files to check"
  exit 0
fi
status=0
for f in "${files[@]}"; do
  [[ -f "$f" ]] || continue
  clang-tidy --quiet -p "$build_dir" --warnings-as-errors='*' "$f" 2>/dev/null || status=1
done
exit $status
