#!/usr/bin/env bash
# Cluster (1 attention worker, 2 expert workers, `moectl cluster up --detach`) against embedded mode
# on the same model: decode tokens/s at several concurrencies, the attention worker's per-layer
# dispatch+combine time and achieved bandwidth, next to ucx_perftest at the same message sizes
# (the invocation of bench/transport/compare_ucx_perftest.sh). Ratios from one run:
# docs/contributing.md#benchmarks.
#
# Usage: bench/cluster/run_cluster_bench.sh [MODEL_DIR]
#   MODEL_DIR defaults to /tmp/models/bench-30b-4l-fp8, made by
#     moectl make-model --preset bench-30b-4l --dtype fp8 --out /tmp/models/bench-30b-4l-fp8
# Env: MOE_BINARY_DIR (default build), CONCURRENCY (1,8,32), PROMPT_LEN (32), MAX_NEW_TOKENS (16),
#      TLS_LIST for ucx_perftest (default "sm tcp"), ITERS (200), MICRO_BATCHES (the attention
#      worker's --micro_batches, 1 or 2; default 1).
set -euo pipefail

BIN=${MOE_BINARY_DIR:-build}/bin
MODEL=${1:-/tmp/models/bench-30b-4l-fp8}
CONCURRENCY=${CONCURRENCY:-1,8,32}
PROMPT_LEN=${PROMPT_LEN:-32}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-16}
TLS_LIST=${TLS_LIST:-"sm tcp"}
ITERS=${ITERS:-200}
MICRO_BATCHES=${MICRO_BATCHES:-1}
EXPERT_WORKERS=2

[[ -d "$MODEL" ]] || { echo "no model at $MODEL; make it with: $BIN/moectl make-model --preset bench-30b-4l --dtype fp8 --out $MODEL" >&2; exit 2; }
for b in cluster_bench moectl moe-router moe-attention-worker moe-expert-worker; do
  [[ -x "$BIN/$b" ]] || { echo "$BIN/$b not built" >&2; exit 2; }
done
command -v ucx_perftest >/dev/null || { echo "ucx_perftest not found (Debian ucx-utils)" >&2; exit 77; }

work=$(mktemp -d /tmp/cluster-bench.XXXXXX)
state="$work/state"
server_pid=""
cleanup() {
  [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null || true
  [[ -f "$state/supervisor.pid" ]] && "$BIN/moectl" cluster down --state-dir "$state" >/dev/null 2>&1 || true
}
trap cleanup EXIT

common=(--model="$MODEL" --concurrency="$CONCURRENCY" --prompt_len="$PROMPT_LEN" --max_new_tokens="$MAX_NEW_TOKENS")

echo "# machine: $(nproc) cores; in cluster mode the router, attention worker and $EXPERT_WORKERS expert workers" \
     "(and their UCX progress threads) compete for them, in embedded mode one process uses them all" >&2
echo "# embedded mode..." >&2
"$BIN/cluster_bench" --mode=embedded "${common[@]}" > "$work/embedded.txt"

port=$(( 30000 + RANDOM % 20000 ))
metrics=$(( port + 1000 ))
echo "# cluster up on port $port (state $state)..." >&2
"$BIN/moectl" cluster up --model "$MODEL" --attention-workers 1 --expert-workers $EXPERT_WORKERS \
  --micro-batches "$MICRO_BATCHES" --port "$port" --metrics-port "$metrics" --state-dir "$state" --detach \
  > "$work/router.txt"
router=$(head -1 "$work/router.txt")
# moectl cluster up numbers metrics ports expert workers first, then attention workers.
"$BIN/cluster_bench" --mode=cluster "${common[@]}" --router="$router" \
  --attention_metrics="127.0.0.1:$(( metrics + EXPERT_WORKERS ))" --expert_workers=$EXPERT_WORKERS > "$work/cluster.txt"
"$BIN/moectl" cluster down --state-dir "$state" >/dev/null 2>&1 || true

# perftest TLS TEST SIZE -> the "Final:" line (as in bench/transport/compare_ucx_perftest.sh).
ucx_tls() { [[ "$1" == sm ]] && echo "sm,self" || echo "$1"; }
perftest() {
  local tls=$1 test=$2 size=$3 port
  port=$(( 20000 + RANDOM % 10000 ))
  UCX_TLS=$(ucx_tls "$tls") timeout 120 ucx_perftest -p "$port" >/dev/null 2>&1 &
  server_pid=$!
  local out="" try
  for try in $(seq 1 50); do
    if out=$(UCX_TLS=$(ucx_tls "$tls") timeout 120 ucx_perftest 127.0.0.1 -p "$port" -t "$test" \
               -s "$size" -n "$ITERS" 2>/dev/null | grep '^Final:'); then
      break
    fi
    sleep 0.1
  done
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
  [[ -n "$out" ]] || { echo "ucx_perftest $test $tls $size failed" >&2; return 1; }
  echo "$out"
}
field() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }

