#!/usr/bin/env bash
# Runs transport_bench (UcxTransport, two endpoints in one process) and ucx_perftest (server and
# client processes on 127.0.0.1) at the same message sizes over shared memory and TCP, and prints
# them side by side with ratios (docs/contributing.md#benchmarks: ratios from one run on one machine).
#
#   latency:   ucx_perftest's round trip (2 x ucp_am_lat's one-way median) vs our round trip
#              (dispatch + combine of N bytes each way, median) and the transport's share of it
#              (the round trip less the time the echo held the message, as the attention worker's
#              metrics split it); ratio = transport share / ucx_perftest round trip
#   bandwidth: our back-to-back one-way stream vs ucp_am_bw (both MiB/s)
#
# Usage: bench/transport/compare_ucx_perftest.sh [path/to/transport_bench] [transport_bench flags...]
# Env: SIZES (default "32768 262144 1048576 4194304"), TLS_LIST (default "sm tcp"), ITERS (200).
set -euo pipefail

BENCH=${1:-${MOE_BINARY_DIR:-build}/bin/transport_bench}
shift || true
SIZES=${SIZES:-"32768 262144 1048576 4194304"}
TLS_LIST=${TLS_LIST:-"sm tcp"}
ITERS=${ITERS:-200}

command -v ucx_perftest >/dev/null || { echo "ucx_perftest not found (Debian ucx-utils)" >&2; exit 77; }
[[ -x "$BENCH" ]] || { echo "transport_bench not found at $BENCH" >&2; exit 2; }

ucx_tls() { [[ "$1" == sm ]] && echo "sm,self" || echo "$1"; }

# perftest TLS TEST SIZE -> the "Final:" line's fields: iters p50_lat avg_lat overall_lat avg_bw overall_bw ...
server_pid=""
cleanup() { [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null || true; }
trap cleanup EXIT
perftest() {
  local tls=$1 test=$2 size=$3 port
  port=$(( 20000 + RANDOM % 20000 ))
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

tls_arg=$(echo $TLS_LIST | tr ' ' ',')
sizes_arg=$(echo $SIZES | tr ' ' ',')
ours=$("$BENCH" --tls="$tls_arg" --sizes="$sizes_arg" --iters="$ITERS" "$@" | grep '^RESULT')

printf '%-4s %9s | %12s %12s %12s %6s | %12s %12s %6s\n' tls bytes "perftest_rtt" "ours_rtt_us" \
  "transport_us" ratio "ours_MiB/s" "am_bw_MiB/s" ratio
for tls in $TLS_LIST; do
  for size in $SIZES; do
    line=$(echo "$ours" | grep " tls=$tls bytes=$size ")
    rtt=$(echo "$line" | sed -E 's/.*rtt_p50_us=([0-9.]+).*/\1/')
    share=$(echo "$line" | sed -E 's/.*transport_p50_us=([0-9.]+).*/\1/')
    bw=$(echo "$line" | sed -E 's/.*bw_MiBps=([0-9.]+).*/\1/')
    lat_line=$(perftest "$tls" ucp_am_lat "$size")
    bw_line=$(perftest "$tls" ucp_am_bw "$size")
    pt_lat=$(echo "$lat_line" | awk '{print $3}')
    pt_bw=$(echo "$bw_line" | awk '{print $7}')
    awk -v t="$tls" -v s="$size" -v rtt="$rtt" -v sh="$share" -v pl="$pt_lat" -v bw="$bw" -v pb="$pt_bw" 'BEGIN {
      prtt = 2 * pl;
      printf "%-4s %9d | %12.1f %12.1f %12.1f %6.2f | %12.1f %12.1f %6.2f\n", t, s, prtt, rtt, sh, sh / prtt, bw, pb, bw / pb
    }'
  done
done
echo "latency ratio = our transport share of a round trip / ucx_perftest round trip (2 x ucp_am_lat)"
echo "(lower is better, 1.0 = parity); bandwidth ratio = ours / ucx_perftest"
