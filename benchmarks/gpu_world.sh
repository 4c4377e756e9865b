#!/usr/bin/env bash
# GPU run A: small-world pretraining (issue 2), tamper eval overhead (issue 6), GA trade-off (issue 5).
# Usage on the device: OUT=/some/dir bash benchmarks/gpu_world.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; W=/tmp/gpu_world
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $OUT/card.txt
python3 benchmarks/bench_pretrain.py --preset small --out $W --device cuda --json $OUT/pretrain_small.json --no-progress 2>&1 | tee $OUT/pretrain_small.log
python3 benchmarks/bench_tamper.py --world $W/world-small --model $W/base --device cuda --eval-every 10 --json $OUT/tamper_small.json 2>&1 | tail -30 | tee $OUT/tamper_small.log
python3 benchmarks/ga_tradeoff.py --world $W/world-small --model $W/base --device cuda --method ga --lrs 0,1e-4,2e-4,3e-4,5e-4,1e-3 --json $OUT/ga_small.json 2>&1 | tail -20 | tee $OUT/ga_small.log
python3 benchmarks/ga_tradeoff.py --world $W/world-small --model $W/base --device cuda --method graddiff --lrs 0,2e-4,5e-4,1e-3,2e-3 --json $OUT/graddiff_small.json 2>&1 | tail -20 | tee $OUT/graddiff_small.log
