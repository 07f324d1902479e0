# Sourced by the npm oracle scripts (tests/oracle/*/run_oracle.sh): one way to get an oracle's pinned
# npm packages into a scratch directory under the build tree.
#
#   moe_npm_install SOURCE_DIR WORK_DIR PACKAGE
# copies SOURCE_DIR's package.json, package-lock.json and oracle.mjs into WORK_DIR and runs `npm ci`
# there only when the lock file changed since the last install or node_modules/PACKAGE is missing.
# Exits 77 (CTest's skip code) when npm or node is absent.
moe_npm_install() {
  local source_dir="$1" work="$2" package="$3"
  if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
    echo "npm/node not found: skipping $(basename "$source_dir")'s npm oracle"
    exit 77
  fi
  mkdir -p "$work"
  cp "$source_dir/package.json" "$source_dir/package-lock.json" "$source_dir/oracle.mjs" "$work/"
  if ! cmp -s "$source_dir/package-lock.json" "$work/.installed-lock.json" 2>/dev/null ||
     [ ! -d "$work/node_modules/$package" ]; then
    (cd "$work" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$source_dir/package-lock.json" "$work/.installed-lock.json"
  fi
}
