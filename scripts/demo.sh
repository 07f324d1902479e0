#!/usr/bin/env bash
# The main job: install, build, make the demo model and stream a chat answer from it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
model=${MOE_DEMO_MODEL:-models/demo-tiny}
if [[ ! -f "$model/config.json" ]]; then
  build/bin/moectl make-model --preset tiny --dtype bf16 --seed 0 --out "$model"
fi
# The demo model has random weights: the text is gibberish, but it is computed by the real
# Qwen3-MoE forward pass, tokenizer and sampler, streamed token by token.
build/bin/moectl generate --model "$model" --chat --prompt "${MOE_DEMO_PROMPT:-Explain mixture-of-experts in one sentence.}" \
  --max-tokens "${MOE_DEMO_MAX_TOKENS:-48}" --expert-shards 4
