#!/usr/bin/env bash
# Runs one node test of deploy/tests after making sure its tools are installed.
# Usage: run_node_test.sh SCRIPT.mjs [ARGS...]. Exit 77 (skip) only when the tools cannot be installed.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
command -v node >/dev/null 2>&1 || { echo "SKIP: node is not installed"; exit 77; }
"${here}/install_tools.sh" >/dev/null || { echo "SKIP: tools could not be installed"; exit 77; }
script="$1"; shift
exec node "${here}/${script}" "$@"
