#!/usr/bin/env bash
# The main job: install, build, make the demo model, start a local cluster (1 router, 2 attention
# workers, 4 expert workers over UCX) and stream a chat answer through its public gRPC API.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
model=${MOE_DEMO_MODEL:-models/demo-tiny}
if [[ ! -f "$model/config.json" ]]; then
  build/bin/moectl make-model --preset tiny --dtype bf16 --seed 0 --out "$model"
fi
state=$(mktemp -d)
port=${MOE_DEMO_PORT:-50051}
trap 'build/bin/moectl cluster down --state-dir "$state" >/dev/null 2>&1 || true; rm -rf "$state"' EXIT
router=$(build/bin/moectl cluster up --model "$model" --attention-workers 2 --expert-workers 4 \
  --port "$port" --state-dir "$state" --detach)
echo "cluster up: router at $router (logs in $state)" >&2
# The demo model has random weights: the text is gibberish, but every token goes through the real
# tokenizer, chat template, router, attention and expert workers, sampler and streaming detokenizer.
build/bin/moectl generate --router "$router" --chat \
  --prompt "${MOE_DEMO_PROMPT:-Explain mixture-of-experts in one sentence.}" \
  --max-tokens "${MOE_DEMO_MAX_TOKENS:-48}"
