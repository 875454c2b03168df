#!/usr/bin/env bash
# The one prepared GPU check: <= 8 minutes on one H100/H200, prints one JSON line (bench/gpu_check.py says
# what is in it). With a GPU the line is also kept as bench/results/gpu_check_<gpu name>.json.
#
#   bench/gpu_check.sh            # cuda when torch sees a GPU, else the CPU mode
#   bench/gpu_check.sh --cpu      # small sizes on the CPU (what the test suite runs, marked slow)
set -euo pipefail
cd "$(dirname "$0")/.."
device=auto
limit=480  # the GPU budget: 8 minutes on one H100/H200
[[ "${1:-}" == "--cpu" ]] && { device=cpu; limit=${GPU_CHECK_CPU_LIMIT:-1500}; }  # a shared CPU is slow
py=${PYTHON:-python}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
timeout --signal=TERM "$limit" "$py" bench/gpu_check.py --device "$device" --budget 360 --out "$out" >&2 || {
    rc=$?; echo "{\"bench\": \"gpu_check\", \"ok\": false, \"error\": \"gpu_check.py exited $rc\"}"; exit "$rc"; }
line=$(cat "$out")
echo "$line"
gpu=$("$py" -c 'import json,sys; g=json.loads(sys.argv[1]).get("gpu"); print((g or "").replace(" ", "_"))' "$line")
if [[ -n "$gpu" ]]; then
    mkdir -p bench/results
    echo "$line" > "bench/results/gpu_check_${gpu}.json"
fi
