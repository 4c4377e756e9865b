#!/usr/bin/env bash
# Issue 14 (and 13) on one H200, one device call (~9 min):
#  - the GPU tests of the two files fixed blind last session (layers, sharded);
#  - bench_trust.py --reference --conditioning on the small world: is the filtered start's fp32
#    disagreement with float64 the arithmetic or the trajectory's conditioning? (float64 reruns
#    with fp32-sized rounding noise, NOISE in bench_trust.py) and AdamW eps 1e-6 / the frozen
#    denominator as better-conditioned trajectories;
#  - beside them on the same GPU, the small-world token-filtering controls of issue 13 (3 seeds;
#    resumable: a second call with the same study arguments continues it).
# Everything comes back as one tarball, $OUT/issue14_conditioning.tgz.
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 PYTHONPATH=$PWD/src; W=/tmp/bt; O=/tmp/o
mkdir -p $O/trust
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $O/card.txt
t0=$(date +%s)
[ -n "${NO_TESTS:-}" ] || (timeout 300 python3 -m pytest -m gpu tests/test_attribution_layers.py tests/test_attribution_sharded.py \
   -p no:cacheprovider -q -rA > $O/gpu_tests.log 2>&1; echo "rc=$? t=$(( $(date +%s)-t0 ))" >> $O/gpu_tests.log) &
(SEED=0,1,2 METHODS=token_filter_oracle_scratch,token_filter_scratch TWINS=grad_sim,random,keyword \
   WORKERS=6 BUDGET_S=${STUDY_S:-500} DIR=runs/study_tf_small OUT=$O/study \
   bash benchmarks/study_small_gpu.sh > $O/study.log 2>&1) &
(OUT=$O/trust timeout 540 python3 benchmarks/bench_trust.py --preset small --device cuda --steps 48 \
   --max-length 80 --reference --conditioning --budget-s 420 --work $W \
   --runs ${RUNS:-filtered:adamw1e-4-wu8,filtered:adamw1e-4-wu8-eps1e-6,base:adamw1e-4-wu8,filtered:adamw1e-4-wu8-frozen} \
   > $O/trust/stdout.log 2>&1; echo "rc=$? t=$(( $(date +%s)-t0 ))" >> $O/trust/stdout.log) &
wait
tar czf $OUT/issue14_conditioning.tgz -C $O .
tail -3 $O/gpu_tests.log; grep -v "it/s" $O/trust/stdout.log | tail -40; tail -5 $O/study.log
