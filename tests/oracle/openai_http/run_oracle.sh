#!/usr/bin/env bash
# Oracle test: the router's OpenAI-compatible HTTP API driven by the official `openai` npm client
# (pinned in package-lock.json) against a local cluster on the tiny test model.
#   1. npm ci in a scratch dir under the build tree (skip, exit 77, only if npm is absent),
#   2. moectl make-model --preset tiny, then moectl cluster up --detach --http-port (retried on
#      other ports if the chosen ones are taken),
#   3. node oracle.mjs: chat and completions, streaming and not, usage, stop strings, thinking on/off,
#      invalid requests, and greedy HTTP output == `moectl generate --router` (gRPC) output,
#   4. a router with --api_keys_file in front of a fake attention worker whose output is a planted
#      Qwen3 tool call (tests/services/router/fake_attention_worker_main.cc): node oracle.mjs
#      --phase tools: 401 without a key, tool_calls (whole and streamed), the tool message back,
#   5. moectl cluster down and the fake processes stopped (always).
# Usage: run_oracle.sh PATH/TO/moectl PATH/TO/fake-attention-worker
set -euo pipefail

moectl="$1"
fake_worker="$2"
router_bin="$(dirname "$moectl")/moe-router"
here="$(cd "$(dirname "$0")" && pwd)"
source_dir="${MOE_SOURCE_DIR:-$(cd "$here/../../.." && pwd)}"
binary_dir="${MOE_BINARY_DIR:-$source_dir/build}"

work="$binary_dir/tests/openai_http_oracle"
# shellcheck source=tests/oracle/npm_install.sh
source "$here/../npm_install.sh"
moe_npm_install "$here" "$work" "openai"

model="$work/model"
"$moectl" make-model --preset tiny --dtype bf16 --seed 0 --out "$model" --force >/dev/null

state="$(mktemp -d "${TMPDIR:-/tmp}/moe-openai-oracle.XXXXXX")"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  "$moectl" cluster down --state-dir "$state" >/dev/null 2>&1 || true
  rm -rf "$state"
}
trap cleanup EXIT

started=""
for attempt in 1 2 3 4 5; do
  # Below the ephemeral range; the router, its 2 workers and the HTTP port, metrics at +1000.
  base=$((20000 + (RANDOM % 4000) * 4))
  http=$((base + 3))
  if "$moectl" cluster up --detach --model "$model" --port "$base" --http-port "$http" \
       --state-dir "$state" > "$state/up.out" 2> "$state/up.err"; then
    started=1
    break
  fi
  if ! grep -q "already in use" "$state/up.err"; then
    cat "$state/up.err" >&2
    exit 1
  fi
done
if [ -z "$started" ]; then
  echo "no free ports after 5 attempts" >&2
  exit 1
fi
grep -q "OpenAI-compatible HTTP API at http://127.0.0.1:$http/v1" "$state/up.err" || {
  echo "moectl cluster up did not print the HTTP API's URL:" >&2
  cat "$state/up.err" >&2
  exit 1
}

status=0
node "$work/oracle.mjs" --http "http://127.0.0.1:$http/v1" --router "127.0.0.1:$base" --moectl "$moectl" || status=$?
if [ "$status" -ne 0 ]; then
  echo "--- router log (last 30 lines) ---"
  tail -n 30 "$state/router.log" || true
fi

# Phase 2: API keys and a planted tool call. The fake worker answers every request with the text of
# a Qwen3 tool call (Hermes format), which the router parses into tool_calls.
key="sk-oracle-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
printf 'oracle %s\n' "$key" > "$state/api-keys"
fake_port=$((base + 4)); router2=$((base + 5)); http2=$((base + 6))
script=$'<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>'
"$fake_worker" --model "$model" --listen "127.0.0.1:$fake_port" --script "$script" 2> "$state/fake.log" &
pids+=($!)
"$router_bin" --model "$model" --attention_workers "127.0.0.1:$fake_port" --listen "127.0.0.1:$router2" \
  --http_listen "127.0.0.1:$http2" --metrics_port 0 --insecure --api_keys_file "$state/api-keys" \
  2> "$state/router2.log" &
pids+=($!)
for _ in $(seq 1 300); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$http2") 2>/dev/null &&
     node -e "fetch('http://127.0.0.1:$http2/health').then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))"; then
    break
  fi
  sleep 0.2
done
node "$work/oracle.mjs" --phase tools --http "http://127.0.0.1:$http2/v1" --key "$key" || {
  status=1
  echo "--- router (phase 2) log (last 30 lines) ---"
  tail -n 30 "$state/router2.log" || true
  tail -n 5 "$state/fake.log" || true
}
exit "$status"
