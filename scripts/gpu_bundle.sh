#!/usr/bin/env bash
# Prepares, on this Debian 12 machine, the folder that scripts/gpu_check.sh needs on a GPU machine
# that has CUDA, CMake, ninja and a compiler but none of Debian's libraries and no network:
#   OUTDIR/src      the repository's sources (tracked and untracked-but-not-ignored files)
#   OUTDIR/sysroot  the few libraries the engine core (MOE_CORE_ONLY) needs, copied from the
#                   installed Debian packages (what `dpkg -x` of them would unpack): abseil,
#                   nlohmann-json, pcre2, utf8proc, zlib, GoogleTest, CLI11 (engine_bench's flags), and
#                   pkgconf to read their .pc files
#   OUTDIR/BUNDLE   what went in, with versions
# The .pc files are made relocatable (${pcfiledir}); the CMake package files already are.
# Fails when the folder exceeds 64 MiB. Usage: scripts/gpu_bundle.sh [OUTDIR] (default build/gpu-bundle).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/gpu-bundle}
limit_mib=64
packages=(libabsl-dev libabsl20220623 nlohmann-json3-dev libpcre2-dev libpcre2-8-0 libutf8proc-dev libutf8proc2
          zlib1g-dev zlib1g libgtest-dev libgmock-dev libcli11-dev pkgconf-bin libpkgconf3)

rm -rf "$out"
mkdir -p "$out/src" "$out/sysroot"
out=$(cd "$out" && pwd)

# Sources: what git would commit, working-tree versions (no build outputs, no weights).
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$out/src"
git rev-parse HEAD >"$out/src/.bundle_commit"
git status --porcelain >"$out/src/.bundle_dirty"

{
  echo "# gpu bundle made $(date -u +%FT%TZ) on $(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "commit $(git rev-parse HEAD)"
} >"$out/BUNDLE"
for pkg in "${packages[@]}"; do
  version=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null) || {
    echo "gpu_bundle: Debian package $pkg is not installed (scripts/install_deps.sh installs the build deps)" >&2
    exit 1
  }
  echo "$pkg $version" >>"$out/BUNDLE"
  # The package's files and symlinks, without documentation.
  dpkg -L "$pkg" | grep -Ev '^/usr/share/(doc|man|lintian|bug)/' | while IFS= read -r f; do
    if [[ -L "$f" || -f "$f" ]]; then printf '%s\0' "${f#/}"; fi
  done | (cd / && tar --null -T - -cf -) | tar -xf - -C "$out/sysroot"
done

# Relocatable pkg-config files: /usr/... becomes relative to the .pc file's own folder.
find "$out/sysroot" -name '*.pc' -print0 | while IFS= read -r -d '' pc; do
  rel=$(realpath --relative-to="$(dirname "$pc")" "$out/sysroot/usr")
  sed -i -e "s|=/usr/|=\${pcfiledir}/$rel/|" -e "s|=/usr\$|=\${pcfiledir}/$rel|" "$pc"
done

size_kib=$(du -sk "$out" | cut -f1)
echo "size $((size_kib / 1024)) MiB" >>"$out/BUNDLE"
echo "gpu_bundle: $out is $((size_kib / 1024)) MiB ($(find "$out" -type f | wc -l) files)"
if ((size_kib > limit_mib * 1024)); then
  echo "gpu_bundle: over the ${limit_mib} MiB limit" >&2
  exit 1
fi
