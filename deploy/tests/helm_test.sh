#!/usr/bin/env bash
# helm lint --strict and helm template for default, CPU and GPU values; values.schema.json rejects
# bad values; the committed plain manifests (deploy/k8s/manifests) are up to date.
# A tool that cannot be installed is a failure (exit 1), never a skip: CI must not lose the test.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "${here}/../.." && pwd)"
"${here}/install_tools.sh" >/dev/null || { echo "FAIL: deploy/tests/install_tools.sh could not install the tools"; exit 1; }
helm="${MOE_TOOLS_DIR:-${root}/build/tools}/bin/helm"
chart="${root}/deploy/k8s/moe-serving"

tmp="$(mktemp -d)"
trap 'rm -rf "${tmp}"' EXIT
passed=0 failed=0
expect() {  # expect ok|fail WHAT cmd...
  local want="$1" what="$2"; shift 2
  local got=ok
  "$@" >"${tmp}/out" 2>&1 || got=fail
  if [[ "${got}" == "${want}" ]]; then passed=$((passed + 1)); else
    failed=$((failed + 1)); echo "FAIL: ${what} (wanted ${want}, got ${got})"; cat "${tmp}/out"; fi
}

for values in "" values-cpu.yaml values-gpu.yaml; do
  args=()
  [[ -n "${values}" ]] && args=(-f "${chart}/${values}")
  expect ok "helm lint --strict ${values:-default}" "${helm}" lint --strict "${chart}" "${args[@]}"
  expect ok "helm template ${values:-default}" "${helm}" template moe "${chart}" "${args[@]}"
done
# The schema catches typos and bad values, and the templates refuse an impossible model source.
expect fail "schema rejects an unknown key" "${helm}" template moe "${chart}" --set router.replica=3
expect fail "schema rejects a bad transport" "${helm}" template moe "${chart}" --set cluster.transport=tcp
expect fail "schema rejects zero expert workers" "${helm}" template moe "${chart}" --set expert.replicas=0
expect fail "existingClaim needs a claim name" "${helm}" template moe "${chart}" --set model.source=existingClaim
expect ok "startup budget rounds up to whole periods" bash -c \
  "'${helm}' template moe '${chart}' --set attention.startupBudgetSeconds=95 --set attention.startupPeriodSeconds=10 \
   | grep -A6 'service: startup' | grep -q 'failureThreshold: 10'"
expect ok "plain manifests are up to date (deploy/k8s/render.sh)" env HELM="${helm}" "${root}/deploy/k8s/render.sh" --check

echo "deploy_helm: ${passed} passed, ${failed} failed"
[[ ${failed} -eq 0 ]]
