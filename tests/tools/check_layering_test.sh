#!/usr/bin/env bash
# tools/check_layering.py on a made-up tree: a header of a linked library is fine; a header of a
# library the target does not link, a generated proto header without moe_proto, and a header owned
# by a higher layer included from a lower one each fail the check with the file and line.
set -euo pipefail
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
check="${MOE_SOURCE_DIR:-$(pwd)}/tools/check_layering.py"
mkdir -p "$root/common/low" "$root/common/high" "$root/services/app"
printf '#pragma once\n' > "$root/common/low/low.h"
printf '#include "common/low/low.h"\n' > "$root/common/low/low.cc"
printf '#pragma once\n#include "common/low/low.h"\n' > "$root/common/high/high.h"
printf '#include "common/high/high.h"\n#include "absl/status/status.h"\n' > "$root/common/high/high.cc"
printf '#include "common/high/high.h"\n' > "$root/services/app/main.cc"
cat > "$root/layering.txt" <<'MANIFEST'
low|STATIC_LIBRARY|common/low|common/low/low.cc|
high|STATIC_LIBRARY|common/high|common/high/high.cc|low
moe_proto|STATIC_LIBRARY|proto||
app|EXECUTABLE|services/app|services/app/main.cc|high
MANIFEST

expect() {  # expect STATUS PATTERN: runs the check, compares the exit status and looks for PATTERN
  local want=$1 pattern=$2 got=0 out
  out=$(python3 "$check" --manifest "$root/layering.txt" --root "$root" 2>&1) || got=$?
  if [[ $got != "$want" ]] || ! grep -q -- "$pattern" <<<"$out"; then
    echo "FAIL: wanted exit $want and '$pattern', got exit $got:"; echo "$out"; exit 1
  fi
}

expect 0 "follow the target graph"
# Transitive links count: app links high, which links low.
printf '#include "common/low/low.h"\n' >> "$root/services/app/main.cc"
expect 0 "follow the target graph"
# A lower layer including a higher one.
printf '#include "common/high/high.h"\n' >> "$root/common/low/low.cc"
expect 1 'common/low/low.cc:2: includes "common/high/high.h" (owned by high) but target low does not link it'
printf '#include "common/low/low.h"\n' > "$root/common/low/low.cc"
# A header counts as part of the library that owns it.
printf '#include "services/app/app.h"\n' >> "$root/common/high/high.h"
printf '#pragma once\n' > "$root/services/app/app.h"
expect 1 'common/high/high.h:3: includes "services/app/app.h" (owned by app) but target high does not link it'
printf '#pragma once\n#include "common/low/low.h"\n' > "$root/common/high/high.h"
# Generated proto headers belong to moe_proto.
printf '#include "moe/v1/generate.pb.h"\n' >> "$root/common/high/high.cc"
expect 1 'includes "proto/moe/v1/generate.pb.h" (owned by moe_proto) but target high does not link it'
echo "check_layering_test: 5 cases passed"
