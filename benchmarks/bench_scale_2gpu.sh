#!/usr/bin/env bash
# Issue 19: sharded MAGIC, unlearning and attacks on 2 GPUs (nvidia-h200-x2), about 7 minutes.
#   1. one GPU's MAGIC scores of a small shape (Pythia-160m dims; fp32 and bf16, SGD and AdamW)
#   2. torchrun --nproc-per-node 2: the same runs sharded (max score difference, time, memory per
#      GPU); the 6.9B shape, full-parameter MAGIC sharded over 2 GPUs (T=16, seq 1024, batch 4,
#      SGD and AdamW) next to plain FSDP training of the same shape and the memory model; the
#      unlearning loop (rr) and the standard fine-tuning attack with FSDP, 10 steps each.
# Results: $OUT/small_ref.{json,pt,log}, $OUT/bench_scale_2gpu.{json,log}, $OUT/card_2gpu.txt.
# Extra arguments go to the 2-GPU run, e.g. --c-layer 120: the activation coefficient the one-GPU
# run fitted on full SGD (memory_fit.c_layer_reverse_full in bench_scale.json; default: a priori).
# --only loops (or small / magic, comma-separated) reruns only those sections of the 2-GPU run
# (loops: the unlearning loop and the attack with FSDP, about 2-3 minutes; no small-ref then).
# Every stage prints host memory per rank ("[host] ..."; res["host"] in the JSON).
# Leave NCCL_NVLS_ENABLE=0 and the machine's other NCCL settings as they are.
set -uo pipefail
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/card_2gpu.txt"
env | grep -E '^NCCL_' | tee -a "$OUT/card_2gpu.txt"
only=small,magic,loops
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case ${args[i]} in
    --only) only=${args[i + 1]:-} ;;
    --only=*) only=${args[i]#--only=} ;;
  esac
done
if [[ ,$only, == *,small,* ]]; then
  CUDA_VISIBLE_DEVICES=0 python3 benchmarks/bench_scale.py --mode small-ref --out "$OUT" 2>&1 \
    | grep -v -E 'Warning|warnings.warn|return func' | tee "$OUT/small_ref.log"
fi
python3 -m torch.distributed.run --standalone --nproc-per-node 2 benchmarks/bench_scale.py \
  --mode dist --out "$OUT" "$@" 2>&1 \
  | grep -v -E 'Warning|warnings.warn|return func' | tee "$OUT/bench_scale_2gpu.log"
