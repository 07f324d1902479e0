#!/usr/bin/env bash
# Runs one node test of deploy/tests after making sure its tools are installed.
# Usage: run_node_test.sh SCRIPT.mjs [ARGS...]. Missing node or tools that cannot be installed are a
# failure (exit 1), never a skip: CI must not lose the test quietly.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
command -v node >/dev/null 2>&1 || { echo "FAIL: node is not installed (scripts/install_deps.sh --test)"; exit 1; }
"${here}/install_tools.sh" >/dev/null || { echo "FAIL: deploy/tests/install_tools.sh could not install the tools"; exit 1; }
script="$1"; shift
exec node "${here}/${script}" "$@"
