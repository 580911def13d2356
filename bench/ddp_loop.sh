#!/usr/bin/env bash
# Run the multi-process tests many times in a row and count failures: a test that fails one
# time in twenty blocks landings at random. Usage: bench/ddp_loop.sh [RUNS] (default 30).
set -u
cd "$(dirname "$0")/.."
runs=${1:-30}
failed=0
for i in $(seq "$runs"); do
  if pytest -q -x -p no:cacheprovider tests/test_distributed.py >"/tmp/ddp_loop.$i.log" 2>&1; then
    rm -f "/tmp/ddp_loop.$i.log"
  else
    failed=$((failed + 1))
    echo "run $i failed: /tmp/ddp_loop.$i.log"
  fi
done
echo "{\"bench\": \"ddp_loop\", \"runs\": $runs, \"failed\": $failed}"
[ "$failed" -eq 0 ]
