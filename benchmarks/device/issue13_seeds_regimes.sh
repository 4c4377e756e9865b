# Issue 13 device call (nvidia-h200-x2): the 4 methods seeds 0 and 2 still lacked (GPU 0, both
# seeds at once) and the attribution-regime comparison on the small world (GPU 1). One tarball.
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1; O=/tmp/o; mkdir -p $O/regimes
t0=$(date +%s)
for s in 0 2; do
  CUDA_VISIBLE_DEVICES=0 SEED=$s METHODS=${METHODS:-token_filter,weighted_sam,tar,weighted_tar} \
    TWINS=${TWINS:-unguided} WORKERS=${WORKERS:-3} BUDGET_S=${BUDGET_S:-500} DIR=runs/study_s$s \
    OUT=$O/s$s bash benchmarks/study_small_gpu.sh > $O/s$s.log 2>&1 &
done
(CUDA_VISIBLE_DEVICES=1 PYTHONPATH=src timeout ${REGIMES_S:-520} python3 benchmarks/attribution_regimes.py \
   --work /tmp/regimes --preset small --device cuda --regimes ${REGIMES:-acquire,filtered,seed} \
   --subsets ${SUBSETS:-16} --threads 0 > $O/regimes/stdout.log 2>&1
 echo "rc=$? t=$(( $(date +%s)-t0 ))" >> $O/regimes/stdout.log
 cp /tmp/regimes/seed0/summary.json $O/regimes/ 2>/dev/null) &
wait
cp /tmp/regimes/seed0/summary.json $O/regimes/ 2>/dev/null
tar czf $OUT/call.tgz -C $O .
tail -n 3 $O/s0.log $O/s2.log $O/regimes/stdout.log
