#!/bin/bash
# Decision latency of two checkouts side by side (this machine is noisy: compare in one run).
#   git worktree add --detach /tmp/old <commit>
#   scripts/latency_ab.sh /tmp/old . runs/lat/ab [ROUNDS]
# Alternates A and B, 30 s of real audio each at 1x (`bench latency --parts latency`), ROUNDS
# times (default 2); writes OUT.<checkout>.<round>.json and one summary line per run to OUT.txt.
set -euo pipefail
A=$(realpath "$1"); B=$(realpath "$2"); OUT=$(realpath "$3"); N=${4:-2}
mkdir -p "$(dirname "$OUT")"
for i in $(seq "$N"); do
  for W in "$A" "$B"; do
    J="$OUT.$(basename "$W").$i.json"
    (cd "$W" && python -c "import sys; sys.argv=['soundflow','bench','latency','--model','mini','--parts','latency','--seconds','30','--json']; from soundflow.cli import main; main()" 2>/dev/null | tail -1 > "$J")
    echo "$W round $i: $(python -c "import json,sys; r=json.load(open(sys.argv[1])); print(r['realtime'], 'load', round(r['load_avg_start'], 2))" "$J")" | tee -a "$OUT.txt"
  done
done
