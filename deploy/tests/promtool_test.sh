#!/usr/bin/env bash
# promtool on the Prometheus artifacts: `check rules`, the rule unit tests (rules_test.yaml), and a
# syntax check of every Grafana query (each one wrapped as a recording rule, $__rate_interval -> 5m).
# A tool that cannot be installed is a failure (exit 1), never a skip: CI must not lose the test.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "${here}/../.." && pwd)"
"${here}/install_tools.sh" >/dev/null || { echo "FAIL: deploy/tests/install_tools.sh could not install the tools"; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "${tmp}"' EXIT
passed=0 failed=0
step() {
  local what="$1"; shift
  if "$@" >"${tmp}/out" 2>&1; then passed=$((passed + 1)); else
    failed=$((failed + 1)); echo "FAIL: ${what}"; cat "${tmp}/out"; fi
}

step "promtool check rules" promtool check rules "${root}/deploy/prometheus/rules.yaml"
step "promtool test rules" promtool test rules "${root}/deploy/prometheus/rules_test.yaml"

# Dashboard queries as one rule group (JSON is YAML).
node -e '
  const fs = require("fs");
  const dash = JSON.parse(fs.readFileSync(process.argv[1], "utf8"));
  const rules = [];
  const walk = (n) => {
    if (Array.isArray(n)) return n.forEach(walk);
    if (n && typeof n === "object") {
      if (typeof n.expr === "string")
        rules.push({ record: `dashboard:query_${rules.length}:check`, expr: n.expr.replaceAll("$__rate_interval", "5m") });
      Object.values(n).forEach(walk);
    }
  };
  walk(dash.panels);
  if (rules.length === 0) { console.error("no queries in the dashboard"); process.exit(1); }
  fs.writeFileSync(process.argv[2], JSON.stringify({ groups: [{ name: "dashboard", rules }] }));
' "${root}/deploy/grafana/moe-serving.json" "${tmp}/dashboard_rules.json" || failed=$((failed + 1))
step "dashboard queries parse" promtool check rules "${tmp}/dashboard_rules.json"

echo "deploy_promtool: ${passed} passed, ${failed} failed"
[[ ${failed} -eq 0 ]]