echo
echo "model: $MODEL; prompt $PROMPT_LEN tokens, $MAX_NEW_TOKENS new tokens, greedy, ignore_eos"
echo "cluster: 1 attention worker + $EXPERT_WORKERS expert workers (moectl cluster up); $(nproc) cores shared by all processes"
echo
printf '%5s | %14s %14s %6s\n' conc "embedded_tok/s" "cluster_tok/s" ratio
for c in ${CONCURRENCY//,/ }; do
  e=$(grep " concurrency=$c " "$work/embedded.txt"); k=$(grep " concurrency=$c " "$work/cluster.txt")
  awk -v c="$c" -v e="$(field "$e" decode_tok_per_s)" -v k="$(field "$k" decode_tok_per_s)" \
    'BEGIN { printf "%5d | %14.2f %14.2f %6.3f\n", c, e, k, (e > 0 ? k / e : 0) }'
done
echo "(decode tokens/s excludes each request's first token; ratio = cluster / embedded)"
echo
printf '%5s %10s %10s | %10s %10s %10s %10s | %-4s %12s %7s %7s %12s %7s\n' conc "B/layer" "B/msg" "d+c_us" \
  "transp_us" "expert_us" "ach_MiB/s" tls "2xam_lat_us" ratio "t_ratio" "am_bw_MiB/s" ratio
for c in ${CONCURRENCY//,/ }; do
  k=$(grep " concurrency=$c " "$work/cluster.txt")
  bl=$(field "$k" bytes_per_layer_each_way); bm=$(field "$k" bytes_per_message)
  dc=$(field "$k" dispatch_combine_per_layer_us); ach=$(field "$k" achieved_MiBps)
  tr=$(field "$k" transport_per_layer_us); ew=$(field "$k" expert_wait_per_layer_us)
  for tls in $TLS_LIST; do
    lat=$(perftest "$tls" ucp_am_lat "$bm" | awk '{print $3}')
    bw=$(perftest "$tls" ucp_am_bw "$bm" | awk '{print $7}')
    awk -v c="$c" -v bl="$bl" -v bm="$bm" -v dc="$dc" -v tr="$tr" -v ew="$ew" -v ach="$ach" -v t="$tls" \
      -v lat="$lat" -v bw="$bw" 'BEGIN {
      printf "%5d %10d %10d | %10.1f %10.1f %10.1f %10.1f | %-4s %12.1f %7.1f %7.1f %12.1f %7.4f\n",
        c, bl, bm, dc, tr, ew, ach, t, 2 * lat, dc / (2 * lat), tr / (2 * lat), bw, ach / bw }'
  done
done
echo "B/layer: bytes each way per MoE layer per decode step (tokens x top-k x hidden x 2); B/msg: per expert worker (mean)"
echo "d+c_us: attention worker's dispatch+combine per layer (combine includes the experts' compute);"
echo "transp_us / expert_us: d+c split into the data plane's own time and the expert workers' (docs/metrics.md);"
echo "ach_MiB/s: 2 x B/layer / d+c; ucx_perftest: 2 x ucp_am_lat one-way (a round trip) and ucp_am_bw at B/msg"
echo "ratio: ours / ucx_perftest (t_ratio: transp_us / round trip). Raw: $work"
