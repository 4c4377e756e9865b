#!/usr/bin/env bash
# Issue 13 (and 14) on one H200; call it twice back to back (the second call resumes the study
# while the machine is still warm; ~9 + ~5 min):
#  - the small-world study of the grown blocklist + MAGIC token filtering from scratch
#    (token_filter_scratch_blocklist_cooc, the tiny world's best: excess 7.5 [1.8, 13.2] on 6
#    seeds), 3 world seeds, twins keyword (the grown blocklist alone), random, grad-sim;
#  - beside it on the same GPU (first call only), issue 14's last unmeasured item: the trust
#    report (default settings, 4 sampled later steps recomputed in float64) of the AdamW 1e-3
#    trajectory without warmup, whose fp32 scores are 45% off in size at the default prefix 8.
# Everything comes back as one tarball, $OUT/issue13_cooc_small.tgz.
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 PYTHONPATH=$PWD/src; O=/tmp/o13co
mkdir -p $O/trust
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $O/card.txt
t0=$(date +%s)
if [ ! -f $O/trust/trust.json ]; then
  (OUT=$O/trust timeout 300 python3 benchmarks/bench_trust.py --preset small --device cuda \
     --steps 48 --max-length 80 --budget-s 250 --work /tmp/bt \
     --runs filtered:adamw1e-3 > $O/trust/stdout.log 2>&1
   echo "rc=$? t=$(( $(date +%s)-t0 ))" >> $O/trust/stdout.log) &
fi
SEED=0,1,2 METHODS=token_filter_scratch_blocklist_cooc TWINS=keyword,random,grad_sim \
  WORKERS=${WORKERS:-6} BUDGET_S=${STUDY_S:-520} DIR=runs/study_cooc_small OUT=$O/study \
  bash benchmarks/study_small_gpu.sh > $O/study.log 2>&1
wait
tar czf $OUT/issue13_cooc_small.tgz -C $O .
grep -v "it/s" $O/trust/stdout.log | tail -25; tail -5 $O/study.log
