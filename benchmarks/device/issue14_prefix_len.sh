#!/usr/bin/env bash
# Issue 14: how the fp32 error of the AdamW 1e-3 trajectory without warmup (small world, filtered
# start, 48 steps, length 80) falls with the float64 prefix length: prefixes 8 (default), 16, 32
# against float64 (prefix 48 was 7.8e-4, 8 was 0.45: docs/benchmarks.md). One call, ~4-5 min.
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 PYTHONPATH=$PWD/src; O=$OUT/trust
mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $O/card.txt
OUT=$O timeout 285 python3 benchmarks/bench_trust.py --preset small --device cuda \
  --steps 48 --max-length 80 --reference --prefixes 16,32 --budget-s 250 --work /tmp/bt \
  --runs filtered:adamw1e-3 > $O/stdout.log 2>&1
echo "rc=$?" >> $O/stdout.log
grep -v "it/s" $O/stdout.log | tail -16
