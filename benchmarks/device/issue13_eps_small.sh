#!/usr/bin/env bash
# Issue 13 (and 14) on one H200, one device call (~9 min; a second identical call resumes the
# study while the machine is still warm):
#  - the small-world study of the weighting methods on trustworthy scores: MAGIC-weighted RR and
#    MAGIC-weighted SAM-NPO with all four twins, 3 world seeds, the attribution trajectory's AdamW
#    eps at 1e-6 (issue 14: better conditioned, `reliable` more often);
#  - beside it on the same GPU (first call only), issue 14's conditioning test on the AdamW 1e-3
#    trajectory: does a float64 run move as much under fp32-sized rounding noise as fp32 differs
#    from float64 (the trajectory's sensitivity) or not (the arithmetic)?
# Everything comes back as one tarball, $OUT/issue13_eps_small.tgz.
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 PYTHONPATH=$PWD/src; O=/tmp/o13
mkdir -p $O/trust
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $O/card.txt
t0=$(date +%s)
if [ ! -f $O/trust/trust.json ]; then
  (OUT=$O/trust timeout 500 python3 benchmarks/bench_trust.py --preset small --device cuda \
     --steps 48 --max-length 80 --reference --conditioning --budget-s 400 --work /tmp/bt \
     --runs filtered:adamw1e-3 > $O/trust/stdout.log 2>&1
   echo "rc=$? t=$(( $(date +%s)-t0 ))" >> $O/trust/stdout.log) &
fi
SEED=0,1,2 METHODS=magic_rr,weighted_sam TWINS=unguided,grad_sim,random,keyword WORKERS=${WORKERS:-6} \
  BUDGET_S=${STUDY_S:-520} SET=attribution.trajectory.eps=1.0e-6 DIR=runs/study_eps_small OUT=$O/study \
  bash benchmarks/study_small_gpu.sh > $O/study.log 2>&1
wait
tar czf $OUT/issue13_eps_small.tgz -C $O .
grep -v "it/s" $O/trust/stdout.log | tail -25; tail -5 $O/study.log
