#!/usr/bin/env bash
# Fails when a file of the repository refers to a document the repository does not hold
# (docs/contributing.md#documents):
#   - the design notes the project started from, which live outside it (a "shared" directory beside
#     the checkout with DESIGN, QWEN3_MOE and STYLE notes), or their bare section numbers;
#   - docs/<page>.md, with or without #anchor, where the page does not exist or no heading of it
#     produces the anchor (GitHub's rules: lower case, punctuation dropped, spaces as '-');
#   - relative Markdown links between pages ([x](other.md#a), [x](#a)) that do not resolve.
#
#   docs_references_test.sh [ROOT]   checks ROOT (default: the repository this script is in)
#   docs_references_test.sh --self-test
#                                    checks that planted bad references are each reported
# Files are `git ls-files` when ROOT is a git work tree, else every file under ROOT outside build
# directories. Binary files and this script are not scanned.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
script_path="$script_dir/$(basename "${BASH_SOURCE[0]}")"

check() {
  python3 - "$1" "$script_path" <<'PY'
import os
import re
import subprocess
import sys

root = os.path.realpath(sys.argv[1])
self_path = os.path.realpath(sys.argv[2])

# Spelled in pieces so that no line of this program matches its own patterns.
SHARED = "../" + "shared"
FORBIDDEN = [
    (re.compile(re.escape(SHARED) + r"\b"), "a path outside the repository (" + SHARED + ")"),
    (re.compile(r"\b" + "DESIGN" + r"\.md\b"), "a design note that is not in the repository"),
    (re.compile(r"\b" + "QWEN3_MOE" + r"(\.md)?\b"), "a design note that is not in the repository"),
    (re.compile(r"\b" + "STYLE" + r"\.md\b"), "a design note that is not in the repository"),
    (re.compile("\u00a7" + r"\s?\d"), "a section number of a document that is not named"),
]
DOC_REF = re.compile(r"(?<![\w./-])docs/([\w./-]+?\.md)(#[\w-]+)?")
MD_LINK = re.compile(r"\]\(([^)\s]*)\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def tracked_files():
    try:
        out = subprocess.run(["git", "-C", root, "ls-files", "-z"], check=True, capture_output=True).stdout
        if out:
            return [p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        pass
    files = []
    for d, dirs, names in os.walk(root):
        dirs[:] = [x for x in dirs if x != ".git" and not x.startswith("build") and x != "node_modules"]
        files += [os.path.relpath(os.path.join(d, n), root) for n in names]
    return sorted(files)


def slug(text):
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links keep their text
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


anchor_cache = {}


def anchors(rel):
    if rel not in anchor_cache:
        found, seen, fence = set(), {}, None
        with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as f:
            for line in f:
                m = FENCE.match(line)
                if m:
                    if fence is None:
                        fence = m.group(1)[0]
                    elif m.group(1)[0] == fence:
                        fence = None
                    continue
                if fence is not None:
                    continue
                h = HEADING.match(line)
                if h:
                    base = slug(h.group(2))
                    n = seen.get(base, 0)
                    seen[base] = n + 1
                    found.add(base if n == 0 else f"{base}-{n}")
        anchor_cache[rel] = found
    return anchor_cache[rel]


def target_problem(rel, anchor):
    """None if docs page `rel` (relative to root) exists and has `anchor` (without '#')."""
    path = os.path.join(root, rel)
    if not os.path.isfile(path):
        return f"{rel} does not exist"
    if anchor and anchor not in anchors(rel):
        return f"{rel} has no heading with the anchor #{anchor}"
    return None


problems = []
for rel in tracked_files():
    path = os.path.join(root, rel)
    if os.path.realpath(path) == self_path or not os.path.isfile(path):
        continue
    with open(path, "rb") as f:
        data = f.read()
    if b"\0" in data:
        continue  # binary
    text = data.decode("utf-8", errors="replace")
    is_markdown = rel.endswith(".md")
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{rel}:{number}"
        for pattern, why in FORBIDDEN:
            if pattern.search(line):
                problems.append(f"{where}: refers to {why}: {line.strip()}")
        for m in DOC_REF.finditer(line):
            p = target_problem(os.path.normpath("docs/" + m.group(1)), (m.group(2) or "#")[1:])
            if p:
                problems.append(f"{where}: {m.group(0)}: {p}")
        if not is_markdown:
            continue
        for m in MD_LINK.finditer(line):
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("/"):
                continue  # a URL or an absolute path: not checked here
            file_part, _, anchor = target.partition("#")
            if file_part and not file_part.endswith(".md"):
                continue  # a link to a source file or directory
            dest = rel if not file_part else os.path.normpath(os.path.join(os.path.dirname(rel), file_part))
            if dest.startswith(".."):
                problems.append(f"{where}: ({target}) points outside the repository")
                continue
            p = target_problem(dest, anchor)
            if p:
                problems.append(f"{where}: ({target}): {p}")

if problems:
    print("These references point at documents or sections the repository does not hold:")
    for p in problems:
        print("  " + p)
    print(f"{len(problems)} bad reference(s). Cite docs/<page>.md#<heading-anchor> (docs/contributing.md#documents).")
    sys.exit(1)
print("docs_references_test: every document reference resolves")
PY
}

self_test() {
  local tmp
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  mkdir -p "$tmp/docs" "$tmp/src"
  printf '# Page\n\n## Good Section (v2)\n\n```sh\n# not a heading\n```\n\n## Good Section (v2)\n' \
    >"$tmp/docs/page.md"
  local shared="../""shared" design="DESIGN"".md" spec="QWEN3""_MOE.md" style="STYLE"".md" sect=$'\u00a7'
  cat >"$tmp/src/bad.cc" <<EOF
// see $shared/notes
// see $design and $spec and $style
// rounding as in ${sect}1.3
// docs/missing.md
// docs/page.md#no-such-anchor
// docs/page.md#not-a-heading
EOF
  cat >"$tmp/src/good.cc" <<EOF
// docs/page.md, docs/page.md#good-section-v2, docs/page.md#good-section-v2-1
EOF
  printf '[a](page.md#good-section-v2) [b](page.md#page) [c](#nope) [d](other.md)\n' >"$tmp/docs/links.md"
  local out rc=0
  out=$(check "$tmp") || rc=$?
  local want=(
    "src/bad.cc:1: refers to a path outside"
    "src/bad.cc:2: refers to a design note"
    "src/bad.cc:3: refers to a section number"
    "src/bad.cc:4: docs/missing.md: docs/missing.md does not exist"
    "src/bad.cc:5: docs/page.md#no-such-anchor: docs/page.md has no heading with the anchor #no-such-anchor"
    "src/bad.cc:6: docs/page.md#not-a-heading"
    "docs/links.md:1: (#nope): docs/links.md has no heading"
    "docs/links.md:1: (other.md): docs/other.md does not exist"
  )
  local failed=0
  [[ $rc -eq 1 ]] || { echo "self-test: expected exit 1, got $rc"; failed=1; }
  for w in "${want[@]}"; do
    grep -qF -- "$w" <<<"$out" || { echo "self-test: missing report: $w"; failed=1; }
  done
  # Three design notes on line 2, one line each for the other five, two bad links.
  local count
  count=$(grep -c '^  ' <<<"$out" || true)
  [[ $count -eq 10 ]] || { echo "self-test: expected 10 reports, got $count"; failed=1; }
  if grep -qF 'good.cc' <<<"$out"; then
    echo "self-test: a valid reference was reported"
    failed=1
  fi
  if ((failed)); then
    echo "--- output ---"
    echo "$out"
    return 1
  fi
  echo "docs_references_test --self-test: every planted bad reference was reported, no good one"
}

if [[ "${1:-}" == "--self-test" ]]; then
  self_test
else
  check "${1:-$script_dir/../..}"
fi
