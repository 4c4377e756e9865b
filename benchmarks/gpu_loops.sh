#!/usr/bin/env bash
# GPU run B: evaluator vs lm-eval (issue 2), training loop vs HF Trainer (issue 5).
# Needs lm-eval importable (wheels in .whl, see docs/benchmarks.md) and MMLU CSVs under .bench/mmlu.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $OUT/card.txt
export MAGIC_UNLEARN_BENCHMARKS=$PWD/.bench
python3 benchmarks/bench_unlearn.py --device cuda --preset pythia-160m --batch 8 --seq 512 --steps 30 --repeats 3 --precision bf16 --attn sdpa 2>&1 | tail -15 | tee $OUT/unlearn_bf16.log
python3 benchmarks/bench_unlearn.py --device cuda --preset pythia-160m --batch 8 --seq 512 --steps 30 --repeats 3 --precision fp32 --attn sdpa 2>&1 | tail -15 | tee $OUT/unlearn_fp32.log
python3 benchmarks/bench_eval.py --model pythia-160m --task mmlu --limit 20 --format both --device cuda --dtype bfloat16 --batch-size 32 --out $OUT/eval_mmlu.json 2>&1 | tail -30 | tee $OUT/eval_mmlu.log
