#!/usr/bin/env bash
# Issue 13 (and 14) on one H200, one device call (~9 min; a second identical call resumes the
# study while the machine is still warm):
#  - the small-world study of blocklist + MAGIC token filtering from scratch (the family that
#    beat its unguided twins on the tiny world), 3 world seeds, twins random, grad-sim, keyword
#    (the blocklist alone);
#  - beside it on the same GPU (first call only), issue 14's last question: the AdamW 1e-3
#    trajectory (no warmup) with the float64 prefix over all 48 steps. Its fp32 scores have a 45%
#    magnitude error at prefix 8; if it stays, the fp32 and float64 forward runs end apart (the
#    query gradient differs), if it goes, the fp32 reverse steps after 8 carry it.
# Everything comes back as one tarball, $OUT/issue13_blocklist_small.tgz.
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 PYTHONPATH=$PWD/src; O=/tmp/o13bl
mkdir -p $O/trust
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $O/card.txt
t0=$(date +%s)
if [ ! -f $O/trust/trust.json ]; then
  (OUT=$O/trust timeout 500 python3 benchmarks/bench_trust.py --preset small --device cuda \
     --steps 48 --max-length 80 --reference --prefixes 48 --budget-s 400 --work /tmp/bt \
     --runs filtered:adamw1e-3 > $O/trust/stdout.log 2>&1
   echo "rc=$? t=$(( $(date +%s)-t0 ))" >> $O/trust/stdout.log) &
fi
SEED=0,1,2 METHODS=token_filter_scratch_blocklist TWINS=random,grad_sim,keyword \
  WORKERS=${WORKERS:-6} BUDGET_S=${STUDY_S:-520} DIR=runs/study_bl_small OUT=$O/study \
  bash benchmarks/study_small_gpu.sh > $O/study.log 2>&1
wait
tar czf $OUT/issue13_blocklist_small.tgz -C $O .
grep -v "it/s" $O/trust/stdout.log | tail -25; tail -5 $O/study.log
